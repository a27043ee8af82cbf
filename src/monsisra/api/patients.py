"""Routes of patients, their care team and shared record, and support requests (issue 13)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Path, Query, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from monsisra.api.deps import BodyId, PathId, current_actor, get_core
from monsisra.api.routes import PatientIn, file_headers
from monsisra.config import Settings
from monsisra.services import care_team, conversations, patient_record, patients, support_requests
from monsisra.services.core import Actor, Core

router = APIRouter(prefix="/api/v1")
ActorDep = Annotated[Actor, Depends(current_actor)]
CoreDep = Annotated[Core, Depends(get_core)]


@router.post("/patients", status_code=201, tags=["patients"])
async def create_patient(body: PatientIn, core: CoreDep, actor: ActorDep) -> Response:
    """Register a patient by INS (spaces accepted); an INS already known answers the same patient
    (200). A wrong trait answers 422 with ``errors`` naming each field."""
    item, created = await patients.register(core, actor, patients.PatientRef(**body.model_dump()))
    return JSONResponse(item, status_code=201 if created else 200)


@router.get("/patients", tags=["patients"])
async def search_patients(core: CoreDep, actor: ActorDep, ins: Annotated[str | None, Query(max_length=40)] = None,
                          q: Annotated[str | None, Query(max_length=200)] = None,
                          limit: Annotated[int, Query(ge=1, le=50)] = 20) -> dict[str, Any]:
    """Patients the account has a link to, by exact INS or by fragments of names."""
    return await patients.search(core, actor, ins=ins, q=q, limit=limit)


@router.get("/patients/{patient_id}", tags=["patients"])
async def get_patient(patient_id: PathId, core: CoreDep, actor: ActorDep) -> dict[str, Any]:
    return await patients.get(core, actor, patient_id)


@router.get("/patients/{patient_id}/care-team", tags=["patients"])
async def get_care_team(patient_id: PathId, core: CoreDep, actor: ActorDep) -> dict[str, Any]:
    return await care_team.team(core, actor, patient_id)


@router.put("/patients/{patient_id}/care-team/me", tags=["patients"])
async def join_care_team(patient_id: PathId, core: CoreDep, actor: ActorDep) -> dict[str, Any]:
    """Declare oneself « acteur de la prise en charge » of the patient (idempotent)."""
    return await care_team.join(core, actor, patient_id)


@router.delete("/patients/{patient_id}/care-team/me", tags=["patients"])
async def leave_care_team(patient_id: PathId, core: CoreDep, actor: ActorDep) -> dict[str, Any]:
    return await care_team.leave(core, actor, patient_id)


RecordKind = Literal["letter", "result", "teleexpertise", "support", "support_request", "patient_exchange", "call",
                     "conversation", "event", "document", "message"]


@router.get("/patients/{patient_id}/record", tags=["patients"])
async def get_record(patient_id: PathId, core: CoreDep, actor: ActorDep,
                     kind: RecordKind | None = None) -> dict[str, Any]:
    """The shared record: 403 outside the care team; every access (and refusal) audited."""
    return await patient_record.record(core, actor, patient_id, kind=kind)


@router.get("/patients/{patient_id}/record/documents/{attachment_id}", tags=["patients"])
async def get_record_document(patient_id: PathId, attachment_id: Annotated[str, Path(min_length=1, max_length=64)],
                              core: CoreDep, actor: ActorDep,
                              disposition: Literal["inline", "attachment"] = "attachment") -> Response:
    meta = await patient_record.document(core, actor, patient_id, attachment_id)
    return StreamingResponse(core.blobs.iter_file(meta.sha256), media_type=meta.content_type,
                             headers=file_headers(meta.filename, meta.content_type, meta.size, disposition))


@router.get("/patients/{patient_id}/record/conversations/{conversation_id}", tags=["patients"])
async def get_record_conversation(patient_id: PathId, conversation_id: PathId, core: CoreDep, actor: ActorDep,
                                  cursor: Annotated[str | None, Query(max_length=40)] = None,
                                  limit: Annotated[int, Query(ge=1, le=200)] = 50) -> dict[str, Any]:
    """A conversation about the patient, read-only, for a care-team member who does not take part
    in it (``read_only``, ``me.consultation``); its files download from ``record/documents``.
    404 outside the team, like a conversation that does not exist; every open audited."""
    return await conversations.consult(core, actor, patient_id, conversation_id, cursor=cursor, limit=limit)


class SupportRequestIn(BaseModel):
    to: str = Field(max_length=320)
    patient: PatientIn | None = None
    patient_id: BodyId | None = None
    reason: str = Field(max_length=20_000)
    urgency: Literal["normal", "urgent"] = "normal"
    attachments: list[str] = Field(default_factory=list, max_length=20)
    from_mailbox: BodyId | None = None


@router.post("/support-requests", status_code=201, tags=["support requests"])
async def create_support_request(body: SupportRequestIn, core: CoreDep, actor: ActorDep) -> dict[str, Any]:
    """A « demande d'appui » to a resource team: 201 {id, state: "new", conversation_id, …}."""
    data = body.model_dump()
    patient = data.pop("patient")
    return await support_requests.create(core, actor, support_requests.NewRequest(
        **data, patient=patients.PatientRef(**patient) if patient else None))


@router.get("/support-requests", tags=["support requests"])
async def list_support_requests(core: CoreDep, actor: ActorDep, role: Literal["sent", "received"] = "received",
                                state: Literal["new", "taken", "closed"] | None = None,
                                limit: Annotated[int, Query(ge=1, le=200)] = 100) -> dict[str, Any]:
    return await support_requests.list_requests(core, actor, role=role, state=state, limit=limit)


@router.get("/support-requests/{request_id}", tags=["support requests"])
async def get_support_request(request_id: PathId, core: CoreDep, actor: ActorDep) -> dict[str, Any]:
    return await support_requests.get(core, actor, request_id)


@router.post("/support-requests/{request_id}/take", tags=["support requests"])
async def take_support_request(request_id: PathId, core: CoreDep, actor: ActorDep) -> dict[str, Any]:
    """Take it in charge (one member of the team's mailbox); a second time: 409."""
    return await support_requests.take(core, actor, request_id)


@router.post("/support-requests/{request_id}/close", tags=["support requests"])
async def close_support_request(request_id: PathId, core: CoreDep, actor: ActorDep) -> dict[str, Any]:
    return await support_requests.close(core, actor, request_id)


def install(app: FastAPI, settings: Settings) -> None:
    app.include_router(router)
