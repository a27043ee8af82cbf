"""The shared record (« dossier partagé »): a timeline of everything linked to a patient —
letters, results, documents, support requests, conversations, tele-expertise reports —
readable only by the patient's care team. Every access is audited, refused ones too.

Each kind of entry comes from a *source*: ``async (session, patient_id) -> [item]``. Other
capabilities plug theirs in with :func:`register_source` (conversations, tele-expertise), so the
timeline grows without this module knowing them. An item is a dict with at least ``kind``,
``id``, ``at`` (ISO), ``title`` and ``summary``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from monsisra.domain.clock import iso
from monsisra.services import attachments, audit, care_team, patients
from monsisra.services.core import Actor, Core
from monsisra.services.errors import Forbidden, NotFound
from monsisra.store.conversations import (
    Conversation,
    ConversationAttachment,
    ConversationMessage,
    ConversationParticipant,
)
from monsisra.store.models import (
    Account,
    Attachment,
    Delivery,
    Mailbox,
    MailboxAccess,
    Message,
    MessageAttachment,
    Patient,
)
from monsisra.store.patients import SupportRequest

RecordSource = Callable[[AsyncSession, int], Awaitable[list[dict[str, Any]]]]
SOURCES: dict[str, RecordSource] = {}
MAX_ITEMS = 500
OUTSIDE_TEAM = ("le dossier partagé n'est ouvert qu'aux acteurs de la prise en charge de ce patient : "
                "déclarez-vous d'abord dans son équipe de soins")

# Message categories as timeline kinds (the rest are « message »).
KIND_OF_CATEGORY = {"letter": "letter", "mssante": "letter", "result": "result", "teleexpertise": "teleexpertise",
                    "support": "support", "patient": "patient_exchange", "conversation": "conversation",
                    "event": "event"}
KIND_LABELS = {"letter": "Courrier", "result": "Résultat", "teleexpertise": "Téléexpertise",
               "support": "Demande d'appui", "support_request": "Demande d'appui",
               "patient_exchange": "Échange patient", "conversation": "Conversation", "event": "Évènement",
               "document": "Document", "message": "Message"}


def register_source(name: str, source: RecordSource) -> None:
    SOURCES[name] = source


async def _messages(s: AsyncSession, patient_id: int) -> list[dict[str, Any]]:
    rows = (await s.execute(
        sa.select(Message.id, Message.subject, Message.preview, Message.category, Message.created_at,
                  Message.sender_address, Message.sender_name, Message.has_attachments, Message.context_type,
                  Message.context_id)
        .where(Message.patient_id == patient_id, Message.is_draft.is_(False))
        .order_by(Message.id.desc()).limit(MAX_ITEMS))).all()
    ids = [r.id for r in rows]
    files: dict[int, list[dict[str, Any]]] = {}
    if ids:
        for mid, a in await s.execute(
                sa.select(MessageAttachment.message_id, Attachment)
                .join(Attachment, Attachment.id == MessageAttachment.attachment_id)
                .where(MessageAttachment.message_id.in_(ids)).order_by(MessageAttachment.position)):
            files.setdefault(mid, []).append({"id": a.id, "filename": a.filename, "content_type": a.content_type,
                                              "size": a.size})
    items: list[dict[str, Any]] = []
    for r in rows:
        kind = KIND_OF_CATEGORY.get(r.category, "message")
        author = {"name": r.sender_name, "address": r.sender_address}
        items.append({"kind": kind, "id": r.id, "at": iso(r.created_at), "title": r.subject or "(sans objet)",
                      "summary": r.preview, "author": author, "category": r.category, "message_id": r.id,
                      "attachments": files.get(r.id, [])})
        for f in files.get(r.id, []):
            items.append({"kind": "document", "id": f["id"], "at": iso(r.created_at), "title": f["filename"],
                          "summary": f"joint à « {r.subject or '(sans objet)'} »", "author": author,
                          "message_id": r.id, "attachment": f})
    return items


async def _support_requests(s: AsyncSession, patient_id: int) -> list[dict[str, Any]]:
    to_box = aliased(Mailbox)
    rows = (await s.execute(
        sa.select(SupportRequest, Mailbox.display_name, Mailbox.address, to_box.display_name.label("to_name"))
        .join(Mailbox, Mailbox.id == SupportRequest.from_mailbox_id)
        .join(to_box, to_box.id == SupportRequest.to_mailbox_id)
        .where(SupportRequest.patient_id == patient_id).order_by(SupportRequest.id.desc()).limit(MAX_ITEMS))).all()
    from monsisra.services.support_requests import STATE_LABELS

    return [{"kind": "support_request", "id": r.id, "at": iso(r.created_at),
             "title": f"Demande d'appui à {to_name}", "summary": r.reason[:200], "state": r.state,
             "state_label": STATE_LABELS.get(r.state, r.state), "urgency": r.urgency,
             "author": {"name": name, "address": address}, "conversation_id": r.conversation_id}
            for r, name, address, to_name in rows]


async def _conversations(s: AsyncSession, patient_id: int) -> list[dict[str, Any]]:
    rows = (await s.execute(
        sa.select(Conversation, Account.civility, Account.first_name, Account.last_name, Account.username)
        .outerjoin(Account, Account.id == Conversation.created_by)
        .where(Conversation.patient_id == patient_id).order_by(Conversation.id.desc()).limit(MAX_ITEMS))).all()
    ids = [c.id for c, *_ in rows]
    last: dict[int, str] = {}
    counts: dict[int, int] = {}
    if ids:
        for cid, n in await s.execute(sa.select(ConversationMessage.conversation_id, sa.func.count())
                                      .where(ConversationMessage.conversation_id.in_(ids))
                                      .group_by(ConversationMessage.conversation_id)):
            counts[cid] = n
        last_ids = [c.last_message_id for c, *_ in rows if c.last_message_id]
        if last_ids:
            for cid, body in await s.execute(sa.select(ConversationMessage.conversation_id, ConversationMessage.body)
                                             .where(ConversationMessage.id.in_(last_ids))):
                last[cid] = body[:200]
    return [{"kind": "conversation", "id": r[0].id, "at": iso(r[0].last_message_at or r[0].created_at),
             "title": r[0].title or "Conversation", "summary": last.get(r[0].id, ""), "state": r[0].state,
             "state_label": "Close" if r[0].state == "closed" else "Ouverte", "messages": counts.get(r[0].id, 0),
             "author": {"name": care_team.person_name(r) if r.username else "", "address": None},
             "conversation_id": r[0].id} for r in rows]


async def _conversation_files(s: AsyncSession, patient_id: int) -> list[dict[str, Any]]:
    """Files and photos posted in the patient's conversations: documents of the record too."""
    ca, cm = ConversationAttachment, ConversationMessage
    rows = (await s.execute(
        sa.select(Attachment, ca.thumbnail_id, cm.id.label("message_id"), cm.created_at, cm.author_name,
                  Mailbox.address, Conversation.id.label("conversation_id"), Conversation.title)
        .join(ca, ca.attachment_id == Attachment.id)
        .join(cm, cm.id == ca.message_id)
        .join(Conversation, Conversation.id == cm.conversation_id)
        .outerjoin(Mailbox, Mailbox.id == cm.mailbox_id)
        .where(Conversation.patient_id == patient_id)
        .order_by(cm.id.desc(), ca.position).limit(MAX_ITEMS))).all()
    return [
        {"kind": "document", "id": a.id, "at": iso(created_at), "title": a.filename,
         "summary": f"publié dans la conversation « {title or 'Conversation'} »",
         "author": {"name": author, "address": address}, "conversation_id": conversation_id,
         "conversation_title": title or "Conversation",
         "attachment": {"id": a.id, "filename": a.filename, "content_type": a.content_type, "size": a.size,
                        "thumbnail_id": thumb}}
        for a, thumb, _mid, created_at, author, address, conversation_id, title in rows]


register_source("messages", _messages)
register_source("conversations", _conversations)
register_source("conversation_files", _conversation_files)
register_source("support_requests", _support_requests)


async def _require_member(core: Core, s: AsyncSession, actor: Actor, patient_id: int, what: str) -> Patient:
    """The patient when the actor is in its care team; 404 when there is no such patient, 403
    (audited, although the request fails) outside the team."""
    patient = await s.get(Patient, patient_id)
    if patient is None:
        raise NotFound("patient introuvable")
    if not await care_team.is_member(s, actor.account_id, patient_id):
        exc = Forbidden(OUTSIDE_TEAM)
        exc.audit.append(audit.entry(actor.account_id, "patient.record.refused", object_type=what,
                                     object_id=patient_id, patient_id=patient_id, client=actor.client))
        raise exc
    return patient


async def _openable(s: AsyncSession, account_id: int, message_ids: list[int]) -> dict[int, int]:
    """message id → a mailbox of the actor where it sits (so that the page can open it there)."""
    if not message_ids:
        return {}
    rows = await s.execute(sa.select(Delivery.message_id, Delivery.mailbox_id)
                           .join(MailboxAccess, MailboxAccess.mailbox_id == Delivery.mailbox_id)
                           .where(MailboxAccess.account_id == account_id, Delivery.deleted.is_(False),
                                  Delivery.message_id.in_(set(message_ids))).order_by(Delivery.id))
    out: dict[int, int] = {}
    for mid, mb in rows:
        out.setdefault(mid, mb)
    return out


async def _participating(s: AsyncSession, account_id: int, conversation_ids: list[int]) -> set[int]:
    """The conversations among these where one of the actor's mailboxes takes (or took) part."""
    if not conversation_ids:
        return set()
    return set(await s.scalars(
        sa.select(ConversationParticipant.conversation_id)
        .join(MailboxAccess, MailboxAccess.mailbox_id == ConversationParticipant.mailbox_id)
        .where(MailboxAccess.account_id == account_id,
               ConversationParticipant.conversation_id.in_(set(conversation_ids)))))


async def record(core: Core, actor: Actor, patient_id: int, *, kind: str | None = None) -> dict[str, Any]:
    """``GET /patients/{id}/record``: the patient and the timeline, newest first."""
    async with core.read() as s:
        patient = await _require_member(core, s, actor, patient_id, "record")
        items: list[dict[str, Any]] = []
        for source in SOURCES.values():
            items += await source(s, patient_id)
        if kind:
            items = [i for i in items if i["kind"] == kind]
        items.sort(key=lambda i: (i["at"] or "", str(i["id"])), reverse=True)
        items = items[:MAX_ITEMS]
        where = await _openable(s, actor.account_id, [i["message_id"] for i in items if i.get("message_id")])
        joined = await _participating(s, actor.account_id, [i["conversation_id"] for i in items
                                                            if i.get("conversation_id")])
        name = await s.scalar(sa.select(Account.username).where(Account.id == actor.account_id))
    for item in items:
        item["label"] = KIND_LABELS.get(item["kind"], item["kind"])
        if item.get("message_id") in where:
            item["mailbox_id"] = where[item["message_id"]]
        if item.get("conversation_id"):
            # A participant opens the chat; another team member reads it from the record (read-only).
            item["participant"] = item["conversation_id"] in joined
        if item["kind"] == "document":
            item["url"] = f"/api/v1/patients/{patient_id}/record/documents/{item['id']}"
    await audit.record_now(core, [audit.entry(actor.account_id, "patient.record.read", object_type="record",
                                              object_id=patient_id, patient_id=patient_id, client=actor.client,
                                              detail={"items": len(items), "username": name})])
    return {"patient": patients.patient_dict(patient), "items": items}


async def document(core: Core, actor: Actor, patient_id: int, attachment_id: str) -> attachments.AttachmentView:
    """A document of the record, for the team: an attachment of a message about the patient, or
    a file (or its thumbnail) posted in one of the patient's conversations."""
    async with core.read() as s:
        await _require_member(core, s, actor, patient_id, "document")
        found = (await s.execute(
            sa.select(Attachment).join(MessageAttachment, MessageAttachment.attachment_id == Attachment.id)
            .join(Message, Message.id == MessageAttachment.message_id)
            .where(Attachment.id == attachment_id, Message.patient_id == patient_id,
                   Message.is_draft.is_(False)).limit(1))).scalar()
        if found is None:
            ca = ConversationAttachment
            posted = (sa.select(sa.literal(1)).select_from(ca)
                      .join(ConversationMessage, ConversationMessage.id == ca.message_id)
                      .join(Conversation, Conversation.id == ConversationMessage.conversation_id)
                      .where(sa.or_(ca.attachment_id == attachment_id, ca.thumbnail_id == attachment_id),
                             Conversation.patient_id == patient_id))
            if await s.scalar(posted.limit(1)):
                found = await s.get(Attachment, attachment_id)
    if found is None:
        raise NotFound("document introuvable dans ce dossier")
    await audit.record_now(core, [audit.entry(actor.account_id, "patient.record.document", object_type="attachment",
                                              object_id=attachment_id, patient_id=patient_id, client=actor.client)])
    return attachments.view(found)
