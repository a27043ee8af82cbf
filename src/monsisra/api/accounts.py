"""Routes of one's own account: password, sessions, access log, delegations held and given, and
the « Mot de passe oublié ? » steps (issue 15)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from monsisra.api.deps import BodyId, client_address, current_actor, get_core
from monsisra.services import audit as audit_service
from monsisra.services import delegations, mailboxes, passwords, sessions
from monsisra.services.core import Actor, Core

router = APIRouter(prefix="/api/v1")
ActorDep = Annotated[Actor, Depends(current_actor)]
CoreDep = Annotated[Core, Depends(get_core)]
RESET_SENT = ("Si un compte correspond, un lien pour choisir un nouveau mot de passe vient d'être envoyé à son "
              "adresse de notification. Il est valable {minutes} minutes et ne sert qu'une fois.")


class PasswordChange(BaseModel):
    current: str = Field(max_length=1024)
    new: str = Field(max_length=1024)


@router.post("/me/password", tags=["accounts"])
async def change_password(body: PasswordChange, core: CoreDep, actor: ActorDep) -> dict[str, Any]:
    """Change one's password: ``current`` is required; every other session ends (this one goes on)."""
    ended = await passwords.change(core, actor, body.current, body.new)
    return {"changed": True, "sessions_ended": ended}


@router.get("/me/password/rule", tags=["accounts"])
async def password_rule() -> dict[str, Any]:
    """The rule a new password must meet, in French."""
    return {"rule": passwords.rule()}


class ResetRequest(BaseModel):
    login: str = Field(max_length=254)


@router.post("/auth/password-reset", status_code=202, tags=["auth"])
async def reset_request(body: ResetRequest, request: Request, core: CoreDep) -> dict[str, Any]:
    """« Mot de passe oublié ? »: a single-use link goes to the account's notification e-mail. The
    answer is the same whether or not an account matches."""
    await passwords.request_reset(core, body.login, client_address(request))
    return {"detail": RESET_SENT.format(minutes=core.settings.password_reset_minutes)}


class ResetConfirm(BaseModel):
    token: str = Field(max_length=500)
    new: str = Field(max_length=1024)


@router.post("/auth/password-reset/confirm", tags=["auth"])
async def reset_confirm(body: ResetConfirm, request: Request, core: CoreDep) -> dict[str, Any]:
    """Use a link's ``token`` to set a new password; every session of the account ends."""
    username = await passwords.complete_reset(core, body.token, body.new, client_address(request))
    return {"changed": True, "username": username}


@router.get("/me/sessions", tags=["accounts"])
async def my_sessions(core: CoreDep, actor: ActorDep) -> dict[str, Any]:
    """Web sessions and API tokens (``current`` marks this one), their live sockets, remembered browsers."""
    return await sessions.list_sessions(core, actor)


@router.delete("/me/sessions/{session_id}", status_code=204, tags=["accounts"])
async def revoke_session(session_id: Annotated[str, Path(max_length=40)], core: CoreDep, actor: ActorDep) -> Response:
    """End a session (``token-…``: its live sockets close at once), close a socket (``socket-…``)
    or forget a browser (``device-…``)."""
    await sessions.revoke(core, actor, session_id)
    return Response(status_code=204)


@router.get("/me/access-log", tags=["accounts"])
async def access_log(core: CoreDep, actor: ActorDep, cursor: Annotated[str | None, Query(max_length=64)] = None,
                     limit: Annotated[int, Query(ge=1, le=200)] = 50, others: bool = False) -> dict[str, Any]:
    """Who accessed this account's mailboxes (reads, sends, flags, delegations…) and its own logins,
    newest first; ``others=true``: only what other people did."""
    return await audit_service.access_log(core, actor, cursor=cursor, limit=limit, others_only=others)


@router.get("/me/delegations", tags=["delegations"])
async def my_delegations(core: CoreDep, actor: ActorDep) -> dict[str, Any]:
    """Both sides: delegations of the mailboxes one owns (``given``) and those one holds (``received``)."""
    return await delegations.mine(core, actor)


class Landing(BaseModel):
    mailbox_id: BodyId | None = None


@router.put("/me/landing", tags=["delegations"])
async def set_landing(body: Landing, core: CoreDep, actor: ActorDep) -> dict[str, Any]:
    """The mailbox the inbox opens on (a secretary's: the doctor's); null for one's own."""
    await mailboxes.set_landing(core, actor, body.mailbox_id)
    return {"mailbox_id": body.mailbox_id}


class DelegationIn(BaseModel):
    account: str = Field(max_length=254, description="identifiant du compte (ou adresse de sa BAL personnelle)")
    rights: list[str] | None = Field(default=None, max_length=8,
                                     description="read, draft, send, flags (toutes par défaut ; read toujours)")


@router.get("/mailboxes/{mailbox_id}/delegations", tags=["delegations"])
async def list_delegations(mailbox_id: Annotated[int, Path(ge=1, le=2**31 - 1)], core: CoreDep,
                           actor: ActorDep) -> dict[str, Any]:
    return {"items": await delegations.list_delegations(core, actor, mailbox_id)}


@router.post("/mailboxes/{mailbox_id}/delegations", tags=["delegations"])
async def add_delegation(mailbox_id: Annotated[int, Path(ge=1, le=2**31 - 1)], body: DelegationIn, core: CoreDep,
                         actor: ActorDep) -> JSONResponse:
    """Delegate one's PER mailbox to another account (201), or change a delegate's rights (200)."""
    view, created = await delegations.delegate(core, actor, mailbox_id, body.account, body.rights)
    return JSONResponse(view, status_code=201 if created else 200)


@router.delete("/mailboxes/{mailbox_id}/delegations/{username}", status_code=204, tags=["delegations"])
async def remove_delegation(mailbox_id: Annotated[int, Path(ge=1, le=2**31 - 1)],
                            username: Annotated[str, Path(max_length=120)], core: CoreDep,
                            actor: ActorDep) -> Response:
    """Take a delegation back (the owner) or give it up (the delegate): her access ends at once."""
    await delegations.revoke_delegation(core, actor, mailbox_id, username)
    return Response(status_code=204)
