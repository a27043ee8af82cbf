"""Administrators' routes: accounts, mailboxes and their people, the audit log (issue 15)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from monsisra.api.deps import PathId, current_actor, get_core
from monsisra.services import admin_accounts as admin
from monsisra.services import audit
from monsisra.services.core import Actor, Core
from monsisra.services.errors import Forbidden

router = APIRouter(prefix="/api/v1/admin", tags=["admin"])
ActorDep = Annotated[Actor, Depends(current_actor)]
CoreDep = Annotated[Core, Depends(get_core)]
Username = Annotated[str, Path(max_length=120)]
Text = Annotated[str | None, Query(max_length=200)]


@router.get("/accounts")
async def accounts_list(core: CoreDep, actor: ActorDep, q: Text = None,
                        offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
                        limit: Annotated[int, Query(ge=1, le=200)] = 50) -> dict[str, Any]:
    return await admin.list_accounts(core, actor, q or "", offset, limit)


class AccountIn(BaseModel):
    username: str = Field(max_length=120)
    first_name: str = Field("", max_length=120)
    last_name: str = Field("", max_length=120)
    civility: str = Field("", max_length=20)
    profession: str = Field("", max_length=120)
    specialty: str = Field("", max_length=160)
    national_id: str | None = Field(None, max_length=20)
    email: str | None = Field(None, max_length=254)
    is_admin: bool = False
    personal_mailbox: bool = True
    password: str | None = Field(None, max_length=1024, description="absent : un lien pour le choisir est envoyé")


@router.post("/accounts", status_code=201)
async def accounts_create(body: AccountIn, core: CoreDep, actor: ActorDep) -> dict[str, Any]:
    return await admin.create_account(core, actor, admin.AccountForm(**body.model_dump()))


@router.get("/accounts/{username}")
async def accounts_detail(username: Username, core: CoreDep, actor: ActorDep) -> dict[str, Any]:
    return await admin.account_detail(core, actor, username)


@router.post("/accounts/{username}/deactivate", status_code=204)
async def accounts_deactivate(username: Username, core: CoreDep, actor: ActorDep) -> Response:
    await admin.set_active(core, actor, username, False)
    return Response(status_code=204)


@router.post("/accounts/{username}/activate", status_code=204)
async def accounts_activate(username: Username, core: CoreDep, actor: ActorDep) -> Response:
    await admin.set_active(core, actor, username, True)
    return Response(status_code=204)


@router.post("/accounts/{username}/password-link", status_code=202)
async def accounts_password_link(username: Username, core: CoreDep, actor: ActorDep) -> dict[str, Any]:
    await admin.send_link(core, actor, username)
    return {"detail": "Lien envoyé à l'adresse de notification du compte, s'il en a une."}


@router.delete("/accounts/{username}/sessions", status_code=204)
async def accounts_end_sessions(username: Username, core: CoreDep, actor: ActorDep) -> Response:
    await admin.end_sessions(core, actor, username)
    return Response(status_code=204)


@router.get("/mailboxes")
async def mailboxes_list(core: CoreDep, actor: ActorDep, q: Text = None,
                         kind: Literal["services", "all"] = "services",
                         offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
                         limit: Annotated[int, Query(ge=1, le=200)] = 50) -> dict[str, Any]:
    return await admin.list_mailboxes(core, actor, q or "", kind, offset, limit)


class MailboxIn(BaseModel):
    local: str = Field(max_length=254, description="partie locale de l'adresse (ou adresse complète)")
    display_name: str = Field(max_length=200)
    kind: Literal["ORG", "APP", "CAB"] = "ORG"
    organisation: str = Field("", max_length=200)
    finess: str | None = Field(None, max_length=20)
    is_expert: bool = False
    is_resource_team: bool = False
    description: str = Field("", max_length=4000)


@router.post("/mailboxes", status_code=201)
async def mailboxes_create(body: MailboxIn, core: CoreDep, actor: ActorDep) -> dict[str, Any]:
    return await admin.create_mailbox(core, actor, **body.model_dump())


@router.get("/mailboxes/{mailbox_id}")
async def mailboxes_detail(mailbox_id: PathId, core: CoreDep, actor: ActorDep) -> dict[str, Any]:
    return await admin.mailbox_detail(core, actor, mailbox_id)


class AccessIn(BaseModel):
    access: Literal["member", "delegate"] = "member"
    rights: list[str] | None = Field(None, max_length=8)


@router.put("/mailboxes/{mailbox_id}/access/{username}")
async def mailboxes_grant(mailbox_id: PathId, username: Username, body: AccessIn, core: CoreDep,
                          actor: ActorDep) -> JSONResponse:
    created = await admin.grant(core, actor, mailbox_id, username, body.access, body.rights)
    return JSONResponse({"username": username, "access": body.access}, status_code=201 if created else 200)


@router.delete("/mailboxes/{mailbox_id}/access/{username}", status_code=204)
async def mailboxes_revoke(mailbox_id: PathId, username: Username, core: CoreDep, actor: ActorDep) -> Response:
    await admin.revoke(core, actor, mailbox_id, username)
    return Response(status_code=204)


@router.get("/audit")
async def audit_search(core: CoreDep, actor: ActorDep, account: Text = None, action: Text = None, mailbox: Text = None,
                       patient_id: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None, client: Text = None,
                       object_type: Text = None, object_id: Text = None, since: datetime | None = None,
                       until: datetime | None = None, cursor: Annotated[str | None, Query(max_length=64)] = None,
                       limit: Annotated[int, Query(ge=1, le=200)] = 50) -> dict[str, Any]:
    """Search the audit log, newest first (``action`` ending with « . » is a prefix: ``login.``)."""
    filters = audit.Search(account=account, action=action, mailbox=mailbox, patient_id=patient_id, client=client,
                           object_type=object_type, object_id=object_id, since=since, until=until)
    return await audit.search(core, actor, filters, cursor=cursor, limit=limit)


@router.get("/audit/verify")
async def audit_verify(core: CoreDep, actor: ActorDep) -> dict[str, Any]:
    """Walk the hash chain (as ``monsisra audit verify``): ``ok``, entries, head, problems."""
    if not actor.is_admin:
        raise Forbidden("réservé aux administrateurs de la plateforme")
    return (await audit.verify(core)).as_dict()
