"""Reading conversations: the list with unread counts, one conversation with its participants,
their read state (« Vu par … ») and its messages, paged from the newest (newest at the bottom)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

import monsisra.services.conversations.access as access
from monsisra.domain.clock import iso
from monsisra.domain.text import preview
from monsisra.services import audit, care_team, patients
from monsisra.services.core import Actor, Core
from monsisra.services.errors import Invalid, NotFound
from monsisra.store.conversations import (
    Conversation,
    ConversationAttachment,
    ConversationMessage,
    ConversationParticipant,
)
from monsisra.store.models import Account, Attachment, Mailbox, MailboxAccess, Patient

PAGE_MAX = 200


def _cursor(value: str | None) -> int | None:
    if not value:
        return None
    try:
        n = int(value)
    except ValueError:
        raise Invalid("curseur invalide") from None
    if not 0 < n < 2**62:
        raise Invalid("curseur invalide")
    return n


async def _mine(s: AsyncSession, actor: Actor, mailbox_id: int | None = None):
    """Participant rows of the mailboxes the actor may use (``mailbox_id``: only that one)."""
    stmt = (sa.select(ConversationParticipant)
            .join(MailboxAccess, MailboxAccess.mailbox_id == ConversationParticipant.mailbox_id)
            .where(MailboxAccess.account_id == actor.account_id))
    if mailbox_id is not None:
        stmt = stmt.where(ConversationParticipant.mailbox_id == mailbox_id)
    return list((await s.execute(stmt)).scalars())


async def _unread(s: AsyncSession, rows: list[ConversationParticipant]) -> dict[int, int]:
    """conversation id → messages not yet read by the actor's mailbox (others' messages only),
    in one grouped query over the index (conversation_id, id)."""
    present = [p.id for p in rows if p.left_at is None]
    if not present:
        return {}
    cp, cm = ConversationParticipant, ConversationMessage
    counted = await s.execute(
        sa.select(cp.conversation_id, cp.id, sa.func.count(cm.id))
        .join(cm, sa.and_(cm.conversation_id == cp.conversation_id,
                          cm.id > sa.func.coalesce(cp.last_read_message_id, 0),
                          sa.or_(cm.mailbox_id.is_(None), cm.mailbox_id != cp.mailbox_id)), isouter=True)
        .where(cp.id.in_(present)).group_by(cp.conversation_id, cp.id))
    out: dict[int, int] = {}
    for conversation_id, _, n in counted:
        out[conversation_id] = min(out.get(conversation_id, n), n)
    return out


async def list_conversations(core: Core, actor: Actor, *, mailbox_id: int | None = None, state: str | None = None,
                             cursor: str | None = None, limit: int = 50) -> dict[str, Any]:
    """The actor's conversations, most recently active first, each with its unread count;
    ``unread_total`` serves the « Conversations » folder badge."""
    offset = _cursor(cursor) or 0
    limit = max(1, min(limit, PAGE_MAX))
    async with core.read() as s:
        mine = await _mine(s, actor, mailbox_id)
        unread = await _unread(s, mine)
        ids = sorted({p.conversation_id for p in mine})
        if not ids:
            return {"items": [], "next_cursor": None, "unread_total": 0}
        stmt = sa.select(Conversation).where(Conversation.id.in_(ids))
        if state is not None:
            stmt = stmt.where(Conversation.state == state)
        activity = sa.func.coalesce(Conversation.last_message_at, Conversation.created_at)
        convs = list((await s.execute(stmt.order_by(activity.desc(), Conversation.id.desc())
                                      .offset(offset).limit(limit + 1))).scalars())
        more = len(convs) > limit
        convs = convs[:limit]
        shown = [c.id for c in convs]
        names: dict[int, list[dict[str, Any]]] = {}
        for cid, address, name, left_at in (await s.execute(
                sa.select(ConversationParticipant.conversation_id, Mailbox.address, Mailbox.display_name,
                          ConversationParticipant.left_at)
                .join(Mailbox, Mailbox.id == ConversationParticipant.mailbox_id)
                .where(ConversationParticipant.conversation_id.in_(shown))
                .order_by(ConversationParticipant.id))).all():
            names.setdefault(cid, []).append({"address": address, "name": name, "left": left_at is not None})
        last_ids = [c.last_message_id for c in convs if c.last_message_id]
        lasts = {m.id: m for m in (await s.execute(sa.select(ConversationMessage).where(
            ConversationMessage.id.in_(last_ids)))).scalars()} if last_ids else {}
        pats = {p.id: p for p in (await s.execute(sa.select(Patient).where(
            Patient.id.in_({c.patient_id for c in convs if c.patient_id})))).scalars()}
        followed = await patients.care_team_flags(s, actor.account_id, list(pats))
    left = {p.conversation_id for p in mine if p.left_at is not None} - {p.conversation_id for p in mine
                                                                        if p.left_at is None}
    items = []
    for c in convs:
        last = lasts.get(c.last_message_id) if c.last_message_id else None
        items.append({
            "id": c.id, "title": c.title, "state": c.state, "created_at": iso(c.created_at),
            "patient": patients.patient_dict(pats[c.patient_id]) | {"care_team_me": followed[c.patient_id]}
            if c.patient_id in pats else None,
            "participants": names.get(c.id, []), "unread": unread.get(c.id, 0), "left": c.id in left,
            "last_message": {"id": last.id, "author": {"name": last.author_name}, "preview": preview(last.body),
                             "created_at": iso(last.created_at)} if last else None,
        })
    return {"items": items, "next_cursor": str(offset + limit) if more else None,
            "unread_total": sum(unread.values())}


async def unread_total(core: Core, actor: Actor) -> int:
    async with core.read() as s:
        return sum((await _unread(s, await _mine(s, actor))).values())


async def _view(s: AsyncSession, actor: Actor, conversation: Conversation, *, before: int | None, limit: int,
                until: Any = None, my_mailbox: int | None = None) -> dict[str, Any]:
    """The conversation as shown: participants with read state, one page of messages (up to
    ``until`` for one who left), the patient with the viewer's care-team mark."""
    conversation_id = conversation.id
    stmt = sa.select(ConversationMessage).where(ConversationMessage.conversation_id == conversation_id)
    if before is not None:
        stmt = stmt.where(ConversationMessage.id < before)
    if until is not None:
        stmt = stmt.where(ConversationMessage.created_at <= until)
    rows = list((await s.execute(stmt.order_by(ConversationMessage.id.desc()).limit(limit + 1))).scalars())
    more = len(rows) > limit
    rows = list(reversed(rows[:limit]))
    atts: dict[int, list[dict[str, Any]]] = {}
    if rows:
        for mid, a, _pos, thumb in (await s.execute(
                sa.select(ConversationAttachment.message_id, Attachment, ConversationAttachment.position,
                          ConversationAttachment.thumbnail_id)
                .join(Attachment, Attachment.id == ConversationAttachment.attachment_id)
                .where(ConversationAttachment.message_id.in_([m.id for m in rows]))
                .order_by(ConversationAttachment.message_id, ConversationAttachment.position))).all():
            atts.setdefault(mid, []).append({"id": a.id, "filename": a.filename, "content_type": a.content_type,
                                             "size": a.size, "thumbnail_id": thumb})
    parts = (await s.execute(
        sa.select(ConversationParticipant, Mailbox.address, Mailbox.display_name, Mailbox.kind,
                  Mailbox.owner_account_id, Account.first_name, Account.last_name, Account.civility)
        .join(Mailbox, Mailbox.id == ConversationParticipant.mailbox_id)
        .join(Account, Account.id == ConversationParticipant.last_read_by, isouter=True)
        .where(ConversationParticipant.conversation_id == conversation_id)
        .order_by(ConversationParticipant.id))).all()
    addresses = {p.mailbox_id: address for p, address, *_ in parts}
    patient = await s.get(Patient, conversation.patient_id) if conversation.patient_id else None
    followed = await patients.care_team_flags(s, actor.account_id, [patient.id]) if patient else {}
    participants = []
    for p, address, name, kind, owner_id, first, last, civ in parts:
        reader = " ".join(x for x in (civ, first, (last or "").upper()) if x) if p.last_read_by else None
        participants.append({
            "address": address, "name": name, "kind": kind, "mailbox_id": p.mailbox_id,
            "joined_at": iso(p.joined_at), "left_at": iso(p.left_at),
            "last_read_message_id": p.last_read_message_id, "last_read_at": iso(p.last_read_at),
            "last_read_by": reader, "owner_account_id": owner_id})
    last_id = conversation.last_message_id
    seen_by = [p["name"] for p in participants if last_id and p["left_at"] is None
               and (p["last_read_message_id"] or 0) >= last_id and p["mailbox_id"] != my_mailbox]
    return {
        "id": conversation.id, "title": conversation.title, "state": conversation.state,
        "created_at": iso(conversation.created_at), "closed_at": iso(conversation.closed_at),
        "patient": patients.patient_dict(patient) | {"care_team_me": followed[patient.id]} if patient else None,
        "patient_id": conversation.patient_id,
        "participants": participants,
        "last_message_id": last_id,
        "seen_by": seen_by,
        "messages": {"items": [{"id": m.id, "body": m.body, "kind": m.kind,
                                "author": {"name": m.author_name, "address": addresses.get(m.mailbox_id),
                                           "mailbox_id": m.mailbox_id},
                                "created_at": iso(m.created_at), "attachments": atts.get(m.id, [])} for m in rows],
                     "next_cursor": str(rows[0].id) if more and rows else None},
    }


async def get(core: Core, actor: Actor, conversation_id: int, *, cursor: str | None = None,
              limit: int = 50) -> dict[str, Any]:
    """One conversation: participants with their read state, and one page of messages, oldest
    first within the page; ``next_cursor`` asks for the earlier ones. 404 to outsiders."""
    before = _cursor(cursor)
    limit = max(1, min(limit, PAGE_MAX))
    async with core.read() as s:
        conversation, me = await access.require(s, actor, conversation_id)
        view = await _view(s, actor, conversation, before=before, limit=limit, until=me.left_at,
                           my_mailbox=me.mailbox_id)
    if conversation.patient_id is not None:
        await audit.record_now(core, [audit.entry(actor.account_id, "patient.conversation.read",
                                                  object_type="conversation", object_id=conversation_id,
                                                  patient_id=conversation.patient_id, mailbox_id=me.mailbox_id,
                                                  client=actor.client)])
    view["me"] = {"mailbox_id": me.mailbox_id, "address": me.address, "active": me.active,
                  "can_write": me.active and conversation.state == "open" and "send" in {str(r) for r in me.rights},
                  "last_read_message_id": me.last_read_message_id, "consultation": False}
    view["read_only"] = not view["me"]["can_write"]
    return view


async def consult(core: Core, actor: Actor, patient_id: int, conversation_id: int, *, cursor: str | None = None,
                  limit: int = 50) -> dict[str, Any]:
    """A conversation about a patient, read from the shared record by a member of the patient's
    care team who does not take part in it: the same view, read-only (no participation, no read
    receipt), every open audited as an access to patient data. Anyone else, and any conversation
    not linked to this patient, gets the same 404 (the refusal is audited)."""
    before = _cursor(cursor)
    limit = max(1, min(limit, PAGE_MAX))
    async with core.read() as s:
        patient = await s.get(Patient, patient_id)
        if patient is None:
            raise NotFound(access.NOT_FOUND)
        if not await care_team.is_member(s, actor.account_id, patient_id):
            exc = NotFound(access.NOT_FOUND)
            exc.audit.append(audit.entry(actor.account_id, "patient.record.refused", object_type="conversation",
                                         object_id=conversation_id, patient_id=patient_id, client=actor.client))
            raise exc
        conversation = await s.get(Conversation, conversation_id)
        if conversation is None or conversation.patient_id != patient_id:
            raise NotFound(access.NOT_FOUND)
        view = await _view(s, actor, conversation, before=before, limit=limit)
    await audit.record_now(core, [audit.entry(actor.account_id, "patient.conversation.consult",
                                              object_type="conversation", object_id=conversation_id,
                                              patient_id=patient_id, client=actor.client,
                                              detail={"via": "record"})])
    view["me"] = {"mailbox_id": None, "address": None, "active": False, "can_write": False,
                  "last_read_message_id": None, "consultation": True}
    view["read_only"] = True
    return view
