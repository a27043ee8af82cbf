"""Starts the gateway inside ``monsisra serve``: the inbound SMTP server and the outbound delivery worker."""

from __future__ import annotations

import asyncio
import contextlib

from fastapi import FastAPI

from monsisra.config import Settings
from monsisra.services.core import Core


def install(app: FastAPI, settings: Settings) -> None:
    app.state.startup_hooks.append(_mailer_hook)
    if settings.smtp_enabled:
        app.state.startup_hooks.append(_smtp_hook)
    if settings.run_workers:
        app.state.startup_hooks.append(_worker_hook)


async def _mailer_hook(app: FastAPI, core: Core):
    from monsisra.gateway.notify import mailer_for

    core.mailer = mailer_for(core.settings)  # notification e-mail (password reset links)
    return None


async def _smtp_hook(app: FastAPI, core: Core):
    from monsisra.gateway.smtp import start_server

    listening = await start_server(core, core.settings)
    app.state.smtp = listening
    server = listening.server

    async def stop() -> None:
        from monsisra.services import inbound

        server.close()
        await inbound.stop(core)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 5)

    return stop


async def _worker_hook(app: FastAPI, core: Core):
    from monsisra.gateway.smtp_client import smtp_send
    from monsisra.services import outbound

    worker = outbound.Worker(core, smtp_send)
    task = asyncio.create_task(worker.run(), name="monsisra-outbound")
    app.state.outbound = worker
    core.outbox_listeners.append(worker.wake)  # a send is delivered at once, not at the next poll

    async def stop() -> None:
        core.outbox_listeners.remove(worker.wake)
        worker.stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task

    return stop
