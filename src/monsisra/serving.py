"""The listeners of ``monsisra serve``: HTTP, and HTTPS with the configured certificate, in one
process around one application (one lifespan: core, workers, SMTP gateway)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn
from uvicorn.protocols.http.auto import AutoHTTPProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from monsisra import redaction
from monsisra.api.certificates import tls_extension
from monsisra.config import Settings
from monsisra.gateway.tls import CIPHERS, certificate_paths

log = logging.getLogger("monsisra.serving")


def https_context(settings: Settings) -> ssl.SSLContext:
    """The configured certificate (else the development one of the data dir), TLS 1.2 minimum.
    With trust anchors and CPS login on, a client certificate is asked for, optional at the
    TLS level (a browser without a card still connects) and verified against the anchors."""
    cert, key = certificate_paths(settings)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION
    context.set_alpn_protocols(["http/1.1"])
    context.load_cert_chain(cert, key)
    if settings.tls_trust and settings.cps_login:
        context.load_verify_locations(cafile=str(settings.tls_trust))
        context.verify_mode = ssl.CERT_OPTIONAL
    return context


def _with_tls(app: Any, extension: dict) -> Any:
    """The application, seeing this connection's TLS facts (ASGI ``tls`` extension)."""

    async def app_with_tls(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            scope["extensions"] = {**(scope.get("extensions") or {}), "tls": extension}
        await app(scope, receive, send)

    return app_with_tls


def handshake_protocol(context: ssl.SSLContext, refused: Callable[[str | None, str], None]) -> type:
    """A uvicorn protocol class that does the TLS handshake itself (``loop.start_tls``) before
    handing the connection to uvicorn's HTTP protocol: the client certificate it verified reaches
    the application, and a certificate it refused (another CA, expired) is reported to
    ``refused(client, reason)`` instead of vanishing inside the event loop."""

    class Handshake(asyncio.Protocol):
        """First the raw connection's protocol (reading paused), then, during and just after
        the handshake, the TLS layer's: it keeps what arrives before uvicorn's protocol is
        connected (a TLS 1.3 client sends its request with its last handshake flight)."""

        def __init__(self, **kwargs: Any) -> None:
            self.inner = AutoHTTPProtocol(**kwargs)
            self.task: asyncio.Task | None = None
            self.early: list[bytes] = []
            self.eof = False

        def connection_made(self, transport: Any) -> None:
            transport.pause_reading()  # the ClientHello is for start_tls, not for us
            self.task = asyncio.ensure_future(self._start(transport))

        async def _start(self, transport: Any) -> None:
            peer = transport.get_extra_info("peername")
            client = peer[0] if isinstance(peer, tuple) and peer else None
            try:
                tls = await asyncio.get_running_loop().start_tls(transport, self, context, server_side=True,
                                                                  ssl_handshake_timeout=30)
            except ssl.SSLCertVerificationError as exc:
                transport.close()
                refused(client, exc.verify_message or str(exc))
                return
            except (OSError, TimeoutError):
                transport.close()
                return
            if tls is None:
                transport.close()
                return
            extension = tls_extension(tls.get_extra_info("ssl_object"))
            if extension is not None and extension["client_cert_chain"]:
                self.inner.app = _with_tls(self.inner.app, extension)
            tls.set_protocol(self.inner)
            self.inner.connection_made(tls)
            for chunk in self.early:
                self.inner.data_received(chunk)
            self.early.clear()
            if self.eof:
                self.inner.eof_received()

        def data_received(self, data: bytes) -> None:
            self.early.append(data)

        def eof_received(self) -> bool | None:
            self.eof = True
            return None

        def connection_lost(self, exc: Exception | None) -> None:
            if self.task is not None and not self.task.done():
                self.task.cancel()

    return Handshake


class StoppingWebSocket(WebSocketsSansIOProtocol):
    """A WebSocket handshake still in progress when the server stops is answered ``503`` with
    ``Retry-After`` (the page, or the load balancer, tries again, another process), where uvicorn
    answers ``500`` as if the application had failed. Open sockets still get the close code 1012
    (service restart)."""

    def shutdown(self) -> None:
        if self.handshake_complete or self.close_sent or self.initial_response is not None:
            super().shutdown()
            return
        self.stop_keepalive()
        response = self.conn.reject(503, "Service en cours de redemarrage, reessayez.\n")
        response.headers["Retry-After"] = "1"
        self.conn.send_response(response)
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.transport.close()


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


def settle_heap() -> None:
    """Once the application is loaded and started: its modules, routes and compiled SQL are kept
    for the process's life, so they leave the collector's view. Without this, every full
    collection walks them (about a million objects), stopping the process for 100–300 ms, seen
    as one request in sixty stalling in bench/conversations_fanout.py."""
    gc.collect()
    gc.freeze()


def run(app: Any, settings: Settings, *, host: str, port: int, https_port: int) -> int:
    """Serve until SIGINT/SIGTERM; the exit code is 1 when a listener could not start."""
    # No permessage-deflate: each socket would compress every event on its own (500 compressions of
    # one conversation message for 500 sockets, about half of the fan-out's time, see
    # bench/results/conversations_fanout.md); events are small JSON lines, little is saved.
    common: dict[str, Any] = dict(host=host, log_level="info", proxy_headers=False, ws=StoppingWebSocket,
                                  ws_per_message_deflate=False)
    # The HTTP listener runs the lifespan; the HTTPS one shares the app and starts once it is up.
    http = Listener(uvicorn.Config(app, port=port, lifespan="on", **common))
    https = None
    if https_port:
        context = https_context(settings)
        https = Listener(uvicorn.Config(app, port=https_port, lifespan="off",
                                        http=handshake_protocol(context, _refusal_reporter(app)), **common))
    redaction.install()  # after uvicorn configured its loggers
    return asyncio.run(_run(http, https, settings.reuse_port))


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` with SO_REUSEPORT, for a listener several processes share."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                         flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def _refusal_reporter(app: Any) -> Callable[[str | None, str], None]:
    """Hands a refused client certificate to the application's ``tls_refused`` hook (audit)."""
    tasks: set[asyncio.Task] = set()

    def report(client: str | None, reason: str) -> None:
        hook = getattr(app.state, "tls_refused", None)
        core = getattr(app.state, "core", None)
        if hook is None or core is None:
            return
        task = asyncio.ensure_future(hook(core, client, reason))
        tasks.add(task)  # held until done: the loop keeps only weak references to tasks
        task.add_done_callback(done)

    def done(task: asyncio.Task) -> None:
        tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("a refused client certificate could not be audited: %s", task.exception())

    return report


async def _serve(server: Listener, reuse_port: bool = False) -> int:
    try:
        sockets = [reuse_port_socket(server.config.host, server.config.port)] if reuse_port else None
        await server.serve(sockets)
    except OSError as exc:
        log.error("cannot listen on %s:%s: %s", server.config.host, server.config.port, exc)
        return 1
    except SystemExit as exc:  # uvicorn exits when it cannot bind its port
        return int(exc.code or 1)
    return 0


async def _run(http: Listener, https: Listener | None, reuse_port: bool = False) -> int:
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
    http_task = asyncio.create_task(_serve(http, reuse_port))
    http_up = asyncio.create_task(http.up.wait())
    await asyncio.wait([http_up, http_task, stopping], return_when=asyncio.FIRST_COMPLETED)
    http_up.cancel()
    if http.started:
        settle_heap()
    tasks = [http_task]
    https_task = None
    if https is not None and http.started and not stop.is_set():
        https_task = asyncio.create_task(_serve(https, reuse_port))
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


# A process that dies this soon after its start, this many times in a row, is not restarted again
# (a port taken, a bad setting): the whole group stops and says why.
QUICK_DEATH_SECONDS = 10.0
QUICK_DEATHS_TOLERATED = 3


def supervise(command: list[str], workers: int, env: dict[str, str]) -> int:
    """Run ``workers`` copies of ``command`` (``monsisra serve`` processes sharing their ports);
    restart one that ends unasked; pass SIGTERM/SIGINT on to all (each drains its connections) and
    return the highest exit code once all have ended. The processes end with their parent."""
    stopping = False
    procs: list[subprocess.Popen] = []
    started: list[float] = []

    def spawn() -> subprocess.Popen:
        return subprocess.Popen(command, env=env, preexec_fn=_end_with_parent)  # noqa: S603 (our own command)

    def on_signal(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)  # a second Ctrl-C reaches them too: they stop at once

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for _ in range(workers):
            procs.append(spawn())
            started.append(time.monotonic())
        quick_deaths, gave_up = 0, False
        while not stopping:
            for i, proc in enumerate(procs):
                code = proc.poll()
                if code is None or stopping:
                    continue
                quick_deaths = quick_deaths + 1 if time.monotonic() - started[i] < QUICK_DEATH_SECONDS else 0
                if quick_deaths >= QUICK_DEATHS_TOLERATED:
                    log.error("serve process ended %s times right after starting (last code %s): stopping",
                              quick_deaths, code)
                    gave_up = True
                    on_signal(signal.SIGTERM, None)
                    break
                log.warning("serve process %s ended (code %s): starting another", proc.pid, code)
                procs[i] = spawn()
                started[i] = time.monotonic()
            time.sleep(0.2)
        codes = [proc.wait() for proc in procs]
        return 1 if gave_up else max(codes, default=0)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _end_with_parent() -> None:
    """In the child, before exec: SIGTERM when the supervising process dies (even by SIGKILL)."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def serve_command(host: str, port: int, https_port: int) -> list[str]:
    """The command line of one process of ``monsisra serve --workers N``."""
    return [sys.executable, "-m", "monsisra.cli", "serve", "--no-migrate", "--no-turn-server",
            "--host", host, "--port", str(port), "--https-port", str(https_port)]


def worker_env() -> dict[str, str]:
    return {**os.environ, "MONSISRA_REUSE_PORT": "true"}
