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
        app.state.startup_hooks.append(_notify_hook)


async def _mailer_hook(app: FastAPI, core: Core):
    from monsisra.gateway.notify import mailer_for, push_sender_for, sms_sender_for

    core.mailer = mailer_for(core.settings)  # notification e-mail (password reset links)
    core.senders["sms"] = sms_sender_for(core.settings)
    core.senders["push"] = push_sender_for(core.settings)
    return None


async def _notify_hook(app: FastAPI, core: Core):
    """The notification worker: a pass every ``notify_poll_seconds`` (services.notifications)."""
    from monsisra.services import notifications

    async def loop() -> None:
        while True:
            try:
                await notifications.run_pass(core)
            except Exception as exc:  # a failed pass is retried at the next one
                import logging

                logging.getLogger(__name__).warning("notification pass failed: %s", exc)
            await asyncio.sleep(core.settings.notify_poll_seconds)

    task = asyncio.create_task(loop(), name="monsisra-notify")

    async def stop() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return stop


async def _smtp_hook(app: FastAPI, core: Core):
    from monsisra.gateway.smtp import start_server

    listening = await start_server(core, core.settings)
    app.state.smtp = listening
    server = listening.server

    async def stop() -> None:
        from monsisra.services import inbound

        await listening.sessions.drain([server])  # transactions in progress end with their reply
        await inbound.stop(core)
        await listening.limits.close()

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
