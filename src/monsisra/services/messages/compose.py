"""Writing: compose and send a message (local and external recipients), drafts and replies, with
the recipients checked (trust space, local mailboxes, patient addresses) before anything is written.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from monsisra.domain import delegation
from monsisra.domain.addresses import PATIENT_DOMAIN, domain_of, normalize_address
from monsisra.domain.clock import iso, utcnow
from monsisra.domain.delegation import Right
from monsisra.domain.html import sanitize_html
from monsisra.domain.ins import PatientIdentity, is_valid_ins
from monsisra.domain.model import Access, Category, Role
from monsisra.domain.text import (
    TextRefused,
    check_line,
    clean_multiline,
    decoded_words,
    is_one_line,
    preview,
)
from monsisra.services import attachments as att_service
from monsisra.services import audit, authorship, mailboxes, patients, trust
from monsisra.services.core import Actor, Core, Tx
from monsisra.services.errors import Forbidden, Invalid, NotFound, TooLarge
from monsisra.services.messages.placement import (
    Placement,
    build_search_text,
    bump_modseq,
    lock_mailboxes,
    new_message_id,
    place,
    record_vanished,
)
from monsisra.store.models import (
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


MAX_SUBJECT = 998


MAX_BODY = 2_000_000


PatientRef = PatientIdentity  # the patient a message is linked to


@dataclass
class Compose:
    from_mailbox: int
    to: list[str] = field(default_factory=list)
    cc: list[str] = field(default_factory=list)
    subject: str = ""
    bcc: list[str] = field(default_factory=list)  # SMTP submission: envelope recipients not in the header
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
    message_id: str | None = None  # the client's Message-ID (SMTP submission keeps it), else ours
    copy_only: bool = False  # a copy for Envoyés of a message sent elsewhere (IMAP APPEND): nobody receives it


# Categories a reply keeps (a support request's answer stays in « Demandes d'appui »…); anything
# else (a result, an event, an alert) is answered by a letter, in the same thread.
KEPT_ON_REPLY = frozenset({Category.SUPPORT, Category.TELEEXPERTISE, Category.CONVERSATION, Category.PATIENT,
                           Category.LETTER, Category.MSSANTE})


def reply_category(parent_category: str) -> str:
    """The category of a reply to a message of ``parent_category``."""
    return parent_category if parent_category in KEPT_ON_REPLY else Category.LETTER


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
    for kind, raws in (("to", req.to), ("cc", req.cc), ("bcc", req.bcc)):
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
    if len(req.to) + len(req.cc) + len(req.bcc) > MAX_RECIPIENTS:
        raise Invalid(f"trop de destinataires (au plus {MAX_RECIPIENTS})")


async def _sending_mailbox(s: AsyncSession, actor: Actor, mailbox_id: int, draft: bool):
    """The mailbox the actor sends from (one query: access, rights and identity), or 404; 403 for
    a delegate whose rights do not cover sending (or preparing a draft)."""
    row = (await s.execute(
        sa.select(Mailbox.id, Mailbox.address, Mailbox.display_name, Mailbox.owner_account_id, MailboxAccess.access,
                  MailboxAccess.rights)
        .join(MailboxAccess, MailboxAccess.mailbox_id == Mailbox.id)
        .where(Mailbox.id == mailbox_id, MailboxAccess.account_id == actor.account_id))).first()
    if row is None:
        raise await mailboxes.not_found(s, actor, mailbox_id)
    needed = Right.DRAFT if draft else Right.SEND
    if needed not in delegation.decode(row.rights):
        raise Forbidden(mailboxes.RIGHT_REFUSED[needed])
    return row


@contextlib.asynccontextmanager
async def _joined(core: Core, tx: Tx | None) -> AsyncIterator[Tx]:
    if tx is not None:
        yield tx
    else:
        async with core.write() as fresh:
            yield fresh


async def send(core: Core, actor: Actor, req: Compose, *, tx: Tx | None = None) -> dict[str, Any]:
    """Send (or save as draft) a message; returns it as the sending mailbox sees it.

    Validation first (nothing is written when anything is wrong), then one transaction with one
    statement per table; events go out after the commit. With ``tx`` the letter joins the caller's
    transaction (a step and its letter commit together, or neither does).
    """
    _check_compose(req)
    html = sanitize_html(req.html) if req.html else None
    async with _joined(core, tx) as tx:
        s = tx.session
        sender = await _sending_mailbox(s, actor, req.from_mailbox, req.draft)
        recipients, bad = await _resolve_recipients(s, core, req)
        if bad:
            raise Invalid("destinataires invalides : " + ", ".join(b["address"] for b in bad),
                          invalid_addresses=bad)
        if not recipients and not req.draft and not req.copy_only:
            raise Invalid("au moins un destinataire est nécessaire")
        if req.copy_only:
            recipients = [(kind, address, None) for kind, address, _ in recipients]  # delivered by no one here
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
        if (parent is not None and (parent.no_reply or parent.category == Category.DGS_URGENT)
                and not await _sent_it(s, actor, parent)):
            raise Forbidden(NO_REPLY if parent.category != Category.DGS_URGENT else NO_REPLY_DGS)
        if parent is not None and req.category == Category.LETTER and not req.draft:
            # A reply keeps what it answers unless the client chose another kind than the default.
            req.category = reply_category(parent.category)
        patient = await patients.resolve(s, req.patient) if req.patient else None
        if req.draft_id is not None:
            # Every mailbox this send changes, locked up front (placement.lock_mailboxes).
            await lock_mailboxes(s, [sender.id] + [m.id for _, _, m in recipients if m is not None])
            await _discard_draft(tx, actor, req.from_mailbox, req.draft_id)

        now = utcnow()
        ordered = [found[a] for a in wanted_atts]
        local_boxes = [m for _, _, m in recipients if m is not None]
        on_behalf = sender.owner_account_id not in (None, actor.account_id)
        headers: dict[str, Any] | None = None
        if sender.access != Access.OWNER:
            # Written in a service mailbox or as a delegate: everyone reads who wrote it (a name).
            headers = {"author": await authorship.author_line(s, actor, sender.id, sender.access)}
            if on_behalf:
                headers["on_behalf_of"] = actor.username
        values = {
            "message_id": req.message_id or new_message_id(core.settings.domain),
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
            "headers": headers,
            "search_text": build_search_text(
                req.subject, req.body, sender.display_name, sender.address, [a.filename for a in ordered],
                extra=patients.search_text(patient),
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
            "status": "draft" if req.draft else "sent" if req.copy_only else "queued" if mailbox is None
            else "delivered",
            "status_at": now, "attempts": 0,
            "next_attempt_at": now if mailbox is None and not req.draft and not req.copy_only else None,
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
        # Every send is on the record, and a draft prepared in someone else's mailbox too.
        if not req.draft or sender.access != Access.OWNER:
            action = "message.draft" if req.draft else "message.copy" if req.copy_only \
                else "patient.message" if patient is not None else "message.send"
            detail: dict[str, Any] = {"recipients": len(recipients)}
            if sender.access != Access.OWNER:
                detail["access"] = sender.access
            if on_behalf:
                detail["on_behalf_of"] = actor.username
            audit.record(s, actor.account_id, action, object_type="message", object_id=message_pk,
                         patient_id=patient.id if patient else None, mailbox_id=sender.id, client=actor.client,
                         detail=detail)
        if len(local_boxes) < len(recipients) and not req.draft and not req.copy_only:
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
        "created_at": iso(v["created_at"]),
        "has_attachments": v["has_attachments"],
        "attachments": [{"id": a.id, "filename": a.filename, "content_type": a.content_type, "size": a.size}
                        for a in attachments],
        "patient": patients.patient_dict(patient) if patient else None,
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
        "author": (v["headers"] or {}).get("author"),
    }


async def _discard_draft(tx: Tx, actor: Actor, mailbox_id: int, message_id: int) -> None:
    s = tx.session
    delivery = await s.scalar(sa.select(Delivery.id).where(
        Delivery.mailbox_id == mailbox_id, Delivery.message_id == message_id, Delivery.role == Role.DRAFT,
        Delivery.deleted.is_(False)))
    if delivery is None:
        raise NotFound("brouillon introuvable")
    gone = (await s.execute(sa.select(Delivery.mailbox_id, Delivery.uid).where(
        Delivery.message_id == message_id))).all()
    # A draft was never delivered anywhere: it can really go.
    await s.execute(sa.delete(Delivery).where(Delivery.message_id == message_id))
    await s.execute(sa.delete(Recipient).where(Recipient.message_id == message_id))
    await s.execute(sa.delete(MessageAttachment).where(MessageAttachment.message_id == message_id))
    await s.execute(sa.delete(Message).where(Message.id == message_id, Message.is_draft.is_(True)))
    modseq = await bump_modseq(s, mailbox_id)
    for box, uid in gone:  # IMAP's expunge history (placement.record_vanished)
        await record_vanished(s, box, [uid], modseq if box == mailbox_id else await bump_modseq(s, box))


NO_REPLY = "ce message n'attend pas de réponse : on ne peut pas y répondre"
NO_REPLY_DGS = "une alerte DGS Urgent ne peut pas recevoir de réponse"


async def _sent_it(session: AsyncSession, actor: Actor, message: Message) -> bool:
    """Whether the actor may use the mailbox the message came from (its sender may follow up)."""
    if message.from_mailbox_id is None:
        return False
    return await session.scalar(sa.select(MailboxAccess.access).where(
        MailboxAccess.mailbox_id == message.from_mailbox_id, MailboxAccess.account_id == actor.account_id)) is not None


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
