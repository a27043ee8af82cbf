"""The OpenID provider's machine endpoints (« Mon portail »): discovery, JWKS, token, user info.
The browser-facing ones (authorisation, end of session) and the portal page are in web/portal.py."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from monsisra.api.deps import get_core
from monsisra.config import Settings
from monsisra.services import portal
from monsisra.services.core import Core
from monsisra.services.errors import AuthFailed

log = logging.getLogger(__name__)
router = APIRouter(tags=["portal"])
CoreDep = Annotated[Core, Depends(get_core)]
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


@router.get("/.well-known/openid-configuration")
async def openid_configuration(request: Request, core: CoreDep) -> dict[str, Any]:
    """OpenID provider discovery of « Mon portail »."""
    return portal.discovery(core, base_url(request))


@router.get("/portail/oidc/jwks")
async def jwks(core: CoreDep) -> JSONResponse:
    """The provider's public keys (the signing one, and retired ones still covering live tokens)."""
    return JSONResponse(await portal.jwks(core), headers={"Cache-Control": "public, max-age=300"})


@router.post("/portail/oidc/token")
async def token(request: Request, core: CoreDep) -> Response:
    """Authorisation code (with PKCE) for an ID token and an access token to the user info."""
    http = portal.HttpRequest("POST", str(request.url), request.headers, portal.parse_form(await request.body()))
    reply = await portal.token(core, http, base_url(request))
    headers = {**dict(reply.headers), **NO_STORE}
    headers.pop("Content-Type", None)
    return JSONResponse(reply.body, status_code=reply.status, headers=headers)


@router.get("/portail/oidc/userinfo", operation_id="portal_userinfo")
@router.post("/portail/oidc/userinfo", operation_id="portal_userinfo_post")
async def userinfo(request: Request, core: CoreDep) -> Response:
    """The claims of the portal access token's holder (OpenID Connect user info)."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    try:
        claims = await portal.userinfo(core, value.strip() if scheme.lower() == "bearer" else None)
    except AuthFailed as exc:
        return JSONResponse({"error": "invalid_token", "error_description": exc.detail}, status_code=401,
                            headers={"WWW-Authenticate": 'Bearer error="invalid_token"', **NO_STORE})
    return JSONResponse(claims, headers=NO_STORE)


def install(app: FastAPI, settings: Settings) -> None:
    """The routes; and single logout: a MonSisra session that ends ends the portal sessions it
    opened (whichever process it ended on: the event comes through the bus)."""
    app.include_router(router)

    async def follow_session_ends(app_: FastAPI, core: Core) -> None:
        pending: set[asyncio.Task] = set()

        def done(task: asyncio.Task) -> None:
            pending.discard(task)
            if not task.cancelled() and task.exception() is not None:
                log.warning("ending the portal sessions failed: %s", task.exception())

        def on_end(account_ids: list[int], token_ids: list[int] | None) -> None:
            task = asyncio.ensure_future(portal.end_portal_sessions(core, account_ids, token_ids))
            pending.add(task)
            task.add_done_callback(done)

        core.bus.on_session_ended(on_end)

    app.state.startup_hooks.append(follow_session_ends)
