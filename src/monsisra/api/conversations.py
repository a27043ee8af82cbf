"""/api/v1/conversations: live threads between professionals (issue 13). Each route parses,
calls one service function, returns; the rules and the access checks are the service's."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response
from pydantic import BaseModel, Field

from monsisra.api.deps import BodyId, PathId, current_actor, get_core
from monsisra.api.routes import PatientIn
from monsisra.services import conversations, patients, presence
from monsisra.services.core import Actor, Core

router = APIRouter(prefix="/api/v1", tags=["conversations"])
ActorDep = Annotated[Actor, Depends(current_actor)]
CoreDep = Annotated[Core, Depends(get_core)]
Cursor = Annotated[str | None, Query(max_length=40)]


class ConversationIn(BaseModel):
    title: str = Field("", max_length=1000)
    participants: list[Annotated[str, Field(max_length=320)]] = Field(default_factory=list, max_length=500)
    patient: PatientIn | None = None
    patient_id: BodyId | None = None
    body: str = ""
    attachments: list[Annotated[str, Field(max_length=64)]] = Field(default_factory=list, max_length=50)
    from_mailbox: BodyId | None = None


class PostIn(BaseModel):
    body: str = ""
    attachments: list[Annotated[str, Field(max_length=64)]] = Field(default_factory=list, max_length=50)
    from_mailbox: BodyId | None = None


class ParticipantsIn(BaseModel):
    participants: list[Annotated[str, Field(max_length=320)]] = Field(default_factory=list, max_length=500)


class ReadIn(BaseModel):
    message_id: Annotated[int, Field(ge=1, le=2**62)] | None = None


class LeaveIn(BaseModel):
    from_mailbox: BodyId | None = None


class AbsenceIn(BaseModel):
    autoreply: bool
    message: str | None = None


@router.post("/conversations", status_code=201)
async def start(body: ConversationIn, core: CoreDep, actor: ActorDep) -> dict[str, Any]:
    """Open a conversation {title, participants: [addresses], patient?: {ins…} or patient_id?, body?}."""
    conversation_id = await conversations.start(
        core, actor, from_mailbox=body.from_mailbox, title=body.title, participants=body.participants,
        patient_id=body.patient_id, patient=patients.PatientRef(**body.patient.model_dump()) if body.patient else None,
        body=body.body, attachments=body.attachments)
    return await conversations.get(core, actor, conversation_id)


@router.get("/conversations")
async def list_conversations(core: CoreDep, actor: ActorDep, state: Literal["open", "closed"] | None = None,
                             mailbox_id: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
                             cursor: Cursor = None, limit: Annotated[int, Query(ge=1, le=200)] = 50) -> dict[str, Any]:
    return await conversations.list_conversations(core, actor, mailbox_id=mailbox_id, state=state, cursor=cursor,
                                                  limit=limit)


@router.get("/conversations/{conversation_id}")
async def get(conversation_id: PathId, core: CoreDep, actor: ActorDep, cursor: Cursor = None,
              limit: Annotated[int, Query(ge=1, le=200)] = 50) -> dict[str, Any]:
    """Participants (with read state) and messages, newest page first; ``cursor`` pages back."""
    return await conversations.get(core, actor, conversation_id, cursor=cursor, limit=limit)


@router.post("/conversations/{conversation_id}/messages", status_code=201)
async def post(conversation_id: PathId, body: PostIn, core: CoreDep, actor: ActorDep) -> dict[str, Any]:
    return await conversations.post(core, actor, conversation_id, body.body, body.attachments, body.from_mailbox)


@router.post("/conversations/{conversation_id}/participants")
async def add_participants(conversation_id: PathId, body: ParticipantsIn, core: CoreDep,
                           actor: ActorDep) -> dict[str, Any]:
    """Add mailboxes; they see the whole history."""
    await conversations.add_participants(core, actor, conversation_id, body.participants)
    return await conversations.get(core, actor, conversation_id)


@router.post("/conversations/{conversation_id}/read")
async def read(conversation_id: PathId, core: CoreDep, actor: ActorDep, body: ReadIn | None = None) -> dict[str, Any]:
    return await conversations.mark_read(core, actor, conversation_id, body.message_id if body else None)


@router.post("/conversations/{conversation_id}/typing", status_code=204)
async def typing(conversation_id: PathId, core: CoreDep, actor: ActorDep) -> Response:
    await conversations.typing(core, actor, conversation_id)
    return Response(status_code=204)


@router.post("/conversations/{conversation_id}/leave", status_code=204)
async def leave(conversation_id: PathId, core: CoreDep, actor: ActorDep, body: LeaveIn | None = None) -> Response:
    await conversations.leave(core, actor, conversation_id, body.from_mailbox if body else None)
    return Response(status_code=204)


@router.post("/conversations/{conversation_id}/close")
async def close(conversation_id: PathId, core: CoreDep, actor: ActorDep) -> dict[str, Any]:
    """Close it: the PDF summary goes as a letter to every participant's mailbox."""
    return await conversations.close(core, actor, conversation_id)


@router.get("/me/absence")
async def absence(core: CoreDep, actor: ActorDep) -> dict[str, Any]:
    return await conversations.settings_of(core, actor)


@router.put("/me/absence")
async def set_absence(body: AbsenceIn, core: CoreDep, actor: ActorDep) -> dict[str, Any]:
    """Whether « Apparaître absent » answers new conversation messages, and with which text."""
    return await conversations.set_autoreply(core, actor, autoreply=body.autoreply, message=body.message)


@router.get("/presence", tags=["presence"])
async def presence_of(core: CoreDep, actor: ActorDep,
                      address: Annotated[list[str], Query(max_length=200)]) -> dict[str, Any]:
    """``{items: [{address, state, label}]}``: online, away (idle 10 min) or offline for each
    address (« Apparaître absent » reads as offline)."""
    return {"items": await presence.of_addresses(core, actor, address)}
