"""Messages: send (local and external recipients), drafts, replies, lists, reading, flags,
counts, search and receipts.

Each public function validates first, writes in one transaction, and emits its events
only after commit. Per-mailbox state lives in ``deliveries`` (one row per mailbox × message).
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from monsisra.domain.addresses import PATIENT_DOMAIN, domain_of, normalize_address
from monsisra.domain.clock import as_utc, utcnow
from monsisra.domain.html import sanitize_html
from monsisra.domain.ins import KNOWN_OIDS, InvalidINS, PatientIdentity, is_valid_ins, validate_ins
from monsisra.domain.model import Access, Category, Role, View
from monsisra.domain.text import (
    TextRefused,
    check_line,
    clean_multiline,
    decoded_words,
    fold,
    is_one_line,
    preview,
    search_terms,
)
from monsisra.services import attachments as att_service
from monsisra.services import audit, mailboxes, trust
from monsisra.services.core import Actor, Core, Tx
from monsisra.services.errors import Invalid, NotFound, TooLarge
from monsisra.store.models import (
    TRASH_VIEW,
    VIEW_SQL,
    Account,
    Attachment,
    Delivery,
    Mailbox,
    MailboxAccess,
    Message,
    MessageAttachment,
    Patient,
    Recipient,
)

MAX_RECIPIENTS = 200
OUTSIDE_TRUST = "hors de l'espace de confiance MSSanté"
UNKNOWN_LOCAL = "boîte inconnue sur cette plateforme"
TRASH_KEEP = timedelta(days=30)
MAX_SUBJECT = 998
MAX_BODY = 2_000_000
PAGE_MAX = 200

# --- compose & send -----------------------------------------------------------------------


PatientRef = PatientIdentity  # the patient a message is linked to


@dataclass
class Compose:
    from_mailbox: int
    to: list[str] = field(default_factory=list)
    cc: list[str] = field(default_factory=list)
    subject: str = ""
    body: str = ""
    html: str | None = None
    category: str = Category.LETTER
    attachments: list[str] = field(default_factory=list)
    patient: PatientRef | None = None
    draft: bool = False
    draft_id: int | None = None
    in_reply_to: int | None = None
    receipt_requested: bool = False
    no_reply: bool = False
    context_type: str | None = None
    context_id: int | None = None


def new_message_id(domain: str) -> str:
    return f"<{uuid.uuid4().hex}@{domain}>"


def _check_address(raw: str, local_domain: str) -> tuple[str | None, str | None]:
    """(normalised address, None) or (None, reason)."""
    address = normalize_address(raw or "")
    if address is None:
        return None, "adresse mal formée"
    if domain_of(address) == PATIENT_DOMAIN and not is_valid_ins(address.split("@")[0]):
        return None, "adresse patient : l'INS est invalide"
    return address, None


async def _untrusted_domains(session: AsyncSession, domains: set[str], local_domain: str) -> set[str]:
    """The external domains outside the MSSanté trust space (our own domain is handled apart)."""
    return {d for d in sorted(domains) if d != local_domain and not await trust.is_trusted(session, d, local_domain)}


async def _resolve_recipients(session: AsyncSession, core: Core, req: Compose
                              ) -> tuple[list[tuple[str, str, Mailbox | None]], list[dict[str, str]]]:
    """[(kind, address, local mailbox or None)] and the list of bad addresses with reasons.

    An external address must belong to the trust space: refused now rather than bounced later.
    A draft may keep it (a draft is not a send); sending that draft is refused.
    """
    local_domain = core.settings.domain.lower()
    wanted: list[tuple[str, str]] = []
    bad: list[dict[str, str]] = []
    seen: set[str] = set()
    for kind, raws in (("to", req.to), ("cc", req.cc)):
        for raw in raws:
            address, reason = _check_address(raw, local_domain)
            if address is None:
                bad.append({"address": str(raw), "reason": reason or "adresse invalide"})
            elif address not in seen:
                seen.add(address)
                wanted.append((kind, address))
    locals_ = await mailboxes.by_address(session, [a for _, a in wanted if domain_of(a) == local_domain])
    untrusted = set() if req.draft else await _untrusted_domains(
        session, {domain_of(a) for _, a in wanted}, local_domain)
    resolved = []
    for kind, address in wanted:
        if domain_of(address) == local_domain and address not in locals_:
            bad.append({"address": address, "reason": UNKNOWN_LOCAL})
        elif domain_of(address) in untrusted:
            bad.append({"address": address, "reason": OUTSIDE_TRUST})
        else:
            resolved.append((kind, address, locals_.get(address)))
    return resolved, bad


async def check_address(core: Core, actor: Actor, raw: str) -> dict[str, Any]:
    """Could a message be sent to this address now? ``{address, ok, reason, local}``, with the
    same rules (and French reasons) as :func:`send`; the picker asks before adding an address."""
    local_domain = core.settings.domain.lower()
    address, reason = _check_address(raw, local_domain)
    if address is None:
        return {"address": (raw or "").strip(), "ok": False, "reason": reason, "local": False}
    local = domain_of(address) == local_domain
    async with core.read() as s:
        if local:
            reason = None if address in await mailboxes.by_address(s, [address]) else UNKNOWN_LOCAL
        elif await _untrusted_domains(s, {domain_of(address)}, local_domain):
            reason = OUTSIDE_TRUST
    return {"address": address, "ok": reason is None, "reason": reason, "local": local}


async def _patient_for(session: AsyncSession, ref: PatientRef) -> Patient:
    try:
        ins = validate_ins(ref.ins)
    except InvalidINS as exc:
        raise Invalid(f"patient : {exc}") from None
    if ref.oid not in KNOWN_OIDS:
        raise Invalid("patient : OID d'INS inconnu")
    patient = await session.scalar(sa.select(Patient).where(Patient.ins == ins))
    if patient is None:
        patient = Patient(ins=ins, ins_oid=ref.oid, family_name=ref.family_name.upper(),
                          given_names=ref.given_names, birth_date=ref.birth_date, sex=ref.sex,
                          birthplace=ref.birthplace)
        session.add(patient)
        await session.flush()
    return patient


# Statements of the delivery hot path, built once (building one costs more than running it).
_mailbox = Mailbox.__table__
_LOCK_MAILBOXES = (sa.select(_mailbox.c.id).where(_mailbox.c.id.in_(sa.bindparam("ids", expanding=True)))
                   .order_by(_mailbox.c.id).with_for_update(key_share=True))
_RESERVE_UIDS = (sa.update(_mailbox).where(_mailbox.c.id.in_(sa.bindparam("ids", expanding=True)))
                 .values(next_uid=_mailbox.c.next_uid + sa.bindparam("k", type_=sa.Integer),
                         modseq=_mailbox.c.modseq + sa.bindparam("k", type_=sa.Integer))
                 .returning(_mailbox.c.id, _mailbox.c.next_uid, _mailbox.c.modseq))
_INSERT_DELIVERIES = sa.insert(Delivery.__table__)


def allocate_uids(session: Session, wanted: dict[int, int]) -> dict[int, tuple[int, int]]:
    """Reserve ``wanted[mailbox]`` consecutive uids and modseqs per mailbox; returns the first of each.

    On PostgreSQL the rows are locked first, in id order (no deadlock between two writers), with
    FOR NO KEY UPDATE: a plain FOR UPDATE would wait on the KEY SHARE locks that the foreign keys
    of concurrent inserts hold. SQLite has one writer at a time.
    """
    ids = sorted(wanted)
    if session.bind.dialect.name != "sqlite":
        session.execute(_LOCK_MAILBOXES, {"ids": ids})
    result: dict[int, tuple[int, int]] = {}
    for k in sorted(set(wanted.values())):
        group = [i for i in ids if wanted[i] == k]
        rows = session.execute(_RESERVE_UIDS, {"ids": group, "k": k})
        for mailbox_id, next_uid, modseq in rows:
            result[mailbox_id] = (next_uid - k, modseq - k + 1)
    return result


@dataclass(frozen=True)
class Placement:
    """One message to put into one mailbox, with what its events announce."""

    message_id: int
    mailbox_id: int
    role: str
    category: str
    created_at: datetime
    subject: str = ""
    sender: str = ""


PendingEvent = tuple[str, list[int], dict[str, Any]]


def place_sync(session: Session, placements: list[Placement]) -> list[PendingEvent]:
    """Create the deliveries of stored messages (one INSERT); returns the events to publish
    after commit. The single way messages enter mailboxes (local sends, inbound SMTP,
    notices), usable from synchronous code. Uids strictly increase per mailbox, in order."""
    if not placements:
        return []
    wanted: dict[int, int] = {}
    for p in placements:
        wanted[p.mailbox_id] = wanted.get(p.mailbox_id, 0) + 1
    first = allocate_uids(session, wanted)
    used: dict[int, int] = {}
    rows = []
    for p in placements:
        n = used.get(p.mailbox_id, 0)
        used[p.mailbox_id] = n + 1
        uid, modseq = first[p.mailbox_id]
        rows.append({"mailbox_id": p.mailbox_id, "message_id": p.message_id, "uid": uid + n, "role": p.role,
                     "category": p.category, "created_at": p.created_at, "modseq": modseq + n,
                     "read": p.role != Role.IN, "favorite": False, "todo": False, "archived": False,
                     "deleted": False})
    session.execute(_INSERT_DELIVERIES, rows)
    owners = mailboxes.accounts_of_sync(session, list(wanted))
    events: list[PendingEvent] = [
        ("message.new" if p.role == Role.IN else "message.stored", owners.get(p.mailbox_id, []),
         {"mailbox_id": p.mailbox_id, "message_id": p.message_id, "role": p.role, "category": p.category,
          "subject": p.subject, "sender": p.sender})
        for p in placements]
    events += [("counts", owners.get(m, []), {"mailbox_ids": [m]}) for m in wanted]
    return events


async def place(tx: Tx, placements: list[Placement]) -> None:
    """:func:`place_sync` in an async transaction; its events go out after the commit."""
    for type_, account_ids, data in await tx.session.run_sync(place_sync, placements):
        tx.emit(type_, account_ids, **data)


async def bump_modseq(session: AsyncSession, mailbox_id: int) -> int:
    return (await session.execute(
        sa.update(Mailbox).where(Mailbox.id == mailbox_id).values(modseq=Mailbox.modseq + 1)
        .returning(Mailbox.modseq)
    )).scalar_one()


# Each message's indexed text also carries one token per mailbox it sits in, so that a search
# is "this mailbox AND these words" inside the full-text index itself: the engine intersects
# two posting lists and stops at the first page, instead of matching the whole store.
MAILBOX_TOKEN = "zzmbx"  # noqa: S105 (an index token, not a secret)


def mailbox_tokens(mailbox_ids) -> str:
    return " ".join(f"{MAILBOX_TOKEN}{i}" for i in sorted(set(mailbox_ids)))


def build_search_text(subject: str, body: str, sender_name: str, sender_address: str,
                      filenames: list[str], extra: str = "", mailbox_ids=()) -> str:
    text = fold(" ".join([subject, sender_name, sender_address, *filenames, extra, body]))[:200_000]
    return f"{text} {mailbox_tokens(mailbox_ids)}" if mailbox_ids else text


def _with_mailbox_tokens(search_text: str, mailbox_ids) -> str:
    present = set(search_text.split(" ")[-len(set(mailbox_ids)) - 64:])
    missing = [i for i in set(mailbox_ids) if f"{MAILBOX_TOKEN}{i}" not in present]
    return f"{search_text} {mailbox_tokens(missing)}" if missing else search_text


async def deliver(tx: Tx, message: Message, placements: list[tuple[int, str]]) -> None:
    """Place an ORM message (flushed or not) into mailboxes, as (mailbox id, role)."""
    tokens = _with_mailbox_tokens(message.search_text or "", [m for m, _ in placements])
    if tokens != message.search_text:
        message.search_text = tokens
    await tx.session.flush()
    sender = message.sender_name or message.sender_address
    await place(tx, [Placement(message.id, m, role, message.category, message.created_at, message.subject, sender)
                     for m, role in placements])


def _check_compose(req: Compose) -> None:
    """Refuses what cannot be sent; cleans the body (DESIGN §6: one rule for every text)."""
    if req.category not in {c.value for c in Category}:
        raise Invalid(f"catégorie inconnue : {req.category}")
    try:
        req.subject = check_line(req.subject, "objet")
    except TextRefused as exc:
        raise Invalid(str(exc)) from None
    if len(req.subject) > MAX_SUBJECT:
        raise Invalid(f"objet trop long (au plus {MAX_SUBJECT} caractères)")
    if not is_one_line(decoded_words(req.subject)):
        raise Invalid("objet : un mot encodé (=?…?=) y cache un saut de ligne ou un caractère de contrôle")
    req.body = clean_multiline(req.body)
    if len(req.body) > MAX_BODY:
        raise Invalid("message trop long")
    if len(req.to) + len(req.cc) > MAX_RECIPIENTS:
        raise Invalid(f"trop de destinataires (au plus {MAX_RECIPIENTS})")


async def _sending_mailbox(s: AsyncSession, actor: Actor, mailbox_id: int):
    """The mailbox the actor sends from (one query: access and identity), or 404."""
    row = (await s.execute(
        sa.select(Mailbox.id, Mailbox.address, Mailbox.display_name, Mailbox.owner_account_id)
        .join(MailboxAccess, MailboxAccess.mailbox_id == Mailbox.id)
        .where(Mailbox.id == mailbox_id, MailboxAccess.account_id == actor.account_id))).first()
    if row is None:
        raise NotFound("boîte aux lettres introuvable")
    return row


async def send(core: Core, actor: Actor, req: Compose) -> dict[str, Any]:
    """Send (or save as draft) a message; returns it as the sending mailbox sees it.

    Validation first (nothing is written when anything is wrong), then one transaction with one
    statement per table; events go out after the commit.
    """
    _check_compose(req)
    html = sanitize_html(req.html) if req.html else None
    async with core.write() as tx:
        s = tx.session
        sender = await _sending_mailbox(s, actor, req.from_mailbox)
        recipients, bad = await _resolve_recipients(s, core, req)
        if bad:
            raise Invalid("destinataires invalides : " + ", ".join(b["address"] for b in bad),
                          invalid_addresses=bad)
        if not recipients and not req.draft:
            raise Invalid("au moins un destinataire est nécessaire")
        wanted_atts = list(dict.fromkeys(req.attachments))
        found = await att_service.readable(s, actor, wanted_atts) if wanted_atts else {}
        missing = [a for a in wanted_atts if a not in found]
        if missing:
            raise NotFound("pièce jointe introuvable : " + ", ".join(missing))
        total = sum(a.size for a in found.values())
        if total > core.settings.max_message_bytes:
            raise TooLarge(f"pièces jointes trop volumineuses : {total // 1024} Ko au total, "
                           f"limite {core.settings.max_message_bytes // (1024 * 1024)} Mo")
        parent = await _readable_message(s, actor, req.in_reply_to) if req.in_reply_to is not None else None
        patient = await _patient_for(s, req.patient) if req.patient else None
        if req.draft_id is not None:
            await _discard_draft(tx, actor, req.from_mailbox, req.draft_id)

        now = utcnow()
        ordered = [found[a] for a in wanted_atts]
        local_boxes = [m for _, _, m in recipients if m is not None]
        on_behalf = sender.owner_account_id not in (None, actor.account_id)
        values = {
            "message_id": new_message_id(core.settings.domain),
            "in_reply_to_id": parent.id if parent else None,
            "thread_id": (parent.thread_id or parent.id) if parent else None,
            "from_mailbox_id": sender.id,
            "author_account_id": actor.account_id,
            "sender_address": sender.address,
            "sender_name": sender.display_name,
            "subject": req.subject.strip(),
            "body": req.body,
            "html": html,
            "preview": preview(req.body),
            "category": req.category,
            "created_at": now,
            "sent_at": None if req.draft else now,
            "is_draft": req.draft,
            "patient_id": patient.id if patient else None,
            "has_attachments": bool(ordered),
            "origin": "local",
            "receipt_requested": req.receipt_requested,
            "no_reply": req.no_reply,
            "context_type": req.context_type,
            "context_id": req.context_id,
            "headers": {"on_behalf_of": actor.username} if on_behalf else None,
            "search_text": build_search_text(
                req.subject, req.body, sender.display_name, sender.address, [a.filename for a in ordered],
                mailbox_ids=[sender.id] + ([] if req.draft else [m.id for m in local_boxes])),
        }
        message_pk = (await s.execute(sa.insert(Message).values(**values).returning(Message.id))).scalar_one()
        if parent is None:
            values["thread_id"] = message_pk
            await s.execute(sa.update(Message).where(Message.id == message_pk).values(thread_id=message_pk))
        if ordered:
            await s.execute(sa.insert(MessageAttachment), [
                {"message_id": message_pk, "attachment_id": a.id, "position": pos} for pos, a in enumerate(ordered)])
        recipient_rows = [{
            "message_id": message_pk, "kind": kind, "address": address,
            "display_name": mailbox.display_name if mailbox else "", "mailbox_id": mailbox.id if mailbox else None,
            "status": "draft" if req.draft else "queued" if mailbox is None else "delivered", "status_at": now,
            "next_attempt_at": now if mailbox is None and not req.draft else None, "attempts": 0,
        } for kind, address, mailbox in recipients]
        if recipient_rows:
            await s.execute(sa.insert(Recipient), recipient_rows)
        role = Role.DRAFT if req.draft else Role.SENT
        placements = [Placement(message_pk, sender.id, role, req.category, now, values["subject"],
                                sender.display_name)]
        if not req.draft:
            placements += [Placement(message_pk, m.id, Role.IN, req.category, now, values["subject"],
                                     sender.display_name) for m in local_boxes]
        await place(tx, placements)
        if patient is not None:
            audit.record(s, actor.account_id, "patient.message", object_type="message", object_id=message_pk,
                         patient_id=patient.id, client=actor.client)
        if len(local_boxes) < len(recipients) and not req.draft:
            tx.emit("outbox", [actor.account_id], message_id=message_pk)
            tx.outbox_changed()
    return _sent_view(message_pk, values, role, recipient_rows, ordered, patient)


def _sent_view(message_pk: int, v: dict[str, Any], role: str, recipient_rows: list[dict[str, Any]],
               attachments: list[Attachment], patient: Patient | None) -> dict[str, Any]:
    """The message as ``get`` would show it in the sending mailbox, built from what was written."""
    recips = [{"kind": r["kind"], "address": r["address"], "name": r["display_name"], "status": r["status"]}
              for r in recipient_rows]
    return {
        "id": message_pk,
        "subject": v["subject"],
        "preview": v["preview"],
        "sender": {"address": v["sender_address"], "name": v["sender_name"]},
        "to": [x for x in recips if x["kind"] == "to"],
        "cc": [x for x in recips if x["kind"] == "cc"],
        "category": v["category"],
        "created_at": _iso(v["created_at"]),
        "has_attachments": v["has_attachments"],
        "attachments": [{"id": a.id, "filename": a.filename, "content_type": a.content_type, "size": a.size}
                        for a in attachments],
        "patient": _patient_dict(patient) if patient else None,
        "thread": {"id": v["thread_id"], "in_reply_to": v["in_reply_to_id"]},
        "context": {"type": v["context_type"], "id": v["context_id"]} if v["context_type"] else None,
        "draft": v["is_draft"],
        "no_reply": v["no_reply"],
        "state": {"read": True, "favorite": False, "todo": False, "archived": False, "role": role,
                  "deleted": False, "deleted_at": None},
        "body": v["body"],
        "html": v["html"],
        "message_id": v["message_id"],
        "receipt_requested": v["receipt_requested"],
        "on_behalf_of": (v["headers"] or {}).get("on_behalf_of"),
    }


async def _discard_draft(tx: Tx, actor: Actor, mailbox_id: int, message_id: int) -> None:
    s = tx.session
    delivery = await s.scalar(sa.select(Delivery.id).where(
        Delivery.mailbox_id == mailbox_id, Delivery.message_id == message_id, Delivery.role == Role.DRAFT,
        Delivery.deleted.is_(False)))
    if delivery is None:
        raise NotFound("brouillon introuvable")
    # A draft was never delivered anywhere: it can really go.
    await s.execute(sa.delete(Delivery).where(Delivery.message_id == message_id))
    await s.execute(sa.delete(Recipient).where(Recipient.message_id == message_id))
    await s.execute(sa.delete(MessageAttachment).where(MessageAttachment.message_id == message_id))
    await s.execute(sa.delete(Message).where(Message.id == message_id, Message.is_draft.is_(True)))
    await bump_modseq(s, mailbox_id)


async def _readable_message(session: AsyncSession, actor: Actor, message_id: int) -> Message:
    """A message present in some mailbox the actor may use, or 404."""
    found = await session.scalar(
        sa.select(Message).join(Delivery, Delivery.message_id == Message.id)
        .join(MailboxAccess, MailboxAccess.mailbox_id == Delivery.mailbox_id)
        .where(Message.id == message_id, MailboxAccess.account_id == actor.account_id,
               Delivery.deleted.is_(False)).limit(1)
    )
    if found is None:
        raise NotFound("message introuvable")
    return found


# --- reading ------------------------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    return as_utc(value).isoformat() if value else None


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


_FTS = sa.table("message_fts", sa.column("rowid", sa.Integer))


def _search_statement(dialect: str, mailbox_id: int, terms: list[str]):
    """Messages of one mailbox matching every term (as a prefix), driven by the text index and
    ordered by message id so that the engine can stop at the first page."""
    if dialect == "sqlite":
        query = f"{MAILBOX_TOKEN}{mailbox_id} AND " + " AND ".join(f'"{t}"*' for t in terms)
        return (sa.select(*_LIST_COLUMNS).select_from(_FTS)
                .join(Delivery, Delivery.message_id == _FTS.c.rowid)
                .join(Message, Message.id == Delivery.message_id)
                .where(sa.text("message_fts MATCH :fts").bindparams(fts=query))), _FTS.c.rowid
    query = f"{MAILBOX_TOKEN}{mailbox_id} & " + " & ".join(f"{t}:*" for t in terms)
    return (sa.select(*_LIST_COLUMNS).select_from(Message).join(Delivery, Delivery.message_id == Message.id)
            .where(sa.text("messages.search_vector @@ to_tsquery('simple', :tsq)").bindparams(tsq=query))), Message.id


async def list_messages(core: Core, actor: Actor, mailbox_id: int, *, view: str = View.INBOX,
                        category: str | None = None, q: str | None = None, cursor: str | None = None,
                        limit: int = 50) -> dict[str, Any]:
    """One page of a mailbox view, newest first, with ``next_cursor`` for the following page."""
    if view not in VIEW_SQL:
        raise Invalid(f"vue inconnue : {view}")
    if category and category not in {c.value for c in Category}:
        raise Invalid(f"catégorie inconnue : {category}")
    limit = max(1, min(limit, PAGE_MAX))
    terms = [t for t in search_terms(q) if not t.startswith(MAILBOX_TOKEN)] if q else []
    if q and not terms:
        return {"items": [], "next_cursor": None}
    async with core.read() as s:
        await mailboxes.access_of(s, actor, mailbox_id)
        if terms:
            if s.bind.dialect.name == "postgresql":
                # A generic plan of the prepared statement would ignore how rare the words are.
                await s.execute(sa.text("SET LOCAL plan_cache_mode = force_custom_plan"))
            stmt, order_key = _search_statement(s.bind.dialect.name, mailbox_id, terms)
        else:
            stmt = sa.select(*_LIST_COLUMNS).select_from(Delivery).join(Message, Message.id == Delivery.message_id)
            order_key = Delivery.id
        by_deletion = view == TRASH_VIEW and not terms
        stmt = stmt.where(Delivery.mailbox_id == mailbox_id, sa.text(_qualified(VIEW_SQL[view])))
        if category:
            stmt = stmt.where(Delivery.category == category)
        elif view == View.INBOX:
            prefs = await s.scalar(sa.select(Account.inbox_categories).where(Account.id == actor.account_id))
            if prefs is not None and set(prefs) != {c.value for c in Category}:
                stmt = stmt.where(Delivery.category.in_(prefs))
        if by_deletion:
            # The bin reads newest-deleted first (ix_deliveries_view_trash), paged on (deleted_at, id).
            if cursor:
                at, after = _decode_trash_cursor(cursor)
                stmt = stmt.where(sa.or_(Delivery.deleted_at < at,
                                         sa.and_(Delivery.deleted_at == at, Delivery.id < after)))
            stmt = stmt.order_by(Delivery.deleted_at.desc(), Delivery.id.desc())
        else:
            if cursor:
                # Typed BIGINT: a cursor beyond the INTEGER message ids must not overflow PostgreSQL's int4.
                stmt = stmt.where(order_key < sa.literal(_decode_cursor(cursor), sa.BigInteger))
            stmt = stmt.order_by(order_key.desc())
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
        "created_at": _iso(r.created_at),
        "has_attachments": r.has_attachments,
        "attachments": atts,
        "patient": patient,
        "thread": {"id": r.thread_id, "in_reply_to": r.in_reply_to_id},
        "context": {"type": r.context_type, "id": r.context_id} if r.context_type else None,
        "draft": r.is_draft,
        "no_reply": r.no_reply,
        "state": {"read": r.read, "favorite": r.favorite, "todo": r.todo, "archived": r.archived, "role": r.role,
                  "deleted": r.deleted, "deleted_at": _iso(r.deleted_at)},
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
    return {p.id: _patient_dict(p) for p in rows}


def _patient_dict(p: Patient) -> dict[str, Any]:
    return {"id": p.id, "ins": p.ins, "oid": p.ins_oid, "family_name": p.family_name,
            "given_names": p.given_names, "birth_date": p.birth_date, "sex": p.sex}


async def get(core: Core, actor: Actor, mailbox_id: int, message_id: int, *, mark_read: bool = True,
              include_deleted: bool = False, prefer_deleted: bool = False) -> dict[str, Any]:
    """The whole message as this mailbox sees it; reading marks it read and records the receipt.

    ``include_deleted``: also a message in the bin (shown so that it can be restored; never
    marked read there); ``prefer_deleted``: the copy in the bin first (a message sent to oneself
    has two copies in the mailbox: the one opened from « Corbeille » is the one in the bin)."""
    async with core.read() as s:
        await mailboxes.access_of(s, actor, mailbox_id)
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
    mark_read = mark_read and not row.deleted
    item.update(body=row.body, html=row.html, message_id=row.rfc_id, receipt_requested=row.receipt_requested,
                on_behalf_of=(row.headers or {}).get("on_behalf_of"))
    if mark_read and row.role == Role.IN and not row.read:
        await _mark_read(core, actor, row.delivery_id)
        item["state"]["read"] = True
    if row.receipt_requested and row.role == Role.IN:
        from monsisra.services import mdn  # the gateway's read receipts (RFC 8098)

        # mdn_pending: the sender asked for a receipt at another address; the user decides.
        item["mdn"] = await mdn.status(core, actor, mailbox_id, message_id)
    if row.patient_id and mark_read:
        async with core.write() as tx:
            audit.record(tx.session, actor.account_id, "patient.read", object_type="message",
                         object_id=message_id, patient_id=row.patient_id, client=actor.client)
    return item


async def _mark_read(core: Core, actor: Actor, delivery_id: int) -> None:
    await _set_flags(core, actor, delivery_id, {"read": True})


async def _set_flags(core: Core, actor: Actor, delivery_id: int, flags: dict[str, bool]) -> None:
    now = utcnow()
    async with core.write() as tx:
        s = tx.session
        d = await s.get(Delivery, delivery_id)
        if d is None:
            raise NotFound("message introuvable")
        changed = {k: v for k, v in flags.items() if getattr(d, k) != v}
        if not changed:
            return
        for k, v in changed.items():
            setattr(d, k, v)
        if "deleted" in changed:
            d.deleted_at = now if d.deleted else None
        d.modseq = await bump_modseq(s, d.mailbox_id)
        first_read = changed.get("read") is True and d.first_read_at is None and d.role == Role.IN
        if first_read:
            d.first_read_at, d.first_read_by = now, actor.account_id
            from monsisra.services import mdn  # the gateway's read receipts (RFC 8098)

            await mdn.on_first_read(tx, d, actor)
        owners = await mailboxes.accounts_of(s, [d.mailbox_id])
        tx.emit("message.flags", owners.get(d.mailbox_id, []), mailbox_id=d.mailbox_id,
                message_id=d.message_id, flags=changed)
        tx.emit("counts", owners.get(d.mailbox_id, []), mailbox_ids=[d.mailbox_id])
        if first_read:
            sender = await s.scalar(sa.select(Message.from_mailbox_id).where(Message.id == d.message_id))
            if sender is not None:
                reader = await s.get(Account, actor.account_id)
                mailbox = await s.get(Mailbox, d.mailbox_id)
                senders = await mailboxes.accounts_of(s, [sender])
                tx.emit("message.read", senders.get(sender, []), message_id=d.message_id,
                        mailbox_id=sender, reader_mailbox=mailbox.address if mailbox else None,
                        read_at=now.isoformat(),
                        reader_name=f"{reader.first_name} {reader.last_name}".strip() if reader else "")


async def update_state(core: Core, actor: Actor, mailbox_id: int, message_id: int,
                       changes: dict[str, bool | None], *, role: str | None = None) -> dict[str, Any]:
    """Set read/favorite/todo/archived/deleted of a message in one mailbox.

    ``deleted`` moves it to the bin (corbeille) or back where it was: its role and flags are
    untouched, so it returns to the same views. A message in the bin takes no other change.
    ``role`` picks the copy when the mailbox holds two (a message sent to oneself: in and sent).
    """
    flags = {k: bool(v) for k, v in changes.items() if v is not None}
    unknown = set(flags) - {"read", "favorite", "todo", "archived", "deleted"}
    if unknown:
        raise Invalid(f"états inconnus : {', '.join(sorted(unknown))}")
    stmt = sa.select(Delivery.id).where(Delivery.mailbox_id == mailbox_id, Delivery.message_id == message_id)
    if role in {r.value for r in Role}:
        stmt = stmt.where(Delivery.role == role)
    if "deleted" not in flags:
        stmt = stmt.where(Delivery.deleted.is_(False)).order_by(Delivery.id.desc())
    elif flags["deleted"]:  # to the bin: a copy still out of it first (sent to oneself: two copies)
        stmt = stmt.order_by(Delivery.deleted, Delivery.id.desc())
    else:  # restore: the copy in the bin first
        stmt = stmt.order_by(Delivery.deleted.desc(), Delivery.id.desc())
    async with core.read() as s:
        await mailboxes.access_of(s, actor, mailbox_id)
        delivery_id = await s.scalar(stmt.limit(1))
    if delivery_id is None:
        raise NotFound("message introuvable")
    await _set_flags(core, actor, delivery_id, flags)
    async with core.read() as s:
        d = await s.get(Delivery, delivery_id)
        assert d is not None
        return {"read": d.read, "favorite": d.favorite, "todo": d.todo, "archived": d.archived,
                "deleted": d.deleted, "deleted_at": _iso(d.deleted_at)}


async def trash(core: Core, actor: Actor, mailbox_id: int, message_id: int, *, role: str | None = None
                ) -> dict[str, Any]:
    """« Supprimer »: put a message (or a draft) of this mailbox in its bin, restorable for 30 days."""
    return await update_state(core, actor, mailbox_id, message_id, {"deleted": True}, role=role)


async def restore(core: Core, actor: Actor, mailbox_id: int, message_id: int) -> dict[str, Any]:
    """Take a message out of the bin, back to where it was (same role and flags)."""
    return await update_state(core, actor, mailbox_id, message_id, {"deleted": False})


async def purge_trash(tx: Tx, now: datetime, batch: int = 10_000) -> tuple[int, int]:
    """Remove what has been in a bin for more than 30 days, then the messages no mailbox holds
    any more (with their recipients and attachment links; attachments that nothing names are
    the orphan purge's). Returns (deliveries, messages) removed.

    Only messages that lost a delivery here are candidates: a message with no delivery for
    another reason is not this function's to judge. One still in the outbox stays.
    """
    s = tx.session
    rows = (await s.execute(
        sa.select(Delivery.id, Delivery.mailbox_id, Delivery.message_id)
        .where(sa.text(VIEW_SQL[TRASH_VIEW]), Delivery.deleted_at < now - TRASH_KEEP)
        .order_by(Delivery.deleted_at).limit(batch))).all()
    if not rows:
        return 0, 0
    await s.execute(sa.delete(Delivery).where(Delivery.id.in_([r.id for r in rows])))
    boxes = sorted({r.mailbox_id for r in rows})
    for mailbox_id in boxes:  # a removal is a change of the mailbox (counts cache, IMAP expunge)
        await bump_modseq(s, mailbox_id)
    candidates = {r.message_id for r in rows}
    held = set(await s.scalars(sa.select(Delivery.message_id).where(Delivery.message_id.in_(candidates))))
    in_flight = set(await s.scalars(sa.select(Recipient.message_id).where(
        Recipient.message_id.in_(candidates), Recipient.status.in_(("queued", "retrying")))))
    gone = sorted(candidates - held - in_flight)
    if gone:
        # Replies keep their thread (thread_id); only the link to the vanished parent goes.
        await s.execute(sa.update(Message).where(Message.in_reply_to_id.in_(gone)).values(in_reply_to_id=None))
        await s.execute(sa.delete(Recipient).where(Recipient.message_id.in_(gone)))
        await s.execute(sa.delete(MessageAttachment).where(MessageAttachment.message_id.in_(gone)))
        await s.execute(sa.delete(Message).where(Message.id.in_(gone)))
    owners = await mailboxes.accounts_of(s, boxes)
    for mailbox_id in boxes:
        tx.emit("counts", owners.get(mailbox_id, []), mailbox_ids=[mailbox_id])
    return len(rows), len(gone)


async def counts(core: Core, actor: Actor, mailbox_id: int) -> dict[str, Any]:
    """Unread/total per view and per category, in one pass over the mailbox's index."""
    async with core.read() as s:
        await mailboxes.access_of(s, actor, mailbox_id)
        prefs = await s.scalar(sa.select(Account.inbox_categories).where(Account.id == actor.account_id))
        # Every change to a mailbox's deliveries bumps its modseq in the same transaction, so the
        # rows counted at a given (uidvalidity, modseq) are exact, on any process. Read modseq first:
        # a change committing in between only makes the cached rows newer than their key.
        version = (await s.execute(sa.select(Mailbox.uidvalidity, Mailbox.modseq)
                                   .where(Mailbox.id == mailbox_id))).one()
        key = (core.settings.database_url, mailbox_id, version.uidvalidity, version.modseq)
        rows = _COUNTS_CACHE.get(key)
        if rows is None:
            rows = (await s.execute(
                sa.select(Delivery.deleted, Delivery.role, Delivery.category, Delivery.read, Delivery.archived,
                          Delivery.favorite, Delivery.todo, sa.func.count())
                .where(Delivery.mailbox_id == mailbox_id)
                .group_by(Delivery.deleted, Delivery.role, Delivery.category, Delivery.read, Delivery.archived,
                          Delivery.favorite, Delivery.todo)
            )).all()
            _COUNTS_CACHE[key] = rows
            while len(_COUNTS_CACHE) > _COUNTS_CACHE_SIZE:
                _COUNTS_CACHE.pop(next(iter(_COUNTS_CACHE)))
        return tally(rows, prefs)


_COUNTS_CACHE: dict[tuple, list] = {}
_COUNTS_CACHE_SIZE = 4096


def tally(rows, prefs: list[str] | None) -> dict[str, Any]:
    views = {v.value: {"unread": 0, "total": 0} for v in View}
    cats = {c.value: {"unread": 0, "total": 0} for c in Category}
    inbox_cats = set(prefs) if prefs is not None else {c.value for c in Category}

    def add(bucket: dict[str, int], n: int, unread: bool) -> None:
        bucket["total"] += n
        if unread:
            bucket["unread"] += n

    for deleted, role, category, read, archived, favorite, todo, n in rows:
        unread = role == Role.IN and not read
        if deleted:  # in the bin: counted there only
            add(views[View.TRASH], n, unread)
            continue
        if role == Role.IN:
            add(views["all"], n, unread)
            add(cats[category], n, unread)
            if not read:
                add(views["unread"], n, True)
            if not archived and category in inbox_cats:
                add(views["inbox"], n, unread)
        elif role == Role.SENT:
            add(views["sent"], n, False)
        elif role == Role.DRAFT:
            add(views["drafts"], n, False)
        if favorite:
            add(views["favorites"], n, unread)
        if todo:
            add(views["todo"], n, unread)
        if archived:
            add(views["archived"], n, unread)
    return {"views": views, "categories": cats}


async def require_sender_access(s: AsyncSession, actor: Actor, message_id: int) -> int:
    """The sending mailbox of a message, when the actor may use it (receipts, delivery status).

    Someone else's message and a message that does not exist get the same answer: the error
    must not tell which ids exist.
    """
    sender_mailbox = await s.scalar(sa.select(Message.from_mailbox_id).where(Message.id == message_id))
    if sender_mailbox is None:
        raise NotFound("message introuvable")
    try:
        await mailboxes.access_of(s, actor, sender_mailbox)
    except NotFound:
        raise NotFound("message introuvable") from None
    return sender_mailbox


# Stored recipient status -> what the sender is told (``sent``: the other operator accepted it).
_RECEIPT_STATES = {"delivered": "delivered", "sent": "delivered", "queued": "queued", "retrying": "retrying",
                   "failed": "failed", "draft": "draft"}


async def receipts(core: Core, actor: Actor, message_id: int) -> list[dict[str, Any]]:
    """Each recipient of a message and where it stands: delivered (locally, or accepted by the
    other operator's server), read (and when), waiting, retrying (and when), failed (and why).
    Only the sending mailbox's users may ask.

    ``state`` sums it up: ``read``, ``delivered``, ``queued``, ``retrying``, ``failed`` (or
    ``draft``); ``status`` is the stored delivery status, ``detail`` its reason.
    """
    async with core.read() as s:
        await require_sender_access(s, actor, message_id)
        rows = await s.execute(
            sa.select(Recipient.address, Recipient.display_name, Recipient.kind, Recipient.status,
                      Recipient.status_detail, Recipient.next_attempt_at,
                      Recipient.read_at, Delivery.first_read_at, Account.first_name, Account.last_name,
                      Account.username, Mailbox.kind.label("mailbox_kind"))
            .outerjoin(Delivery, sa.and_(Delivery.message_id == Recipient.message_id,
                                         Delivery.mailbox_id == Recipient.mailbox_id, Delivery.role == Role.IN))
            .outerjoin(Account, Account.id == Delivery.first_read_by)
            .outerjoin(Mailbox, Mailbox.id == Recipient.mailbox_id)
            .where(Recipient.message_id == message_id).order_by(Recipient.id)
        )
        out = []
        for r in rows:
            read_at = r.first_read_at or r.read_at
            reader = f"{r.first_name} {r.last_name.upper()}".strip() if r.username else None
            name = r.display_name or r.address
            ini_src = (r.first_name, r.last_name) if r.username else _name_parts(name)
            out.append({
                "address": r.address,
                "name": name,
                "initials": "".join(p[:1] for p in ini_src if p).upper() or r.address[:2].upper(),
                "kind": r.kind,
                "status": r.status,
                "state": "read" if read_at else _RECEIPT_STATES.get(r.status, r.status),
                "detail": r.status_detail,
                "next_attempt_at": _iso(r.next_attempt_at) if r.status == "retrying" else None,
                "read_at": _iso(read_at),
                "read_by": reader if r.mailbox_kind and r.mailbox_kind != "PER" else (reader if reader else None),
            })
        return out


def _name_parts(display_name: str) -> tuple[str, ...]:
    words = [w for w in display_name.replace("Dr ", "").split() if w[:1].isalpha()]
    return (words[0], words[-1]) if len(words) >= 2 else tuple(words)


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


__all__ = ["Access", "Compose", "PatientRef", "check_address", "counts", "get", "list_messages", "purge_trash",
           "receipts", "restore", "send", "trash", "update_state"]
