"""Outbound MSSanté mail: the durable outbox and the worker that delivers it by SMTP.

``messages.send`` queues one ``Recipient`` row per external address (status ``queued``).
The worker claims due rows (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, with a lease so that a
crashed worker's rows come back), renders the message as MIME (with an IHE_XDM archive when a
PDF is linked to a patient), delivers it over STARTTLS to the relay or the domain's MX, and
records the outcome: ``sent``, ``retrying`` (4xx, back-off) or ``failed`` (5xx or expiry, with
a non-delivery notice in the sender's mailbox). Read receipts we owe (``gw_mdn``) go the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from monsisra.config import Settings
from monsisra.domain.addresses import domain_of
from monsisra.domain.clock import as_utc, in_paris, iso, utcnow
from monsisra.domain.ins import OID_NIA, OID_NIR
from monsisra.domain.mail import mime, xdm
from monsisra.domain.mail import reports as mdn_mime
from monsisra.domain.mail.headers import HeaderError
from monsisra.domain.model import Category, Role
from monsisra.domain.text import preview
from monsisra.services import mailboxes, messages, trust
from monsisra.services.core import Actor, Core, Tx
from monsisra.services.errors import Forbidden, NotFound
from monsisra.store.gateway import MdnJob, OutboundAttempt
from monsisra.store.models import Account, Attachment, Mailbox, Message, MessageAttachment, Patient, Recipient

log = logging.getLogger(__name__)
LEASE = timedelta(minutes=10)
BATCH = 20
DUE_SQL = "status IN ('queued', 'retrying')"  # literally the partial index's condition


@dataclass
class Outcome:
    code: int | None  # None: no SMTP answer (network, TLS, DNS)
    text: str
    host: str = ""
    permanent: bool = False

    @property
    def ok(self) -> bool:
        return self.code is not None and 200 <= self.code < 300

    @property
    def is_permanent(self) -> bool:
        return self.permanent or (self.code is not None and 500 <= self.code < 600)


# How mail leaves: (settings, domain, envelope sender, recipients, bytes) → outcome per recipient.
# The gateway's SMTP client (``gateway/smtp_client.py``) is the one the server installs; the rules
# here never depend on the transport above them.
Send = Callable[[Settings, str, str, list[str], bytes], Awaitable[dict[str, Outcome]]]


class Worker:
    """The delivery loop of one process; several processes may run one each (PostgreSQL)."""

    def __init__(self, core: Core, send: Send) -> None:
        self.core = core
        self.send = send
        self._wake = asyncio.Event()
        self._stopped = False

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()

    async def run(self) -> None:
        while not self._stopped:
            self._wake.clear()  # a wake-up during the pass below is kept for the wait after it
            try:
                done = await process_due(self.core, self.send)
            except Exception:
                log.exception("outbound worker pass failed")
                done = 0
            if done == 0 and not self._stopped:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.core.settings.outbound_poll_seconds)


async def process_due(core: Core, send: Send) -> int:
    """One pass: deliver what is due; returns how many recipients and receipts were handled."""
    recipients = await _claim(core, Recipient)
    by_message: dict[tuple[int, str], list[tuple[int, str]]] = defaultdict(list)
    for rid, message_id, address in recipients:
        by_message[(message_id, domain_of(address))].append((rid, address))
    # One message that cannot be delivered, for whatever reason, must never hold up the others:
    # each group is attempted on its own, and an unexpected error fails it alone, with its reason.
    for (message_id, domain), group in by_message.items():
        try:
            await _deliver_group(core, send, message_id, domain, group)
        except Exception as exc:
            log.exception("outbound message %s to %s failed", message_id, domain)
            await _record(core, message_id, [(rid, _unexpected(exc)) for rid, _ in group])
    jobs = await _claim(core, MdnJob)
    for job_id, _message_id, _address in jobs:
        try:
            await _deliver_mdn(core, send, job_id)
        except Exception as exc:
            log.exception("read receipt %s failed", job_id)
            await _record_mdn(core, job_id, _unexpected(exc))
    return len(recipients) + len(jobs)


def _unexpected(exc: Exception) -> Outcome:
    """A failure of ours (rendering, a bug): permanent, so the queue moves on, and said plainly."""
    if isinstance(exc, HeaderError):
        return Outcome(None, f"message impossible à mettre en forme : {exc}", permanent=True)
    return Outcome(None, f"erreur interne lors de l'envoi ({type(exc).__name__}) ; "
                         "le message n'a pas été envoyé", permanent=True)


async def _claim(core: Core, model) -> list[tuple[int, int, str]]:
    now = utcnow()
    address_col = model.address if model is Recipient else model.notify_to
    async with core.write() as tx:
        stmt = (sa.select(model.id, model.message_id, address_col)
                .where(sa.text(DUE_SQL), model.next_attempt_at <= now)
                .order_by(model.next_attempt_at).limit(BATCH))
        if not core.db.is_sqlite:
            stmt = stmt.with_for_update(skip_locked=True)
        rows = [tuple(r) for r in (await tx.session.execute(stmt)).all()]
        if rows:
            # The lease: should this process die mid-delivery, the rows become due again later.
            await tx.session.execute(sa.update(model).where(model.id.in_([r[0] for r in rows]))
                                     .values(next_attempt_at=now + LEASE))
    return rows  # type: ignore[return-value]


# --- rendering ---------------------------------------------------------------------------------


async def render(core: Core, message_id: int) -> tuple[str, bytes]:
    """(envelope sender, RFC 5322 bytes) of one of our messages."""
    settings = core.settings
    async with core.read() as s:
        m = await s.get(Message, message_id)
        if m is None:
            raise NotFound("message introuvable")
        recips = (await s.execute(sa.select(Recipient.kind, Recipient.address, Recipient.display_name)
                                  .where(Recipient.message_id == message_id).order_by(Recipient.id))).all()
        atts = (await s.execute(sa.select(Attachment).join(MessageAttachment,
                                                           MessageAttachment.attachment_id == Attachment.id)
                                .where(MessageAttachment.message_id == message_id)
                                .order_by(MessageAttachment.position))).scalars().all()
        patient = await s.get(Patient, m.patient_id) if m.patient_id else None
        author = await s.get(Account, m.author_account_id) if m.author_account_id else None
        parent = await s.get(Message, m.in_reply_to_id) if m.in_reply_to_id else None
    loop = asyncio.get_running_loop()
    files = [mime.OutgoingFile(a.filename, a.content_type, await loop.run_in_executor(None, core.blobs.read, a.sha256))
             for a in atts]
    headers = {"X-MSS-NIL": settings.nil}
    if m.no_reply:
        headers["X-MSS-MES"] = "FIN"
    if m.receipt_requested:
        headers["Disposition-Notification-To"] = m.sender_address
    pdf = next((f for f in files if f.content_type == "application/pdf"), None)
    if patient is not None and pdf is not None:
        type_code, type_name = (("11502-2", "CR d'examens biologiques") if m.category == Category.RESULT
                                else ("11488-4", "Note de consultation"))
        qualified = (patient.ins_oid in (OID_NIR, OID_NIA) and patient.family_name and patient.given_names
                     and patient.birth_date and patient.sex)
        archive = xdm.build(
            pdf.data, title=m.subject or pdf.filename, type_code=type_code, type_name=type_name,
            patient=xdm.XdmPatient(patient.ins, patient.ins_oid, patient.family_name, patient.given_names,
                                   patient.birth_date, patient.sex),
            author=xdm.XdmAuthor(author.national_id or "" if author else "", author.last_name if author else "",
                                 author.first_name if author else "", m.sender_name),
            source_address=m.sender_address, at=m.sent_at or m.created_at)
        files.append(mime.OutgoingFile("IHE_XDM.ZIP", "application/zip", archive))
        headers["X-MSS-CODECDA"] = type_code
        headers["X-MSS-INS"] = "O" if qualified else "N"
    data = mime.build(
        message_id=m.message_id, sender=(m.sender_name, m.sender_address),
        to=[(n, a) for k, a, n in recips if k == "to"], cc=[(n, a) for k, a, n in recips if k == "cc"],
        subject=m.subject, text=m.body, html=m.html, date=as_utc(m.sent_at or m.created_at), files=files,
        headers=headers, in_reply_to=parent.message_id if parent else None,
        references=[parent.message_id] if parent else None)
    return m.sender_address, data


# --- one message to one domain -------------------------------------------------------------------


def backoff(settings: Settings, attempts: int) -> timedelta:
    return timedelta(seconds=min(settings.outbound_retry_base_seconds * 2 ** max(attempts - 1, 0), 3600))


async def _deliver_group(core: Core, send: Send, message_id: int, domain: str, group: list[tuple[int, str]]
                         ) -> None:
    settings = core.settings
    async with core.read() as s:
        trusted = await trust.is_trusted(s, domain, settings.domain)
    rcpts = [a for _, a in group]
    if not trusted:
        outcomes = {a: Outcome(None, f"domaine {domain} hors de l'espace de confiance MSSanté", permanent=True)
                    for a in rcpts}
    else:
        try:
            mail_from, data = await render(core, message_id)
        except NotFound:
            return
        except HeaderError as exc:
            await _record(core, message_id, [(rid, _unexpected(exc)) for rid, _ in group])
            return
        outcomes = await send(settings, domain, mail_from, rcpts, data)
    await _record(core, message_id, [(rid, outcomes[a]) for rid, a in group])


async def _record(core: Core, message_id: int, results: list[tuple[int, Outcome]]) -> None:
    settings = core.settings
    now = utcnow()
    async with core.write() as tx:
        s = tx.session
        message = await s.get(Message, message_id)
        if message is None:
            return
        failures: list[tuple[str, str]] = []
        changes = []
        for rid, outcome in results:
            r = await s.get(Recipient, rid)
            if r is None or r.status not in ("queued", "retrying"):
                continue
            r.attempts += 1
            detail = f"{outcome.code} {outcome.text}".strip() if outcome.code else outcome.text
            age = now - as_utc(message.sent_at or message.created_at)
            if outcome.ok:
                r.status, r.next_attempt_at, result = "sent", None, "sent"
            elif outcome.is_permanent or age >= timedelta(seconds=settings.outbound_retry_seconds):
                if not outcome.is_permanent:
                    detail = f"délai de remise dépassé ; dernière erreur : {detail}"
                r.status, r.next_attempt_at, result = "failed", None, "failed"
                failures.append((r.address, detail))
            else:
                r.status, r.next_attempt_at, result = "retrying", now + backoff(settings, r.attempts), "retry"
            r.status_detail, r.status_at = detail[:2000], now
            s.add(OutboundAttempt(recipient_id=r.id, at=now, host=outcome.host[:260], code=outcome.code,
                                  outcome=result, detail=detail[:2000]))
            changes.append({"address": r.address, "status": r.status, "detail": r.status_detail})
        if failures and message.from_mailbox_id is not None:
            await _non_delivery_notice(tx, settings, message, failures)
        if changes and message.from_mailbox_id is not None:
            owners = await mailboxes.accounts_of(s, [message.from_mailbox_id])
            tx.emit("message.delivery", owners.get(message.from_mailbox_id, []), message_id=message.id,
                    mailbox_id=message.from_mailbox_id, recipients=changes)


async def _non_delivery_notice(tx: Tx, settings: Settings, original: Message, failures: list[tuple[str, str]]) -> None:
    """A clear French notice in the sender's mailbox, threaded under the original."""
    s = tx.session
    sent = in_paris(original.sent_at or original.created_at).strftime("%d/%m/%Y à %H:%M")
    one = len(failures) == 1
    lines = "\n".join(f"- {address} : {reason}" for address, reason in failures)
    body = (f"Votre message « {original.subject} » envoyé le {sent} n'a pas pu être remis "
            f"{'au destinataire suivant' if len(failures) == 1 else 'aux destinataires suivants'} :\n\n"
            f"{lines}\n\nLe message n'a pas été distribué à {'cette adresse' if one else 'ces adresses'}. "
            "Vérifiez l'adresse dans l'annuaire, ou joignez le destinataire par un autre moyen.\n"
            "Les autres destinataires ne sont pas concernés.\n\n— Service de messagerie MonSisra")
    subject = f"Non distribué : {original.subject}"[:998]
    now = utcnow()
    notice = Message(message_id=messages.new_message_id(settings.domain),
                     sender_address=f"postmaster@{settings.domain}",
                     sender_name="Messagerie MonSisra", subject=subject, body=body, preview=preview(body),
                     category=Category.MSSANTE, created_at=now, sent_at=now, origin="local",
                     in_reply_to_id=original.id, thread_id=original.thread_id or original.id,
                     headers={"non_delivery": {"message_id": original.id,
                                               "recipients": [a for a, _ in failures]}},
                     search_text=messages.build_search_text(subject, body, "Messagerie MonSisra",
                                                            f"postmaster@{settings.domain}", []))
    s.add(notice)
    await s.flush()
    mailbox = await s.get(Mailbox, original.from_mailbox_id)
    s.add(Recipient(message_id=notice.id, kind="to", address=mailbox.address if mailbox else "",
                    display_name=mailbox.display_name if mailbox else "", mailbox_id=original.from_mailbox_id,
                    status="delivered", status_at=now))
    await messages.deliver(tx, notice, [(original.from_mailbox_id, Role.IN)])


async def record_outcomes(core: Core, message_id: int, outcomes: dict[str, Outcome]) -> None:
    """Record what the other operators answered for some external recipients of one of our
    messages (by address): exactly what the worker does after a delivery attempt — new status,
    next attempt or non-delivery notice, and the ``message.delivery`` event to the sender's pages.
    Recipients already settled (sent, failed) are left as they are."""
    async with core.read() as s:
        rows = (await s.execute(sa.select(Recipient.id, Recipient.address).where(
            Recipient.message_id == message_id, Recipient.mailbox_id.is_(None),
            Recipient.address.in_(list(outcomes))))).all()
    await _record(core, message_id, [(rid, outcomes[address]) for rid, address in rows])


# --- read receipts we send ---------------------------------------------------------------------


async def _deliver_mdn(core: Core, send: Send, job_id: int) -> None:
    settings = core.settings
    async with core.read() as s:
        job = await s.get(MdnJob, job_id)
        if job is None:
            return
        message = await s.get(Message, job.message_id)
        mailbox = await s.get(Mailbox, job.mailbox_id)
        trusted = await trust.is_trusted(s, domain_of(job.notify_to), settings.domain)
    if message is None or mailbox is None:
        return
    if not trusted:
        outcome = Outcome(None, "domaine hors de l'espace de confiance MSSanté", permanent=True)
    else:
        data = mdn_mime.build(from_addr=(mailbox.display_name, mailbox.address), to_addr=job.notify_to,
                              original_message_id=message.message_id, original_subject=message.subject,
                              final_recipient=mailbox.address, reporting_ua=f"{settings.domain}; {settings.nil}",
                              message_id=messages.new_message_id(settings.domain), date=utcnow())
        # RFC 8098 §2.1: an MDN is sent with a null reverse path.
        outcome = (await send(settings, domain_of(job.notify_to), "", [job.notify_to], data))[job.notify_to]
    await _record_mdn(core, job_id, outcome)


async def _record_mdn(core: Core, job_id: int, outcome: Outcome) -> None:
    settings = core.settings
    now = utcnow()
    async with core.write() as tx:
        job = await tx.session.get(MdnJob, job_id)
        if job is None or job.status not in ("queued", "retrying"):
            return
        job.attempts += 1
        detail = f"{outcome.code} {outcome.text}".strip() if outcome.code else outcome.text
        age = now - as_utc(job.created_at)
        if outcome.ok:
            job.status, job.next_attempt_at = "sent", None
        elif outcome.is_permanent or age >= timedelta(seconds=settings.outbound_retry_seconds):
            job.status, job.next_attempt_at = "failed", None
        else:
            job.status, job.next_attempt_at = "retrying", now + backoff(settings, job.attempts)
        job.detail = detail[:2000]
        tx.session.add(OutboundAttempt(mdn_id=job.id, at=now, host=outcome.host[:260], code=outcome.code,
                                       outcome={"sent": "sent", "failed": "failed"}.get(job.status, "retry"),
                                       detail=detail[:2000]))


# --- views ---------------------------------------------------------------------------------------



async def outbox(core: Core, actor: Actor, status: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
    """The platform's outbox for administrators: queued, retrying and failed recipients."""
    if not actor.is_admin:
        raise Forbidden("réservé aux administrateurs de la plateforme")
    wanted = [status] if status else ["queued", "retrying", "failed"]
    async with core.read() as s:
        rows = (await s.execute(
            sa.select(Recipient, Message.subject, Message.sender_address, Message.sent_at)
            .join(Message, Message.id == Recipient.message_id)
            .where(Recipient.mailbox_id.is_(None), Recipient.status.in_(wanted))
            .order_by(Recipient.id.desc()).limit(max(1, min(limit, 1000))))).all()
        return [{"recipient_id": r.id, "message_id": r.message_id, "subject": subject, "sender": sender,
                 "address": r.address, "status": r.status, "detail": r.status_detail, "attempts": r.attempts,
                 "next_attempt_at": iso(r.next_attempt_at), "sent_at": iso(sent_at),
                 "status_at": iso(r.status_at)} for r, subject, sender, sent_at in rows]


async def delivery(core: Core, actor: Actor, message_id: int) -> list[dict[str, Any]]:
    """Delivery status per external recipient of a message, for the sending mailbox's users."""
    async with core.read() as s:
        await messages.require_sender_access(s, actor, message_id)
        return await _delivery_rows(s, message_id)


async def _delivery_rows(s: AsyncSession, message_id: int) -> list[dict[str, Any]]:
    rows = await s.scalars(sa.select(Recipient).where(Recipient.message_id == message_id,
                                                      Recipient.mailbox_id.is_(None)).order_by(Recipient.id))
    return [{"address": r.address, "kind": r.kind, "status": r.status, "detail": r.status_detail,
             "attempts": r.attempts, "status_at": iso(r.status_at), "next_attempt_at": iso(r.next_attempt_at),
             "read_at": iso(r.read_at)} for r in rows]
