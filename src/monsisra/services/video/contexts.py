"""The contexts calls are started in today: conversations and teleconsultations, with how each
records a call (a system message in the conversation; the patient record reads ``calls``)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from monsisra.domain.clock import as_utc, iso
from monsisra.services import accounts, patient_record
from monsisra.services.conversations import access
from monsisra.services.conversations.writing import _emit_message, _insert_message
from monsisra.services.core import Actor, Tx
from monsisra.services.errors import NotFound
from monsisra.services.video.calls import NOT_FOUND, Invitation, _duration, register_context
from monsisra.store.conversations import Conversation
from monsisra.store.models import Account
from monsisra.store.video import Call, CallMember, Teleconsultation


async def _conversation(s: AsyncSession, actor: Actor, conversation_id: int) -> Invitation:
    conversation, me = await access.require(s, actor, conversation_id)
    if not me.active:
        raise NotFound(access.NOT_FOUND)
    name = await access.author(s, actor, me.mailbox_id, "owner")
    accounts_, boxes = await access.audience(s, conversation_id)
    return Invitation(title=conversation.title or "Conversation", name=name, accounts=accounts_, mailbox_ids=boxes,
                      patient_id=conversation.patient_id)


async def _record_in_conversation(tx: Tx, call: Call, what: str, text: str) -> None:
    conversation = await tx.session.get(Conversation, call.context_id)
    if conversation is None:
        return
    author = await tx.session.get(Account, call.started_by) if call.started_by else None
    view = await _insert_message(tx, conversation, None, None, None,
                                 accounts.display_name(author) if author else "MonSisra", text, kind="system")
    await _emit_message(tx, conversation, view)


async def _teleconsultation(s: AsyncSession, actor: Actor, teleconsultation_id: int) -> Invitation:
    tc = await s.get(Teleconsultation, teleconsultation_id)
    if tc is None or tc.created_by != actor.account_id:
        raise NotFound(NOT_FOUND)
    me = await s.get(Account, actor.account_id)
    return Invitation(title=f"Téléconsultation — {tc.given_names} {tc.family_name.upper()}",
                      name=accounts.display_name(me) if me else actor.username, accounts=[actor.account_id],
                      patient_id=tc.patient_id)


async def _calls_on_record(s: AsyncSession, patient_id: int) -> list[dict[str, Any]]:
    calls = (await s.scalars(sa.select(Call).where(Call.patient_id == patient_id).order_by(Call.id.desc())
                             .limit(patient_record.MAX_ITEMS))).all()
    names: dict[int, list[str]] = {}
    if calls:
        for call_id, name in await s.execute(
                sa.select(CallMember.call_id, CallMember.name)
                .where(CallMember.call_id.in_([c.id for c in calls]), CallMember.joined_at.is_not(None))):
            names.setdefault(call_id, []).append(name)
    items = []
    for c in calls:
        label = "Téléconsultation" if c.context == "teleconsultation" else "Visio"
        if c.ended_at:
            summary = f"Durée {_duration((as_utc(c.ended_at) - as_utc(c.started_at)).total_seconds())}"
        else:
            summary = "En cours"
        if names.get(c.id):
            summary += " — participants : " + ", ".join(names[c.id])
        items.append({"kind": "call", "id": c.id, "at": iso(c.started_at), "title": f"{label} : {c.title}",
                      "summary": summary, "participants": names.get(c.id, []),
                      "ended_at": iso(c.ended_at) if c.ended_at else None,
                      "conversation_id": c.context_id if c.context == "conversation" else None})
    return items


register_context("conversation", _conversation, _record_in_conversation)
register_context("teleconsultation", _teleconsultation)
patient_record.register_source("calls", _calls_on_record)
patient_record.KIND_LABELS.setdefault("call", "Visio")
