"""Request dependencies: the core, and the acting account from a bearer token."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Request
from fastapi.security import OAuth2PasswordBearer
from pydantic import Field

from monsisra.services import accounts
from monsisra.services.core import Actor, Core
from monsisra.services.errors import AuthFailed

# Ids are INTEGER columns (int4 on PostgreSQL): a larger number cannot name a row, and sent to
# the engine it would overflow. Every id that comes from a client is bounded by this type.
MAX_ID = 2**31 - 1
PathId = Annotated[int, Path(ge=1, le=MAX_ID)]
BodyId = Annotated[int, Field(ge=1, le=MAX_ID)]

oauth2 = OAuth2PasswordBearer(tokenUrl="/api/v1/auth/token", auto_error=False)


async def get_core(request: Request) -> Core:
    # ``async``: FastAPI runs a plain ``def`` dependency in its thread pool, one thread hand-off
    # per request for an attribute read (py-spy on ``monsisra serve`` under the search bench).
    return request.app.state.core


def client_address(request: Request) -> str:
    return request.client.host if request.client else "-"


async def resolve_actor(request: Request, token: str | None) -> Actor:
    core: Core = request.app.state.core
    if token:
        return await accounts.actor_for_token(core, token, client_address(request))
    session_resolver = getattr(request.app.state, "session_actor", None)
    if session_resolver is not None:
        actor = await session_resolver(request)
        if actor is not None:
            return actor
    raise AuthFailed("authentification requise : jeton « Authorization: Bearer » absent")


def bearer_token(request: Request) -> str | None:
    """The token of an ``Authorization: Bearer`` header, unchecked (see :func:`current_actor`)."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


async def current_actor(request: Request) -> Actor:
    return await resolve_actor(request, bearer_token(request))
