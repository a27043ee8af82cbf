"""The IMAP listeners of ``monsisra serve``: STARTTLS on ``imap_port``, implicit TLS on
``imaps_port``, in the application's event loop (a startup hook, like the SMTP gateway)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from pathlib import Path

from fastapi import FastAPI

from monsisra.config import Settings
from monsisra.gateway.draining import DRAIN_SECONDS
from monsisra.gateway.tls import user_context
from monsisra.imap.session import Session, close_quietly
from monsisra.services.core import Core

log = logging.getLogger("monsisra.imap")
MAX_CONNECTIONS = 500


def install(app: FastAPI, settings: Settings) -> None:
    if settings.imap_port or settings.imaps_port:
        app.state.startup_hooks.append(_imap_hook)


def _sweep_spool(directory: Path) -> None:
    """APPEND literals a crashed process left on disk (a live session removes its own; other
    processes of the deployment may be writing theirs: only files an hour old go)."""
    cutoff = time.time() - 3600
    for path in directory.glob("append-*") if directory.is_dir() else ():
        with contextlib.suppress(OSError):
            if path.stat().st_mtime < cutoff:
                path.unlink()


async def start(core: Core, settings: Settings) -> tuple[list[asyncio.AbstractServer], dict]:
    context = user_context(settings)
    await asyncio.to_thread(_sweep_spool, settings.data_dir / "imap-append")
    sessions: dict[asyncio.Task, Session | None] = {}

    def handler(implicit: bool):
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            if len(sessions) >= MAX_CONNECTIONS:
                writer.write(b"* BYE trop de connexions, reessayez plus tard\r\n")
                await close_quietly(writer)
                return
            session = Session(core, reader, writer, tls_context=context, implicit_tls=implicit)
            if task is not None:
                sessions[task] = session
            try:
                await session.run()
            except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError, asyncio.CancelledError):
                pass  # the client went away, or the server is stopping
            except Exception:
                log.exception("IMAP session ended on an error")
            finally:
                if task is not None:
                    sessions.pop(task, None)
                await close_quietly(writer)
        return handle

    # SO_REUSEPORT: several ``monsisra serve`` processes of one deployment share the ports (the
    # kernel spreads the connections), as they share the database.
    servers = []
    limit = 1 << 17  # a command line (without its literals) fits
    if settings.imap_port:
        servers.append(await asyncio.start_server(handler(False), settings.imap_host, settings.imap_port,
                                                  reuse_address=True, reuse_port=True, limit=limit))
    if settings.imaps_port:
        servers.append(await asyncio.start_server(handler(True), settings.imap_host, settings.imaps_port,
                                                  ssl=context, reuse_address=True, reuse_port=True, limit=limit,
                                                  ssl_handshake_timeout=30))
    log.info("IMAP on %s:%s (STARTTLS) and %s (TLS)", settings.imap_host, settings.imap_port, settings.imaps_port)
    return servers, sessions


async def drain(servers: list[asyncio.AbstractServer], sessions: dict, seconds: float = DRAIN_SECONDS) -> None:
    """Stop listening; every session says BYE, after the command it is carrying out; those
    still busy after ``seconds`` are cancelled."""
    for server in servers:
        server.close()
    for session in list(sessions.values()):
        if session is not None:
            session.stop()
    if sessions:
        await asyncio.wait(list(sessions), timeout=seconds)
    for task in list(sessions):
        task.cancel()


async def _imap_hook(app: FastAPI, core: Core):
    servers, sessions = await start(core, core.settings)

    async def stop() -> None:
        await drain(servers, sessions)

    return stop
