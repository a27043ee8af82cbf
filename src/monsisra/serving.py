"""The listeners of ``monsisra serve``: HTTP, and HTTPS with the configured certificate, in one
process around one application (one lifespan: core, workers, SMTP gateway)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import ssl
from collections.abc import Iterator
from typing import Any

import uvicorn

from monsisra import redaction
from monsisra.config import Settings
from monsisra.gateway.tls import CIPHERS, certificate_paths


def https_context(settings: Settings) -> ssl.SSLContext:
    """The configured certificate (else the development one of the data dir), TLS 1.2 minimum."""
    cert, key = certificate_paths(settings)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION
    context.set_alpn_protocols(["http/1.1"])
    context.load_cert_chain(cert, key)
    return context


class Listener(uvicorn.Server):
    """A uvicorn server that says when it is up and leaves signals to :func:`run`."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.up = asyncio.Event()

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        if self.started:
            self.up.set()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def run(app: Any, settings: Settings, *, host: str, port: int, https_port: int) -> int:
    """Serve until SIGINT/SIGTERM; the exit code is 1 when a listener could not start."""
    common: dict[str, Any] = dict(host=host, log_level="info", proxy_headers=False, ws="websockets-sansio")
    # The HTTP listener runs the lifespan; the HTTPS one shares the app and starts once it is up.
    http = Listener(uvicorn.Config(app, port=port, lifespan="on", **common))
    https = None
    if https_port:
        context = https_context(settings)
        https = Listener(uvicorn.Config(app, port=https_port, lifespan="off",
                                        ssl_context_factory=lambda _config, _default: context, **common))
    redaction.install()  # after uvicorn configured its loggers
    return asyncio.run(_run(http, https))


async def _serve(server: Listener) -> int:
    try:
        await server.serve()
    except SystemExit as exc:  # uvicorn exits when it cannot bind its port
        return int(exc.code or 1)
    return 0


async def _run(http: Listener, https: Listener | None) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal() -> None:
        if stop.is_set():  # a second Ctrl-C: do not wait for open connections
            for server in (http, https):
                if server is not None:
                    server.force_exit = True
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    stopping = asyncio.create_task(stop.wait())
    http_task = asyncio.create_task(_serve(http))
    http_up = asyncio.create_task(http.up.wait())
    await asyncio.wait([http_up, http_task, stopping], return_when=asyncio.FIRST_COMPLETED)
    http_up.cancel()
    tasks = [http_task]
    https_task = None
    if https is not None and http.started and not stop.is_set():
        https_task = asyncio.create_task(_serve(https))
        tasks.append(https_task)
    await asyncio.wait([*tasks, stopping], return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    codes = []
    # HTTPS first, then HTTP and with it the lifespan (the core both listeners use).
    if https_task is not None and https is not None:
        https.should_exit = True
        codes.append(await https_task)
    http.should_exit = True
    codes.append(await http_task)
    return max(codes)
