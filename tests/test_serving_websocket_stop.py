"""A stopping server tells a WebSocket handshake in progress to try again (503, Retry-After), and
closes open sockets with 1012 (service restart), through real uvicorn and a real client."""

from __future__ import annotations

import asyncio
import socket

import pytest
import uvicorn
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from monsisra.serving import Listener, StoppingWebSocket


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _App:
    """``/slow`` holds its handshake until released; ``/open`` accepts at once."""

    def __init__(self) -> None:
        self.holding = asyncio.Event()
        self.release = asyncio.Event()
        self.accepted = asyncio.Event()

    async def __call__(self, scope: dict, receive, send) -> None:
        assert scope["type"] == "websocket"
        await receive()  # websocket.connect
        if scope["path"] == "/slow":
            self.holding.set()
            await self.release.wait()
        await send({"type": "websocket.accept"})
        self.accepted.set()
        while (await receive())["type"] != "websocket.disconnect":
            pass


@pytest.mark.asyncio
async def test_handshake_in_progress_gets_503_and_open_socket_1012() -> None:
    app = _App()
    port = _free_port()
    server = Listener(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", ws=StoppingWebSocket,
                                     log_level="warning"))
    serving = asyncio.create_task(server.serve())
    await asyncio.wait_for(server.up.wait(), 10)

    opened = await connect(f"ws://127.0.0.1:{port}/open")
    await asyncio.wait_for(app.accepted.wait(), 10)
    async def handshake() -> None:
        await connect(f"ws://127.0.0.1:{port}/slow", open_timeout=10)

    slow = asyncio.create_task(handshake())
    await asyncio.wait_for(app.holding.wait(), 10)

    server.should_exit = True
    with pytest.raises(InvalidStatus) as refused:
        await asyncio.wait_for(slow, 10)
    assert refused.value.response.status_code == 503
    assert refused.value.response.headers["Retry-After"] == "1"

    with pytest.raises(ConnectionClosed) as closed:
        await asyncio.wait_for(opened.recv(), 10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012

    app.release.set()  # the held handshake now finds its client gone; the server finishes stopping
    await asyncio.wait_for(serving, 20)
    assert server.started
