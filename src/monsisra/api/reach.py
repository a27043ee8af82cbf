"""Routes that reach professionals outside the web page (issue 16): the virtual printer's
workstations and jobs, app passwords of mail clients, notification preferences and Web Push
subscriptions, DGS-Urgent broadcasts."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import unquote

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from monsisra.api.deps import PathId, client_address, current_actor, get_core
from monsisra.config import Settings
from monsisra.services import app_passwords, broadcasts, notifications, printer
from monsisra.services.core import Actor, Core
from monsisra.services.errors import AuthFailed

router = APIRouter(prefix="/api/v1")
ActorDep = Annotated[Actor, Depends(current_actor)]
CoreDep = Annotated[Core, Depends(get_core)]


# --- virtual printer ------------------------------------------------------------------------


class WorkstationIn(BaseModel):
    name: str = Field("", max_length=120)


@router.post("/me/workstations", status_code=201, tags=["printer"])
async def workstation_register(body: WorkstationIn, core: CoreDep, actor: ActorDep) -> dict[str, Any]:
    """Register a workstation's MonSisra printer: its token (shown once) prints for this account."""
    return await printer.register_workstation(core, actor, body.name)


@router.get("/me/workstations", tags=["printer"])
async def workstation_list(core: CoreDep, actor: ActorDep) -> list[dict[str, Any]]:
    return await printer.list_workstations(core, actor)


@router.delete("/me/workstations/{workstation_id}", status_code=204, tags=["printer"])
async def workstation_revoke(workstation_id: PathId, core: CoreDep, actor: ActorDep) -> Response:
    await printer.revoke_workstation(core, actor, workstation_id)
    return Response(status_code=204)


@router.post("/print-jobs", status_code=201, tags=["printer"])
async def print_job(request: Request, core: CoreDep) -> dict[str, Any]:
    """A printed PDF (request body, ``application/pdf``) sent by a workstation (its token as
    bearer; title in ``X-Print-Title``, percent-encoded): becomes a draft with the PDF attached,
    with the patient and recipients its text suggests."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthFailed("jeton de poste d'impression absent (Authorization: Bearer)")
    title = unquote(request.headers.get("x-print-title", ""))[:255]
    return await printer.submit(core, token.strip(), request.stream(), title, client_address(request))


@router.get("/me/print-jobs", tags=["printer"])
async def print_jobs(core: CoreDep, actor: ActorDep) -> list[dict[str, Any]]:
    """The latest printed documents, their drafts and what their text suggested."""
    return await printer.list_jobs(core, actor)


class ConfirmIn(BaseModel):
    recipients: list[Annotated[str, Field(max_length=320)]] = Field(default_factory=list, max_length=50)
    patient: bool = False


@router.post("/me/print-jobs/{job_id}/confirm", tags=["printer"])
async def print_job_confirm(job_id: PathId, body: ConfirmIn, core: CoreDep, actor: ActorDep) -> dict[str, Any]:
    """Accept suggestions: these suggested recipients are added to the draft, the patient linked."""
    return await printer.confirm(core, actor, job_id, body.recipients, body.patient)


# --- app passwords (mail clients of an account with a second factor) -------------------------


class AppPasswordIn(BaseModel):
    label: str = Field(max_length=120)


@router.get("/me/app-passwords", tags=["auth"])
async def app_password_list(core: CoreDep, actor: ActorDep) -> list[dict[str, Any]]:
    """My app passwords in force: label, created, last used (never the secret)."""
    return await app_passwords.list_mine(core, actor)


@router.post("/me/app-passwords", status_code=201, tags=["auth"])
async def app_password_create(body: AppPasswordIn, core: CoreDep, actor: ActorDep) -> dict[str, Any]:
    """A new app password for a mail client (IMAP, SMTP submission): ``password`` is shown in
    this answer only."""
    return await app_passwords.create(core, actor, body.label)


@router.delete("/me/app-passwords/{app_password_id}", status_code=204, tags=["auth"])
async def app_password_revoke(app_password_id: PathId, core: CoreDep, actor: ActorDep) -> Response:
    await app_passwords.revoke(core, actor, app_password_id)
    return Response(status_code=204)


# --- notifications --------------------------------------------------------------------------


class NotifyPrefsIn(BaseModel):
    email: bool | None = None
    sms: bool | None = None
    push: bool | None = None
    quiet_start: str | None = Field(None, max_length=5)
    quiet_end: str | None = Field(None, max_length=5)


@router.get("/me/notifications", tags=["notifications"])
async def notify_prefs(core: CoreDep, actor: ActorDep) -> dict[str, Any]:
    return await notifications.get_prefs(core, actor)


@router.patch("/me/notifications", tags=["notifications"])
async def notify_prefs_update(body: NotifyPrefsIn, core: CoreDep, actor: ActorDep) -> dict[str, Any]:
    return await notifications.set_prefs(core, actor, body.model_dump(exclude_unset=True))


class PushKeys(BaseModel):
    p256dh: str = Field(max_length=200)
    auth: str = Field(max_length=100)


class PushSubscriptionIn(BaseModel):
    endpoint: str = Field(max_length=1000)
    keys: PushKeys


@router.get("/push/public-key", tags=["notifications"])
async def push_public_key(core: CoreDep) -> dict[str, str]:
    """The VAPID application server key browsers subscribe with."""
    return {"public_key": notifications.vapid_public_key(core.settings)}


@router.post("/me/push-subscriptions", status_code=201, tags=["notifications"])
async def push_subscribe(body: PushSubscriptionIn, request: Request, core: CoreDep, actor: ActorDep) -> dict[str, Any]:
    """Subscribe this browser or phone to Web Push (``PushSubscription.toJSON()``)."""
    return await notifications.subscribe_push(core, actor, body.endpoint, body.keys.p256dh, body.keys.auth,
                                              request.headers.get("user-agent"))


@router.delete("/me/push-subscriptions", status_code=204, tags=["notifications"])
async def push_unsubscribe(core: CoreDep, actor: ActorDep,
                           endpoint: Annotated[str, Query(max_length=1000)]) -> Response:
    await notifications.unsubscribe_push(core, actor, endpoint)
    return Response(status_code=204)


# --- DGS-Urgent -----------------------------------------------------------------------------


class BroadcastIn(BaseModel):
    subject: str = Field(max_length=998)
    body: str = Field(max_length=200_000)
    professions: list[Annotated[str, Field(max_length=120)]] | None = None
    departments: list[Annotated[str, Field(max_length=3)]] | None = None


@router.post("/admin/broadcasts", status_code=201, tags=["admin"])
async def broadcast(body: BroadcastIn, core: CoreDep, actor: ActorDep) -> dict[str, Any]:
    """A DGS-Urgent alert to every professional, or those of these professions and departments."""
    return await broadcasts.send(core, actor, broadcasts.Broadcast(
        body.subject, body.body, body.professions or [], body.departments or []))


@router.get("/me/alerts", tags=["messages"])
async def alerts(core: CoreDep, actor: ActorDep) -> list[dict[str, Any]]:
    """The DGS-Urgent alerts not yet read (the banner)."""
    return await broadcasts.unread_alerts(core, actor)


def install(app: FastAPI, settings: Settings) -> None:
    app.include_router(router)
