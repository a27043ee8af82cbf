"""/api/v1 calls and teleconsultations (issue 17): start a visio in a conversation or on a
tele-expertise, join, decline, leave, end, signalling over HTTP (the pages use the live socket),
and the patient's side of a teleconsultation (no account: the link and the browser it is bound to)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, FastAPI, Path, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import Response
from pydantic import BaseModel, Field

from monsisra.api.deps import BodyId, PathId, current_actor, get_core
from monsisra.config import Settings
from monsisra.services import video
from monsisra.services.core import Actor, Core
from monsisra.services.errors import ServiceError

router = APIRouter(prefix="/api/v1", tags=["video"])
ActorDep = Annotated[Actor, Depends(current_actor)]
CoreDep = Annotated[Core, Depends(get_core)]
Secret = Annotated[str, Path(min_length=10, max_length=200)]
PATIENT_COOKIE = "monsisra_tc"


class PatientIn(BaseModel):
    family_name: str = Field(max_length=1000)
    given_names: str = Field(max_length=1000)
    email: str | None = Field(None, max_length=320)
    phone: str | None = Field(None, max_length=40)


class TeleconsultationIn(BaseModel):
    patient: PatientIn
    at: datetime
    patient_id: BodyId | None = None


@router.post("/conversations/{conversation_id}/calls", status_code=201)
async def start_call(conversation_id: PathId, core: CoreDep, actor: ActorDep) -> dict[str, Any]:
    """« Lancer une visio »: rings every participant online; ``{id, ice_servers}``."""
    return await video.start_call(core, actor, "conversation", conversation_id)


@router.post("/teleexpertises/{te_id}/calls", status_code=201)
async def start_teleexpertise_call(te_id: PathId, core: CoreDep, actor: ActorDep) -> dict[str, Any]:
    """« Lancer une visio » on a tele-expertise: rings the requester and the expert (for a service,
    the member who took it in charge, else every member online); ``{id, ice_servers}``; 404 to anyone
    on neither side."""
    return await video.start_call(core, actor, "teleexpertise", te_id)


@router.get("/calls/{call_id}")
async def get_call(call_id: PathId, core: CoreDep, actor: ActorDep) -> dict[str, Any]:
    return await video.get_call(core, actor, call_id)


@router.post("/calls/{call_id}/join")
async def join(call_id: PathId, core: CoreDep, actor: ActorDep) -> dict[str, Any]:
    """``{id, peer, members: [{peer, name}], ice_servers}``; 404 to anyone not invited."""
    return await video.join(core, actor, call_id)


@router.post("/calls/{call_id}/decline", status_code=204)
async def decline(call_id: PathId, core: CoreDep, actor: ActorDep) -> Response:
    await video.decline(core, actor, call_id)
    return Response(status_code=204)


@router.post("/calls/{call_id}/leave")
async def leave(call_id: PathId, core: CoreDep, actor: ActorDep) -> dict[str, Any]:
    return await video.leave(core, actor, call_id)


@router.post("/calls/{call_id}/end")
async def end(call_id: PathId, core: CoreDep, actor: ActorDep) -> dict[str, Any]:
    return await video.end(core, actor, call_id)


@router.post("/calls/{call_id}/signal", status_code=202)
async def signal(call_id: PathId, core: CoreDep, actor: ActorDep,
                 message: Annotated[dict[str, Any], Body()]) -> Response:
    """{to, kind: offer|answer|candidate|state, sdp | candidate | audio+video}: relayed to that joined member only."""
    await video.signal(core, video.Sender(account_id=actor.account_id), {**message, "call_id": call_id})
    return Response(status_code=202)


@router.post("/teleconsultations", status_code=201)
async def book(body: TeleconsultationIn, core: CoreDep, actor: ActorDep) -> dict[str, Any]:
    """{patient: {family_name, given_names, email?, phone?}, at} → ``{id, patient_link, …}``."""
    p = body.patient
    return await video.teleconsult.create(core, actor, family_name=p.family_name, given_names=p.given_names,
                                          email=p.email, phone=p.phone, at=body.at, patient_id=body.patient_id)


@router.get("/teleconsultations")
async def teleconsultations(core: CoreDep, actor: ActorDep) -> dict[str, Any]:
    return {"items": await video.teleconsult.list_mine(core, actor)}


@router.post("/teleconsultations/{teleconsultation_id}/admit")
async def admit(teleconsultation_id: PathId, core: CoreDep, actor: ActorDep) -> dict[str, Any]:
    return await video.teleconsult.admit(core, actor, teleconsultation_id)


# ---- the patient's side --------------------------------------------------------------------------

@router.post("/patient/teleconsultation/{secret}/wait")
async def patient_wait(secret: Secret, request: Request, core: CoreDep) -> dict[str, Any]:
    return await video.teleconsult.wait(core, secret, request.cookies.get(PATIENT_COOKIE))


@router.post("/patient/teleconsultation/{secret}/signal", status_code=202)
async def patient_signal(secret: Secret, request: Request, core: CoreDep,
                         message: Annotated[dict[str, Any], Body()]) -> Response:
    tc_id = await video.teleconsult.patient_of(core, secret, request.cookies.get(PATIENT_COOKIE))
    await video.signal(core, video.Sender(teleconsultation_id=tc_id), message)
    return Response(status_code=202)


@router.websocket("/patient/teleconsultation/{secret}/events")
async def patient_events(websocket: WebSocket, secret: str) -> None:
    """The waiting room's live feed (admitted, signalling) and its signalling messages."""
    core: Core = websocket.app.state.core
    try:
        tc_id = await video.teleconsult.patient_of(core, secret[:200], websocket.cookies.get(PATIENT_COOKIE))
    except ServiceError as exc:
        await websocket.close(code=4404, reason=exc.detail[:120])
        return
    subscription = core.bus.subscribe(video.patient_bus_id(tc_id), limit=4)
    try:
        await websocket.accept()
        await websocket.send_json({"type": "hello"})

        async def pump_out() -> None:
            while True:
                await websocket.send_text(json.dumps(await subscription.get(), ensure_ascii=False))

        async def pump_in() -> None:
            while True:
                text = await websocket.receive_text()
                if text.startswith("{"):
                    await relay(core, video.Sender(teleconsultation_id=tc_id), text, subscription)

        tasks = [asyncio.create_task(pump_out()), asyncio.create_task(pump_in())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, Exception):
                    await t
    finally:
        subscription.close()


async def relay(core: Core, sender: video.Sender, text: str, subscription: Any) -> None:
    """One signalling message read from a live socket; a refusal goes back on the same socket."""
    message: Any = None
    try:
        message = video.as_message(text)
        await video.signal(core, sender, message)
    except ServiceError as exc:
        call_id = message.get("call_id") if isinstance(message, dict) else None
        subscription.offer({"type": "call.error", "call_id": call_id, "status": exc.status, "detail": exc.detail})


def install(app: FastAPI, settings: Settings) -> None:
    app.include_router(router)
