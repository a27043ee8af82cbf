"""Calls: start one in a context, join, decline, leave, end, and relay the WebRTC signalling
(offer, answer, ICE candidates) between the call's joined members only.

A *context* says who is invited and where the call is recorded: a conversation (its present
participants), a teleconsultation (its professional; the patient comes through the waiting room),
and whatever registers later with :func:`register_context` (tele-expertise). Anyone the context
does not invite gets 404, as for the context itself. Media never goes through the server.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

import monsisra.services.video.turn as turn
from monsisra.domain.clock import as_utc, iso, utcnow
from monsisra.events import Event
from monsisra.services import audit
from monsisra.services.core import Actor, Core, Tx
from monsisra.services.errors import Conflict, Invalid, NotFound
from monsisra.store.video import Call, CallMember

NOT_FOUND = "visio introuvable"
MAX_MEMBERS = 6
MAX_SDP = 64_000
SIGNAL_KINDS = ("offer", "answer", "candidate", "state")  # state: my microphone / camera on or off


@dataclass
class Invitation:
    """What a context says about an actor and a call in it."""

    title: str
    name: str  # the actor as the others see them
    accounts: list[int]  # who is invited (rung)
    mailbox_ids: list[int] = field(default_factory=list)  # the sockets' mailbox filter, if any
    patient_id: int | None = None
    ended: str | None = None  # why no new call may start here (a closed request…); joining stays open


# (session, actor, context_id) -> Invitation, or NotFound for anyone not invited.
Resolver = Callable[[AsyncSession, Actor, int], Awaitable[Invitation]]
# (tx, call, "start" | "end", text) -> record the call in the context (a system message…).
Recorder = Callable[[Tx, Call, str, str], Awaitable[None]]
CONTEXTS: dict[str, tuple[Resolver, Recorder | None]] = {}


def register_context(name: str, resolver: Resolver, recorder: Recorder | None = None) -> None:
    """Let calls be started in another kind of context (tele-expertise…)."""
    CONTEXTS[name] = (resolver, recorder)


def patient_bus_id(teleconsultation_id: int) -> int:
    """The bus address of a teleconsultation's patient (no account: a negative number)."""
    return -teleconsultation_id


async def _invitation(s: AsyncSession, actor: Actor, context: str, context_id: int) -> Invitation:
    entry = CONTEXTS.get(context)
    if entry is None:
        raise NotFound(NOT_FOUND)
    return await entry[0](s, actor, context_id)


async def _invited(s: AsyncSession, actor: Actor, call: Call) -> Invitation:
    """The actor's invitation to this call; anyone else gets the same 404 whatever the call's
    context (the message does not tell a tele-expertise's call from a conversation's)."""
    try:
        return await _invitation(s, actor, call.context, call.context_id)
    except NotFound:
        raise NotFound(NOT_FOUND) from None


async def _record(tx: Tx, call: Call, what: str, text: str) -> None:
    entry = CONTEXTS.get(call.context)
    if entry and entry[1]:
        await entry[1](tx, call, what, text)


def _bus_id(member: CallMember, call: Call) -> int | None:
    if member.is_patient:
        return patient_bus_id(call.context_id) if call.context == "teleconsultation" else None
    return member.account_id


async def _members(s: AsyncSession, call_id: int) -> list[CallMember]:
    return list((await s.scalars(sa.select(CallMember).where(CallMember.call_id == call_id)
                                 .order_by(CallMember.id))).all())


def _joined(members: list[CallMember]) -> list[CallMember]:
    return [m for m in members if m.joined_at is not None and m.left_at is None]


def _view(m: CallMember) -> dict[str, Any]:
    return {"peer": m.peer, "name": m.name, "patient": m.is_patient,
            "joined": m.joined_at is not None and m.left_at is None}


async def _open_call(s: AsyncSession, call_id: int, *, lock: bool = False) -> Call:
    stmt = sa.select(Call).where(Call.id == call_id)
    if lock and s.bind.dialect.name != "sqlite":
        stmt = stmt.with_for_update()
    call = await s.scalar(stmt)
    if call is None:
        raise NotFound(NOT_FOUND)
    return call


async def start_call(core: Core, actor: Actor, context: str, context_id: int) -> dict[str, Any]:
    """Start a call in a context (or give back the one still going there) and ring every invited
    account's live pages: ``{id, ice_servers, …}``. Tele-expertise calls this with its own context."""
    async with core.write() as tx:
        s = tx.session
        inv = await _invitation(s, actor, context, context_id)
        call = await s.scalar(sa.select(Call).where(Call.context == context, Call.context_id == context_id,
                                                    Call.ended_at.is_(None)))
        if call is None:
            if inv.ended:
                raise Conflict(inv.ended)
            call = Call(context=context, context_id=context_id, patient_id=inv.patient_id, title=inv.title[:200],
                        started_by=actor.account_id, started_at=utcnow())
            s.add(call)
            await s.flush()
            await _record(tx, call, "start", f"{inv.name} a lancé une visio.")
            audit.record(s, actor.account_id, "call.start", object_type="call", object_id=call.id,
                         patient_id=inv.patient_id, client=actor.client,
                         detail={"context": context, "context_id": context_id})
        others = [a for a in inv.accounts if a != actor.account_id]
        tx.emit("call.ring", others, call_id=call.id, context=context, context_id=context_id, title=call.title,
                caller=inv.name, mailbox_ids=inv.mailbox_ids or None)
        call_id = call.id
    return {"id": call_id, "context": context, "context_id": context_id,
            "ice_servers": turn.ice_servers(core.settings, call_id), "url": f"/visio/{call_id}"}


async def get_call(core: Core, actor: Actor, call_id: int) -> dict[str, Any]:
    async with core.read() as s:
        call = await _open_call(s, call_id)
        inv = await _invited(s, actor, call)
        members = await _members(s, call_id)
    return {"id": call.id, "context": call.context, "context_id": call.context_id, "title": call.title or inv.title,
            "started_at": iso(call.started_at), "ended_at": iso(call.ended_at) if call.ended_at else None,
            "members": [_view(m) for m in members]}


async def join(core: Core, actor: Actor, call_id: int) -> dict[str, Any]:
    """Join (again): a new signalling address ``peer``; the newcomer offers to every ``members`` entry."""
    async with core.write() as tx:
        s = tx.session
        call = await _open_call(s, call_id, lock=True)
        inv = await _invited(s, actor, call)
        if call.ended_at is not None:
            raise Conflict("cette visio est terminée")
        members = await _members(s, call_id)
        mine = next((m for m in members if m.account_id == actor.account_id), None)
        joined = [m for m in _joined(members) if m is not mine]
        if len(joined) >= MAX_MEMBERS:
            raise Conflict(f"visio complète ({MAX_MEMBERS} personnes au plus)")
        now = utcnow()
        if mine is None:
            mine = CallMember(call_id=call_id, account_id=actor.account_id, name=inv.name[:300], peer="")
            s.add(mine)
        mine.peer, mine.joined_at, mine.left_at, mine.declined_at = secrets.token_urlsafe(24), now, None, None
        await s.flush()
        audit.record(s, actor.account_id, "call.join", object_type="call", object_id=call_id,
                     patient_id=call.patient_id, client=actor.client)
        for m in joined:
            bus = _bus_id(m, call)
            if bus is not None:
                tx.emit("call.joined", [bus], call_id=call_id, peer=mine.peer, name=mine.name)
        result = {"id": call_id, "peer": mine.peer, "title": call.title, "context": call.context,
                  "context_id": call.context_id, "members": [_view(m) for m in joined],
                  "ice_servers": turn.ice_servers(core.settings, call_id)}
    return result


async def decline(core: Core, actor: Actor, call_id: int) -> None:
    async with core.write() as tx:
        s = tx.session
        call = await _open_call(s, call_id)
        inv = await _invited(s, actor, call)
        members = await _members(s, call_id)
        mine = next((m for m in members if m.account_id == actor.account_id), None)
        if mine is None:
            mine = CallMember(call_id=call_id, account_id=actor.account_id, name=inv.name[:300],
                              peer=secrets.token_urlsafe(24))
            s.add(mine)
        mine.declined_at = utcnow()
        audit.record(s, actor.account_id, "call.decline", object_type="call", object_id=call_id, client=actor.client)
        _tell(tx, call, _joined(members), "call.declined", name=inv.name)
        tx.emit("call.stop_ringing", [actor.account_id], call_id=call_id)


def _tell(tx: Tx, call: Call, members: list[CallMember], type_: str, **data: Any) -> None:
    ids = [b for b in (_bus_id(m, call) for m in members) if b is not None]
    tx.emit(type_, ids, call_id=call.id, **data)


async def leave(core: Core, actor: Actor, call_id: int) -> dict[str, Any]:
    """Leave; the last one out ends the call."""
    async with core.write() as tx:
        s = tx.session
        call = await _open_call(s, call_id, lock=True)
        await _invited(s, actor, call)
        members = await _members(s, call_id)
        mine = next((m for m in members if m.account_id == actor.account_id), None)
        if mine is not None and mine.joined_at is not None and mine.left_at is None:
            mine.left_at = utcnow()
            _tell(tx, call, _joined(members), "call.left", peer=mine.peer, name=mine.name)
        still = [m for m in _joined(members) if not m.is_patient]
        if call.ended_at is None and not still:
            await _end(tx, call, members, actor.account_id)
        return {"id": call_id, "ended": call.ended_at is not None}


async def end(core: Core, actor: Actor, call_id: int) -> dict[str, Any]:
    """End the call for everyone (any invited professional may)."""
    async with core.write() as tx:
        s = tx.session
        call = await _open_call(s, call_id, lock=True)
        await _invited(s, actor, call)
        if call.ended_at is None:
            await _end(tx, call, await _members(s, call_id), actor.account_id)
        return {"id": call_id, "ended": True}


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    minutes, sec = divmod(seconds, 60)
    return f"{minutes} min {sec:02d} s" if minutes else f"{sec} s"


async def _end(tx: Tx, call: Call, members: list[CallMember], by: int | None) -> None:
    s = tx.session
    now = utcnow()
    audience = _joined(members)
    for m in members:
        if m.joined_at is not None and m.left_at is None:
            m.left_at = now
    call.ended_at, call.ended_by = now, by
    names = [m.name for m in members if m.joined_at is not None]
    seconds = (now - as_utc(call.started_at)).total_seconds()
    text = (f"Visio terminée — durée {_duration(seconds)}"
            + (f" — participants : {', '.join(names)}." if names else " — personne n'a rejoint."))
    await _record(tx, call, "end", text)
    audit.record(s, by, "call.end", object_type="call", object_id=call.id, patient_id=call.patient_id,
                 detail={"seconds": int(seconds), "participants": names})
    _tell(tx, call, audience, "call.ended")
    invited = {m.account_id for m in members if m.account_id is not None}
    tx.emit("call.stop_ringing", invited | ({call.started_by} if call.started_by else set()), call_id=call.id)
    await ended_hooks(tx, call)


ENDED_HOOKS: list[Callable[[Tx, Call], Awaitable[None]]] = []


async def ended_hooks(tx: Tx, call: Call) -> None:
    for hook in ENDED_HOOKS:
        await hook(tx, call)


# ---- signalling --------------------------------------------------------------------------------

_SDP_LINE = re.compile(r"^[a-z]=[\x20-\x7e\t]*$")


def _check_sdp(sdp: Any) -> str:
    if not isinstance(sdp, str) or not sdp or len(sdp) > MAX_SDP:
        raise Invalid("description de session (SDP) invalide")
    lines = sdp.replace("\r\n", "\n").rstrip("\n").split("\n")
    if lines[0] != "v=0" or not any(line.startswith("m=") for line in lines) or \
            not all(_SDP_LINE.match(line) for line in lines):
        raise Invalid("description de session (SDP) invalide")
    return sdp


def _check_candidate(raw: Any) -> dict[str, Any] | None:
    if raw is None:
        return None  # end of candidates
    if not isinstance(raw, dict):
        raise Invalid("candidat ICE invalide")
    cand = raw.get("candidate", "")
    mid = raw.get("sdpMid")
    index = raw.get("sdpMLineIndex")
    if not isinstance(cand, str) or len(cand) > 1000 or (cand and not cand.startswith("candidate:")) or \
            any(c in cand for c in "\r\n"):
        raise Invalid("candidat ICE invalide")
    if mid is not None and (not isinstance(mid, str) or len(mid) > 64):
        raise Invalid("candidat ICE invalide")
    if index is not None and (not isinstance(index, int) or isinstance(index, bool) or not 0 <= index <= 64):
        raise Invalid("candidat ICE invalide")
    return {"candidate": cand, "sdpMid": mid, "sdpMLineIndex": index}


@dataclass(frozen=True)
class Sender:
    """Who signals: an account, or the patient of a teleconsultation."""

    account_id: int | None = None
    teleconsultation_id: int | None = None


def check_signal(message: Any) -> tuple[int, str, str, dict[str, Any]]:
    """(call_id, to, kind, payload) of a well-formed signalling message, or Invalid."""
    if not isinstance(message, dict):
        raise Invalid("message de signalisation invalide")
    call_id, to, kind = message.get("call_id"), message.get("to"), message.get("kind")
    if not isinstance(call_id, int) or isinstance(call_id, bool) or not 1 <= call_id <= 2**31 - 1:
        raise Invalid("visio non précisée")
    if not isinstance(to, str) or not 1 <= len(to) <= 40:
        raise Invalid("destinataire non précisé")
    if kind not in SIGNAL_KINDS:
        raise Invalid("type de message de signalisation inconnu (offer, answer, candidate ou state)")
    if kind == "candidate":
        payload: dict[str, Any] = {"candidate": _check_candidate(message.get("candidate"))}
    elif kind == "state":
        audio, video = message.get("audio"), message.get("video")
        if not isinstance(audio, bool) or not isinstance(video, bool):
            raise Invalid("état du micro et de la caméra invalide (audio et video : vrai ou faux)")
        payload = {"audio": audio, "video": video}
    else:
        payload = {"sdp": _check_sdp(message.get("sdp"))}
    return call_id, to, kind, payload


async def signal(core: Core, sender: Sender, message: Any) -> None:
    """Relay one offer/answer/candidate to another joined member of the same call; refused when
    the sender or the addressee is not in that call now, or the message is malformed."""
    call_id, to, kind, payload = check_signal(message)
    async with core.read() as s:
        call = await s.get(Call, call_id)
        if call is None or call.ended_at is not None:
            raise NotFound(NOT_FOUND)
        joined = _joined(await _members(s, call_id))
    if sender.teleconsultation_id is not None:
        mine = next((m for m in joined if m.is_patient and call.context == "teleconsultation"
                     and call.context_id == sender.teleconsultation_id), None)
    else:
        mine = next((m for m in joined if m.account_id == sender.account_id), None)
    if mine is None:
        raise NotFound(NOT_FOUND)
    target = next((m for m in joined if m.peer == to), None)
    if target is None or target is mine:
        raise NotFound("ce destinataire n'est pas dans cette visio")
    bus = _bus_id(target, call)
    if bus is None:
        raise NotFound("ce destinataire n'est pas dans cette visio")
    await core.bus.publish([Event("call.signal", [bus], {"call_id": call_id, "from": mine.peer, "to": to,
                                                         "kind": kind, **payload})])


def as_message(text: str) -> Any:
    import json

    try:
        return json.loads(text)
    except ValueError:
        raise Invalid("message de signalisation illisible") from None
