"""The ASGI application: API, web pages and the background parts of ``monsisra serve``."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from fastapi import FastAPI

from monsisra import __version__, redaction
from monsisra.api import accounts as accounts_api
from monsisra.api import admin_accounts as admin_accounts_api
from monsisra.api import conversations as conversations_api
from monsisra.api import problems, transport
from monsisra.api.limits import BodyLimitMiddleware
from monsisra.api.mssante import router as mssante_router
from monsisra.api.routes import router
from monsisra.config import Settings
from monsisra.services.core import Core

log = logging.getLogger("monsisra")

# Components' ``install(app, settings)`` add routers and may append ``async (app, core) -> stop | None``
# hooks to ``app.state.startup_hooks``, run in the lifespan.
StartupHook = Callable[[FastAPI, Core], Awaitable[Callable[[], Awaitable[None]] | None]]


def create_app(settings: Settings | None = None, *, core: Core | None = None) -> FastAPI:
    settings = settings or Settings()
    state: dict = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        redaction.install()  # whoever configured logging (serve, tests, an embedding), no secret in it
        the_core = core or Core(settings)
        app.state.core = the_core
        await the_core.start()
        stops = []
        for hook in app.state.startup_hooks:
            stop = await hook(app, the_core)
            if stop is not None:
                stops.append(stop)
        try:
            yield
        finally:
            for stop in reversed(stops):
                with contextlib.suppress(Exception):
                    await stop()
            if core is None:
                await the_core.close()

    # /docs is the web application's page (vendored Swagger UI, strict CSP); no CDN-based /redoc.
    app = FastAPI(title="MonSisra API", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Messagerie sécurisée de santé MSSanté et télémédecine.")
    app.state.settings = settings
    app.state.startup_hooks = [_maintenance]
    app.state.extra = state
    problems.install(app)
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_message_bytes)
    app.include_router(router)
    app.include_router(mssante_router)
    app.include_router(accounts_api.router)
    app.include_router(admin_accounts_api.router)
    app.include_router(conversations_api.router)
    _install_components(app, settings)
    transport.install(app, settings)  # last: outermost
    return app


async def _maintenance(app: FastAPI, core: Core):
    """Housekeeping loop (expired tokens, orphan uploads) when this process runs workers."""
    if not core.settings.run_workers:
        return None
    import asyncio

    from monsisra.services.maintenance import run_periodically

    task = asyncio.create_task(run_periodically(core))

    async def stop() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return stop


def _install_components(app: FastAPI, settings: Settings) -> None:
    """Mount the directory API, the web pages and the MSSanté gateway (each has ``install``)."""
    from monsisra.api import directory, identity, portal, reach, teleexpertise
    from monsisra.api import patients as patients_api
    from monsisra.api import video as video_api
    from monsisra.gateway import install as gateway
    from monsisra.gateway import submission
    from monsisra.imap import server as imap
    from monsisra.web import install as web

    for component in (directory, identity, portal, reach, patients_api, teleexpertise, video_api, web, gateway,
                      imap, submission):
        component.install(app, settings)
