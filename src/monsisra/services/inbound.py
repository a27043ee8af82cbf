"""Inbound MSSanté mail: the rules applied to what another operator's server hands us.

The SMTP handler (``gateway/smtp.py``) only relays the conversation here. A message is
acknowledged (``250``) only when :func:`receive` returns, i.e. after its raw form, its
attachment blobs (fsynced) and its rows are committed. The same Message-ID delivered twice
to a mailbox is stored once (``gw_inbound`` unique key).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass
from typing import Any

import nh3
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from monsisra.domain.addresses import PATIENT_DOMAIN, domain_of, normalize_address
from monsisra.domain.clock import utcnow
from monsisra.domain.ins import KNOWN_OIDS, is_valid_ins
from monsisra.domain.model import Category, Role
from monsisra.domain.text import fold, preview
from monsisra.gateway import mime, xdm
from monsisra.services import attachments as att_service
from monsisra.services import audit, mailboxes, messages, trust
from monsisra.services.core import Core, Tx
from monsisra.store.gateway import InboundMessage
from monsisra.store.models import Delivery, Mailbox, Message, MessageAttachment, Patient, Recipient

log = logging.getLogger(__name__)
XDM_NAMES = {"ihe_xdm.zip"}


@dataclass
class Envelope:
    peer: str
    mail_from: str  # "" for the null reverse path
    rcpt_tos: list[str]
    raw: bytes


def _domain(address: str) -> str:
    return domain_of(address) if "@" in address else ""


async def check_sender(core: Core, mail_from: str) -> str | None:
    """The SMTP refusal for this MAIL FROM, or None when acceptable."""
    if not mail_from:
        return None  # null reverse path: notifications; the header From is checked at DATA
    address = normalize_address(mail_from)
    if address is None:
        return "553 5.1.7 adresse d'expéditeur mal formée"
    async with core.read() as s:
        if not await trust.is_trusted(s, _domain(address), core.settings.domain):
            return f"550 5.7.1 domaine {_domain(address)} hors de l'espace de confiance MSSanté"
    return None


async def check_recipient(core: Core, rcpt: str) -> str | None:
    """The SMTP refusal for this RCPT TO, or None: local and existing mailboxes only."""
    address = normalize_address(rcpt)
    if address is None:
        return "553 5.1.3 adresse de destinataire mal formée"
    if _domain(address) != core.settings.domain.lower():
        return f"550 5.7.1 relais interdit : seules les adresses @{core.settings.domain} sont servies ici"
    async with core.read() as s:
        found = await mailboxes.by_address(s, [address])
    if address not in found:
        return f"550 5.1.1 <{address}> : boîte aux lettres inconnue"
    return None


def categorize(parsed: mime.ParsedMail, content: xdm.XdmContent | None) -> str:
    if _domain(parsed.sender_address) == PATIENT_DOMAIN:
        return Category.PATIENT
    if content is not None and content.documents:
        return Category.RESULT if set(content.type_codes) & xdm.RESULT_CODES else Category.LETTER
    subject = fold(parsed.subject)
    if "resultat" in subject or "compte rendu d'analyse" in subject:
        return Category.RESULT
    if any(a.content_type == "application/pdf" for a in parsed.attachments):
        return Category.LETTER
    return Category.MSSANTE


def _html_to_text(html: str) -> str:
    return " ".join(nh3.clean(html, tags=set()).split())


async def receive(core: Core, env: Envelope) -> str:
    """Store an accepted message for its local recipients; returns the SMTP reply."""
    loop = asyncio.get_running_loop()
    big = len(env.raw) > 512 * 1024
    try:
        parsed = (await loop.run_in_executor(None, mime.parse, env.raw, env.mail_from) if big
                  else mime.parse(env.raw, env.mail_from))
    except mime.MailError as exc:
        log.info("inbound refused from %s: %s", env.peer, exc.reply)
        return exc.reply
    sender_domain = _domain(parsed.sender_address)
    async with core.read() as s:
        if not await trust.is_trusted(s, sender_domain, core.settings.domain):
            return f"550 5.7.1 expéditeur {parsed.sender_address} hors de l'espace de confiance MSSanté"
        boxes = await mailboxes.by_address(s, [a for a in (normalize_address(r) for r in env.rcpt_tos) if a])
    if not boxes:
        return "550 5.1.1 aucun destinataire valide"
    content: xdm.XdmContent | None = None
    for part in parsed.attachments:
        if (part.filename or "").lower() in XDM_NAMES:
            try:
                content = xdm.read(part.data)
            except xdm.XdmError as exc:
                return f"554 5.6.0 {exc}"
    rfc_id = parsed.message_id or f"<{hashlib.sha256(env.raw).hexdigest()[:40]}@sans-identifiant.invalid>"

    # Durable bytes first (fsynced), rows after: a crash in between leaves only an unreferenced blob.
    def store_blobs() -> tuple[str, list[tuple[str, int]]]:
        raw_digest, _ = core.blobs.put_bytes(env.raw)
        return raw_digest, [core.blobs.put_bytes(p.data) for p in parsed.attachments]

    raw_sha, att_digests = await loop.run_in_executor(None, store_blobs)
    try:
        async with core.write() as tx:
            reply = await _store(core, tx, env, parsed, content, rfc_id, boxes, raw_sha, att_digests)
    except IntegrityError:
        # The same Message-ID arrived concurrently on another connection, which stored it.
        return f"250 2.0.0 {rfc_id} déjà reçu"
    return reply


async def _store(core: Core, tx: Tx, env: Envelope, parsed: mime.ParsedMail, content: xdm.XdmContent | None,
                 rfc_id: str, boxes: dict[str, Mailbox], raw_sha: str, att_digests: list[tuple[str, int]]) -> str:
    s = tx.session
    already = set(await s.scalars(sa.select(InboundMessage.mailbox_id).where(
        InboundMessage.rfc_message_id == rfc_id, InboundMessage.mailbox_id.in_([b.id for b in boxes.values()]))))
    targets = [b for b in boxes.values() if b.id not in already]
    if not targets:
        return f"250 2.0.0 {rfc_id} déjà reçu"
    now = utcnow()
    kind = "mdn" if parsed.mdn is not None else "message"
    message_row_id: int | None = None
    if parsed.mdn is not None:
        await _apply_mdn(tx, parsed, [b.id for b in targets], now)
    else:
        message_row_id = await _store_message(core, tx, env, parsed, content, rfc_id, targets, raw_sha,
                                              att_digests, now)
    for b in targets:
        s.add(InboundMessage(mailbox_id=b.id, rfc_message_id=rfc_id, message_id=message_row_id, raw_sha256=raw_sha,
                             raw_size=len(env.raw), mail_from=env.mail_from[:254], peer=env.peer[:80], kind=kind,
                             received_at=now))
    await s.flush()
    return f"250 2.0.0 {rfc_id} reçu"


async def _store_message(core: Core, tx: Tx, env: Envelope, parsed: mime.ParsedMail,
                         content: xdm.XdmContent | None, rfc_id: str, targets: list[Mailbox], raw_sha: str,
                         att_digests: list[tuple[str, int]], now) -> int:
    s = tx.session
    category = categorize(parsed, content)
    patient = await _patient(s, parsed, content)
    parent = await _parent(s, parsed, [b.id for b in targets])
    html = messages.sanitize_html(parsed.html) if parsed.html else None
    body = parsed.text or (_html_to_text(parsed.html) if parsed.html else "")
    views = []
    for part, (digest, size) in zip(parsed.attachments, att_digests, strict=True):
        ctype = att_service.sniff(part.data[:8192], part.filename or "")
        if part.content_type == "message/rfc822":
            ctype = "message/rfc822"
        views.append(await att_service.register(core, None, digest, size, ctype, part.filename, session=s))
    headers: dict[str, Any] = {"mss": parsed.mss_headers, "smtp_from": env.mail_from, "peer": env.peer}
    if parsed.notify_to:
        headers["notify_to"] = parsed.notify_to
    if content is not None:
        headers["xdm"] = {"title": content.title, "type_codes": content.type_codes}
    subject = parsed.subject or (content.title if content else "")
    message = Message(
        message_id=rfc_id, sender_address=parsed.sender_address, sender_name=parsed.sender_name,
        subject=subject, body=body, html=html, preview=preview(body), category=category, created_at=now,
        sent_at=parsed.date or now, patient_id=patient.id if patient else None, has_attachments=bool(views),
        origin="smtp", raw_sha256=raw_sha, headers=headers, receipt_requested=bool(parsed.notify_to),
        in_reply_to_id=parent.id if parent else None,
        thread_id=(parent.thread_id or parent.id) if parent else None,
        search_text=messages.build_search_text(subject, body, parsed.sender_name, parsed.sender_address,
                                               [v.filename for v in views]),
    )
    s.add(message)
    await s.flush()
    if message.thread_id is None:
        message.thread_id = message.id
    for pos, v in enumerate(views):
        s.add(MessageAttachment(message_id=message.id, attachment_id=v.id, position=pos))
    for b in targets:
        s.add(Recipient(message_id=message.id, kind="to", address=b.address, display_name=b.display_name,
                        mailbox_id=b.id, status="delivered", status_at=now))
    await messages.deliver(tx, message, [(b.id, Role.IN) for b in targets])
    if patient is not None:
        audit.record(s, None, "patient.message.smtp", object_type="message", object_id=message.id,
                     patient_id=patient.id, client=env.peer[:64])
    return message.id


async def _patient(s, parsed: mime.ParsedMail, content: xdm.XdmContent | None) -> Patient | None:
    """The patient named by the XDM metadata (created when new), or by a patient sender address."""
    ins, oid, traits = None, None, None
    if content is not None and content.patient and content.patient.ins:
        ins, oid, traits = content.patient.ins.upper(), content.patient.oid, content.patient
    elif _domain(parsed.sender_address) == PATIENT_DOMAIN:
        ins = parsed.sender_address.split("@")[0].upper()
    if not ins or not is_valid_ins(ins):
        return None
    patient = await s.scalar(sa.select(Patient).where(Patient.ins == ins))
    if patient is None and traits is not None and oid in KNOWN_OIDS:
        patient = Patient(ins=ins, ins_oid=oid, family_name=traits.family_name.upper(),
                          given_names=traits.given_names, birth_date=traits.birth_date, sex=traits.sex)
        s.add(patient)
        await s.flush()
    return patient


async def _parent(s, parsed: mime.ParsedMail, mailbox_ids: list[int]) -> Message | None:
    """The message this one answers, if it sits in one of the recipient mailboxes."""
    ids = list(dict.fromkeys(parsed.in_reply_to + list(reversed(parsed.references))))
    if not ids:
        return None
    return await s.scalar(
        sa.select(Message).join(Delivery, Delivery.message_id == Message.id)
        .where(Message.message_id.in_(ids), Delivery.mailbox_id.in_(mailbox_ids))
        .order_by(Message.id.desc()).limit(1))


async def _apply_mdn(tx: Tx, parsed: mime.ParsedMail, mailbox_ids: list[int], now) -> None:
    """A read receipt for one of our messages: record when that recipient displayed it."""
    report = parsed.mdn
    assert report is not None
    if report.disposition != "displayed" or not report.original_message_id:
        return
    s = tx.session
    original = await s.scalar(sa.select(Message).where(
        Message.message_id == report.original_message_id, Message.from_mailbox_id.in_(mailbox_ids)).limit(1))
    if original is None:
        log.info("MDN for unknown message %s", report.original_message_id)
        return
    candidates = {a for a in (report.final_recipient, parsed.sender_address) if a}
    recipient = await s.scalar(sa.select(Recipient).where(
        Recipient.message_id == original.id, Recipient.mailbox_id.is_(None),
        sa.func.lower(Recipient.address).in_(candidates)).limit(1))
    if recipient is None or recipient.read_at is not None:
        return
    recipient.read_at = now
    owners = await mailboxes.accounts_of(s, [original.from_mailbox_id])
    tx.emit("message.read", owners.get(original.from_mailbox_id, []), message_id=original.id,
            mailbox_id=original.from_mailbox_id, reader_mailbox=recipient.address, read_at=now.isoformat(),
            reader_name=recipient.display_name or recipient.address)
