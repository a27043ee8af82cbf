"""Routes of tele-expertise (issue 14): requests and their lifecycle, billing lines, statistics."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Query
from pydantic import BaseModel, Field

from monsisra.api.deps import MAX_ID, PathId, current_actor, get_core
from monsisra.api.directory import Expert
from monsisra.api.routes import PatientIn
from monsisra.config import Settings
from monsisra.services import patients, teleexpertise
from monsisra.services.core import Actor, Core

router = APIRouter(prefix="/api/v1")
ActorDep = Annotated[Actor, Depends(current_actor)]
CoreDep = Annotated[Core, Depends(get_core)]
StateName = Literal["submitted", "elements_requested", "answered", "closed", "declined", "cancelled"]


class ConsentIn(BaseModel):
    given: bool = False
    by: str = Field(default="patient", max_length=20)
    at: str = Field(default="", max_length=40)


class TeleexpertiseIn(BaseModel):
    expert: str = Field(max_length=320)
    patient: PatientIn | None = None
    consent: ConsentIn | None = None
    question: str = Field(default="", max_length=20_000)
    attachments: list[str] = Field(default_factory=list, max_length=20)
    billing_number: str = Field(default="", max_length=20)


class StepIn(BaseModel):
    body: str = Field(default="", max_length=20_000)
    attachments: list[str] = Field(default_factory=list, max_length=20)


class AnswerIn(StepIn):
    billing_number: str | None = Field(default=None, max_length=20)


class DeclineIn(BaseModel):
    reason: str = Field(default="", max_length=20_000)


@router.post("/teleexpertises", status_code=201, tags=["teleexpertise"])
async def create_teleexpertise(body: TeleexpertiseIn, core: CoreDep, actor: ActorDep) -> dict[str, Any]:
    """Request an expertise: 201 {id, state: "submitted", …}; refusals are French problems."""
    return await teleexpertise.create(core, actor, teleexpertise.NewTeleexpertise(
        expert=body.expert, patient=patients.PatientRef(**body.patient.model_dump()) if body.patient else None,
        consent=body.consent.model_dump() if body.consent else None, question=body.question,
        billing_number=body.billing_number, attachments=body.attachments))


@router.get("/teleexpertises", tags=["teleexpertise"])
async def list_teleexpertises(core: CoreDep, actor: ActorDep, role: Literal["requester", "expert"] = "requester",
                              state: StateName | None = None,
                              limit: Annotated[int, Query(ge=1, le=200)] = 100) -> dict[str, Any]:
    return await teleexpertise.list_requests(core, actor, role=role, state=state, limit=limit)


@router.get("/teleexpertises/stats", tags=["teleexpertise"])
async def teleexpertise_stats(core: CoreDep, actor: ActorDep,
                              mailbox_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None) -> dict[str, Any]:
    """Per month: received, answered, declined, median answer time of the actor's expert mailboxes."""
    return await teleexpertise.stats(core, actor, mailbox_id)


@router.get("/teleexpertises/experts", tags=["teleexpertise"])
async def experts_near_me(core: CoreDep, actor: ActorDep, q: Annotated[str, Query(max_length=200)] = "",
                          limit: Annotated[int, Query(ge=1, le=100)] = 20) -> dict[str, Any]:
    """Declared experts (people and services), nearest first from the actor's practice commune
    (``distance_km``); those without a known place last. ``reference``: that commune, or null."""
    return await teleexpertise.experts_near(core, actor, q=q, limit=limit)


@router.get("/teleexpertises/{te_id}", tags=["teleexpertise"])
async def get_teleexpertise(te_id: PathId, core: CoreDep, actor: ActorDep) -> dict[str, Any]:
    return await teleexpertise.get(core, actor, te_id)


@router.post("/teleexpertises/{te_id}/assign", tags=["teleexpertise"])
async def assign_teleexpertise(te_id: PathId, core: CoreDep, actor: ActorDep) -> dict[str, Any]:
    """« Je prends en charge » (a member of the expert's mailbox; shown to the others)."""
    return await teleexpertise.act(core, actor, te_id, "assign")


@router.post("/teleexpertises/{te_id}/request-elements", tags=["teleexpertise"])
async def request_elements(te_id: PathId, body: StepIn, core: CoreDep, actor: ActorDep) -> dict[str, Any]:
    return await teleexpertise.act(core, actor, te_id, "request_elements", body=body.body,
                                   attachments=body.attachments)


@router.post("/teleexpertises/{te_id}/provide-elements", tags=["teleexpertise"])
async def provide_elements(te_id: PathId, body: StepIn, core: CoreDep, actor: ActorDep) -> dict[str, Any]:
    return await teleexpertise.act(core, actor, te_id, "provide_elements", body=body.body,
                                   attachments=body.attachments)


@router.post("/teleexpertises/{te_id}/answer", tags=["teleexpertise"])
async def answer_teleexpertise(te_id: PathId, body: AnswerIn, core: CoreDep, actor: ActorDep) -> dict[str, Any]:
    """The expert's answer: the report PDF to the requester and the two billing lines."""
    return await teleexpertise.act(core, actor, te_id, "answer", body=body.body, attachments=body.attachments,
                                   billing_number=body.billing_number)


@router.post("/teleexpertises/{te_id}/close", tags=["teleexpertise"])
async def close_teleexpertise(te_id: PathId, core: CoreDep, actor: ActorDep) -> dict[str, Any]:
    return await teleexpertise.act(core, actor, te_id, "close")


@router.post("/teleexpertises/{te_id}/decline", tags=["teleexpertise"])
async def decline_teleexpertise(te_id: PathId, body: DeclineIn, core: CoreDep, actor: ActorDep) -> dict[str, Any]:
    return await teleexpertise.act(core, actor, te_id, "decline", body=body.reason)


@router.post("/teleexpertises/{te_id}/cancel", tags=["teleexpertise"])
async def cancel_teleexpertise(te_id: PathId, core: CoreDep, actor: ActorDep) -> dict[str, Any]:
    return await teleexpertise.act(core, actor, te_id, "cancel")


class ServiceExpertIn(BaseModel):
    expert: Expert | None = None


@router.get("/mailboxes/{mailbox_id}/expert", tags=["teleexpertise"])
async def service_expert_card(mailbox_id: PathId, core: CoreDep, actor: ActorDep) -> dict[str, Any]:
    """A service mailbox's card for its members: ``can_manage``, members, the expert declaration."""
    return await teleexpertise.service_card(core, actor, mailbox_id)


@router.put("/mailboxes/{mailbox_id}/expert", tags=["teleexpertise"])
async def declare_service_expert(mailbox_id: PathId, body: ServiceExpertIn, core: CoreDep,
                                 actor: ActorDep) -> dict[str, Any]:
    """Declare the service expert (``expert`` as on a person's card) or withdraw (``expert: null``):
    the service's managers only (403 for another member)."""
    return await teleexpertise.declare_expert(core, actor, mailbox_id,
                                              body.expert.model_dump() if body.expert else None)


@router.get("/billing", tags=["teleexpertise"])
async def billing_lines(core: CoreDep, actor: ActorDep,
                        month: Annotated[str, Query(max_length=7)] = "") -> dict[str, Any]:
    """The acting professional's billing lines of the month (YYYY-MM)."""
    return await teleexpertise.lines(core, actor, month)


def install(app: FastAPI, settings: Settings) -> None:
    app.include_router(router)


