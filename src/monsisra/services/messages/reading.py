"""Reading a mailbox: views and categories, newest first with cursor paging, full-text search
scoped to the mailbox, one whole message (reading marks it read and records the receipt), threads.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from monsisra.domain.clock import as_utc, iso
from monsisra.domain.delegation import Right
from monsisra.domain.ins import is_valid_ins, validate_ins
from monsisra.domain.model import Access, Category, Role, View
from monsisra.domain.text import (
    search_terms,
)
from monsisra.services import audit, authorship, mailboxes, patients
from monsisra.services.core import Actor, Core
from monsisra.services.errors import Invalid, NotFound
from monsisra.services.messages.placement import MAILBOX_TOKEN
from monsisra.services.messages.search import search_rows, search_settings, setting_columns, settings_made
from monsisra.services.messages.states import set_read
from monsisra.store.models import (
    TRASH_VIEW,
    VIEW_SQL,
    Account,
    Attachment,
    Delivery,
    Message,
    MessageAttachment,
    Patient,
    Recipient,
)

PAGE_MAX = 200


def _encode_cursor(delivery_id: int) -> str:
    return base64.urlsafe_b64encode(f"d{delivery_id}".encode()).decode().rstrip("=")


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


_MICROSECOND = timedelta(microseconds=1)


def _encode_trash_cursor(deleted_at: datetime | None, delivery_id: int) -> str:
    # Whole microseconds (no float): a row deleted in the same microsecond must not be skipped.
    micros = (as_utc(deleted_at) - _EPOCH) // _MICROSECOND if deleted_at else 0
    return base64.urlsafe_b64encode(f"t{micros}.{delivery_id}".encode()).decode().rstrip("=")


def _decode_trash_cursor(cursor: str) -> tuple[datetime, int]:
    """(deleted_at, delivery id) of the last row of the previous page of the bin."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        micros, _, delivery_id = raw[1:].partition(".")
        if not raw.startswith("t") or len(raw) > 40:
            raise ValueError
        return _EPOCH + int(micros) * _MICROSECOND, int(delivery_id)
    except (ValueError, UnicodeDecodeError, OverflowError, OSError):
        raise Invalid("curseur de pagination invalide") from None


MAX_CURSOR = 2**63 - 1  # a cursor is compared with BIGINT ids: anything wider overflows the engine


def _decode_cursor(cursor: str) -> int:
    try:
        if len(cursor) > 40:
            raise ValueError
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if not raw.startswith("d") or not raw[1:].isdigit():
            raise ValueError
        value = int(raw[1:])
        if value > MAX_CURSOR:
            raise ValueError
        return value
    except (ValueError, UnicodeDecodeError):
        raise Invalid("curseur de pagination invalide") from None


_LIST_COLUMNS = (
    Delivery.id.label("delivery_id"), Delivery.read, Delivery.favorite, Delivery.todo, Delivery.archived,
    Delivery.role, Message.id, Message.subject, Message.preview, Message.sender_address, Message.sender_name,
    Message.category, Message.created_at, Message.has_attachments, Message.thread_id, Message.in_reply_to_id,
    Message.patient_id, Message.is_draft, Message.context_type, Message.context_id, Message.no_reply,
    Delivery.deleted, Delivery.deleted_at,
)


def _in_mailbox(s: AsyncSession, mailbox_id: int, by_deletion: bool) -> Any:
    """The mailbox condition of a view's page, read newest first through the view's partial
    (mailbox_id, id) index. On PostgreSQL as ``= ANY(ARRAY[id])`` with the page ordered by
    (mailbox_id, id): a plain ``=`` makes mailbox_id a constant, the primary key then gives the
    same order, and the planner walks it backwards whenever it believes the view's rows evenly
    spread over time — the archived view (old rows) then filtered 119,562 rows for a page
    (28 ms at 400k messages, growing with the store). The array keeps the order on mailbox_id,
    which only the view's index gives."""
    if s.bind.dialect.name == "postgresql" and not by_deletion:
        return Delivery.mailbox_id == sa.any_(sa.literal([mailbox_id], sa.ARRAY(sa.Integer)))
    return Delivery.mailbox_id == mailbox_id


async def list_messages(core: Core, actor: Actor, mailbox_id: int, *, view: str = View.INBOX,
                        category: str | None = None, q: str | None = None, cursor: str | None = None,
                        limit: int = 50) -> dict[str, Any]:
    """One page of a mailbox view, newest first, with ``next_cursor`` for the following page."""
    if view not in VIEW_SQL:
        raise Invalid(f"vue inconnue : {view}")
    if category and category not in {c.value for c in Category}:
        raise Invalid(f"catégorie inconnue : {category}")
    limit = max(1, min(limit, PAGE_MAX))
    if q and is_valid_ins(q):
        q = validate_ins(q)  # an INS typed as printed on the card (« 1 80 01 … ») is one word
    terms = [t for t in search_terms(q) if not t.startswith(MAILBOX_TOKEN)] if q else []
    if q and not terms:
        return {"items": [], "next_cursor": None}
    async with core.read() as s:
        # A search's transaction settings (PostgreSQL: custom plans, …) go with the access check,
        # in its statement: no round trip of their own (``search.search_settings``).
        settings = await search_settings(s, terms) if terms else {}
        await mailboxes.access_of(s, actor, mailbox_id, setting_columns(settings))
        settings_made(s, settings)
        by_deletion = view == TRASH_VIEW and not terms
        conditions: list[Any] = [sa.text(_qualified(VIEW_SQL[view]))]
        if category:
            conditions.append(Delivery.category == category)
        elif view == View.INBOX:
            prefs = await s.scalar(sa.select(Account.inbox_categories).where(Account.id == actor.account_id))
            if prefs is not None and set(prefs) != {c.value for c in Category}:
                conditions.append(Delivery.category.in_(prefs))
        if terms:
            rows = await search_rows(s, _LIST_COLUMNS, mailbox_id, terms, conditions,
                                            _decode_cursor(cursor) if cursor else None, limit + 1)
        else:
            stmt = (sa.select(*_LIST_COLUMNS).select_from(Delivery).join(Message, Message.id == Delivery.message_id)
                    .where(_in_mailbox(s, mailbox_id, by_deletion), *conditions))
            if by_deletion:
                # The bin reads newest-deleted first (ix_deliveries_view_trash), paged on (deleted_at, id).
                if cursor:
                    at, after = _decode_trash_cursor(cursor)
                    stmt = stmt.where(sa.or_(Delivery.deleted_at < at,
                                             sa.and_(Delivery.deleted_at == at, Delivery.id < after)))
                stmt = stmt.order_by(Delivery.deleted_at.desc(), Delivery.id.desc())
            else:
                if cursor:
                    # Typed BIGINT: a cursor beyond the INTEGER ids must not overflow PostgreSQL's int4.
                    stmt = stmt.where(Delivery.id < sa.literal(_decode_cursor(cursor), sa.BigInteger))
                pg = s.bind.dialect.name == "postgresql"
                stmt = stmt.order_by(*([Delivery.mailbox_id.desc()] if pg else []), Delivery.id.desc())
            rows = (await s.execute(stmt.limit(limit + 1))).all()
        more = len(rows) > limit
        rows = rows[:limit]
        items = await _summaries(s, rows)
    if not (more and rows):
        return {"items": items, "next_cursor": None}
    if by_deletion:
        return {"items": items, "next_cursor": _encode_trash_cursor(rows[-1].deleted_at, rows[-1].delivery_id)}
    return {"items": items, "next_cursor": _encode_cursor(rows[-1].id if terms else rows[-1].delivery_id)}


def _qualified(cond: str) -> str:
    # The view conditions name bare columns; qualify them since the query joins messages.
    out = cond
    for col in ("role", "archived", "deleted", "read", "favorite", "todo"):
        out = out.replace(f"{col} =", f"deliveries.{col} =")
    return out


async def _summaries(s: AsyncSession, rows) -> list[dict[str, Any]]:
    ids = [r.id for r in rows]
    recips = await _recipients_of(s, ids)
    atts = await _attachments_of(s, ids)
    patients = await _patients_of(s, [r.patient_id for r in rows if r.patient_id])
    return [_summary(r, recips.get(r.id, []), atts.get(r.id, []), patients.get(r.patient_id)) for r in rows]


def _summary(r, recips, atts, patient) -> dict[str, Any]:
    return {
        "id": r.id,
        "subject": r.subject,
        "preview": r.preview,
        "sender": {"address": r.sender_address, "name": r.sender_name},
        "to": [x for x in recips if x["kind"] == "to"],
        "cc": [x for x in recips if x["kind"] == "cc"],
        "category": r.category,
        "created_at": iso(r.created_at),
        "has_attachments": r.has_attachments,
        "attachments": atts,
        "patient": patient,
        "thread": {"id": r.thread_id, "in_reply_to": r.in_reply_to_id},
        "context": {"type": r.context_type, "id": r.context_id} if r.context_type else None,
        "draft": r.is_draft,
        "no_reply": r.no_reply,
        "state": {"read": r.read, "favorite": r.favorite, "todo": r.todo, "archived": r.archived, "role": r.role,
                  "deleted": r.deleted, "deleted_at": iso(r.deleted_at)},
    }


async def _recipients_of(s: AsyncSession, message_ids: list[int]) -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = {}
    if not message_ids:
        return out
    rows = await s.execute(sa.select(Recipient.message_id, Recipient.kind, Recipient.address,
                                     Recipient.display_name, Recipient.status)
                           .where(Recipient.message_id.in_(message_ids)).order_by(Recipient.id))
    for mid, kind, address, name, status in rows:
        out.setdefault(mid, []).append({"kind": kind, "address": address, "name": name, "status": status})
    return out


async def _attachments_of(s: AsyncSession, message_ids: list[int]) -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = {}
    if not message_ids:
        return out
    rows = await s.execute(
        sa.select(MessageAttachment.message_id, Attachment)
        .join(Attachment, Attachment.id == MessageAttachment.attachment_id)
        .where(MessageAttachment.message_id.in_(message_ids)).order_by(MessageAttachment.position)
    )
    for mid, a in rows:
        out.setdefault(mid, []).append({"id": a.id, "filename": a.filename, "content_type": a.content_type,
                                        "size": a.size})
    return out


async def _patients_of(s: AsyncSession, patient_ids: list[int]) -> dict[int, dict[str, Any]]:
    if not patient_ids:
        return {}
    rows = await s.scalars(sa.select(Patient).where(Patient.id.in_(set(patient_ids))))
    return {p.id: patients.patient_dict(p) for p in rows}



async def get(core: Core, actor: Actor, mailbox_id: int, message_id: int, *, mark_read: bool = True,
              include_deleted: bool = False, prefer_deleted: bool = False) -> dict[str, Any]:
    """The whole message as this mailbox sees it; reading marks it read and records the receipt.

    ``include_deleted``: also a message in the bin (shown so that it can be restored; never
    marked read there); ``prefer_deleted``: the copy in the bin first (a message sent to oneself
    has two copies in the mailbox: the one opened from « Corbeille » is the one in the bin)."""
    async with core.read() as s:
        access, rights = await mailboxes.rights_of(s, actor, mailbox_id)
        stmt = (sa.select(*_LIST_COLUMNS, Message.body, Message.html, Message.message_id.label("rfc_id"),
                          Message.headers, Message.receipt_requested)
                .select_from(Delivery).join(Message, Message.id == Delivery.message_id)
                .where(Delivery.mailbox_id == mailbox_id, Delivery.message_id == message_id))
        if not include_deleted:
            stmt = stmt.where(Delivery.deleted.is_(False))
        first = Delivery.deleted.desc() if prefer_deleted else Delivery.deleted
        row = (await s.execute(stmt.order_by(first, Delivery.id.desc()).limit(1))).first()
        if row is None:
            raise NotFound("message introuvable")
        item = (await _summaries(s, [row]))[0]
    item.update(body=row.body, html=row.html, message_id=row.rfc_id, receipt_requested=row.receipt_requested,
                on_behalf_of=(row.headers or {}).get("on_behalf_of"), author=(row.headers or {}).get("author"),
                read_by=await _read_by(core, actor, row.delivery_id))
    # Every read is on the record (with the patient when the message names one); reading marks
    # the message read only for those who may manage its flags (not a read-only delegate).
    read_entry = audit.entry(actor.account_id, "patient.read" if row.patient_id else "message.read",
                             object_type="message", object_id=message_id, patient_id=row.patient_id,
                             mailbox_id=mailbox_id, client=actor.client,
                             detail=None if access == Access.OWNER else {"access": access})
    if mark_read and not row.deleted and Right.FLAGS in rights and row.role == Role.IN and not row.read:
        await set_read(core, actor, row.delivery_id, [read_entry])
        item["state"]["read"] = True
    else:
        await audit.record_now(core, [read_entry])
    if row.receipt_requested and row.role == Role.IN:
        from monsisra.services import mdn  # the gateway's read receipts (RFC 8098)

        # mdn_pending: the sender asked for a receipt at another address; the user decides.
        item["mdn"] = await mdn.status(core, actor, mailbox_id, message_id)
    return item


async def _read_by(core: Core, actor: Actor, delivery_id: int) -> dict[str, Any] | None:
    """Who first read this copy, when it was someone else than the viewer (a colleague of a
    service mailbox, a delegate): the owner sees « lu par Sophie BLANC à 10:42 »."""
    async with core.read() as s:
        row = (await s.execute(sa.select(Delivery.first_read_by, Delivery.first_read_at)
                               .where(Delivery.id == delivery_id))).first()
        if row is None or row.first_read_by in (None, actor.account_id):
            return None
        return {"name": await authorship.reader_name(s, row.first_read_by), "at": iso(row.first_read_at)}


async def thread(core: Core, actor: Actor, mailbox_id: int, thread_id: int) -> list[dict[str, Any]]:
    """All messages of a thread present in this mailbox, oldest first."""
    async with core.read() as s:
        await mailboxes.access_of(s, actor, mailbox_id)
        # Thread ids first (ix_messages_thread_id), then their deliveries by (mailbox, message):
        # one join lets SQLite without statistics walk the whole mailbox instead (200 ms at 50k).
        ids = list(await s.scalars(sa.select(Message.id).where(Message.thread_id == thread_id).limit(1000)))
        if not ids:
            return []
        rows = (await s.execute(
            sa.select(*_LIST_COLUMNS).select_from(Delivery).join(Message, Message.id == Delivery.message_id)
            .where(Delivery.mailbox_id == mailbox_id, Delivery.message_id.in_(ids), Delivery.deleted.is_(False))
            .order_by(Delivery.id)
        )).all()
        return await _summaries(s, rows)


async def access_kind(core: Core, actor: Actor, mailbox_id: int) -> str:
    async with core.read() as s:
        return await mailboxes.access_of(s, actor, mailbox_id)
