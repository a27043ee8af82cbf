"""Read receipts we owe other operators (RFC 8098 ``displayed`` MDNs).

When a local user first reads an SMTP message carrying ``Disposition-Notification-To``, a
job is queued; when that address differs from the return path (RFC 8098 §2.1: a possible
abuse), the job waits for the user's consent (``ask``). The outbound worker sends the jobs.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from monsisra.domain.clock import utcnow
from monsisra.domain.delegation import Right
from monsisra.services import mailboxes
from monsisra.services.core import Actor, Core, Tx
from monsisra.services.errors import Conflict, NotFound
from monsisra.store.gateway import MdnJob
from monsisra.store.models import Delivery, Message


async def on_first_read(tx: Tx, delivery: Delivery, actor: Actor) -> None:
    """Called by ``messages`` in the transaction that first marks an incoming message read."""
    s = tx.session
    message = await s.get(Message, delivery.message_id)
    if message is None or message.origin != "smtp" or not message.receipt_requested:
        return
    headers = message.headers or {}
    notify = (headers.get("notify_to") or "").strip().lower()
    if not notify:
        return
    exists = await s.scalar(sa.select(MdnJob.id).where(MdnJob.message_id == message.id,
                                                       MdnJob.mailbox_id == delivery.mailbox_id))
    if exists is not None:
        return
    return_path = (headers.get("smtp_from") or "").strip().lower()
    automatic = notify == return_path
    now = utcnow()
    s.add(MdnJob(message_id=message.id, mailbox_id=delivery.mailbox_id, account_id=actor.account_id,
                 notify_to=notify, status="queued" if automatic else "ask",
                 next_attempt_at=now if automatic else None, created_at=now))
    await s.flush()
    if automatic:
        tx.outbox_changed()


def _view(job: MdnJob | None, message: Message) -> dict[str, Any]:
    return {"requested": bool(message.receipt_requested and (message.headers or {}).get("notify_to")),
            "notify_to": (message.headers or {}).get("notify_to"),
            "status": job.status if job else None,
            "mdn_pending": bool(job and job.status == "ask"),
            "detail": job.detail if job else None}


async def status(core: Core, actor: Actor, mailbox_id: int, message_id: int) -> dict[str, Any]:
    async with core.read() as s:
        await mailboxes.access_of(s, actor, mailbox_id)
        message = await _message_in(s, mailbox_id, message_id)
        job = await s.scalar(sa.select(MdnJob).where(MdnJob.message_id == message_id,
                                                     MdnJob.mailbox_id == mailbox_id))
        return _view(job, message)


async def respond(core: Core, actor: Actor, mailbox_id: int, message_id: int, send: bool = True) -> dict[str, Any]:
    """The user's answer to "send a read receipt?": queue the MDN, or decline it."""
    async with core.write() as tx:
        s = tx.session
        # A read receipt is sent in the mailbox's name: a delegate needs the right to send.
        await mailboxes.require_right(s, actor, mailbox_id, Right.SEND)
        message = await _message_in(s, mailbox_id, message_id)
        job = await s.scalar(sa.select(MdnJob).where(MdnJob.message_id == message_id,
                                                     MdnJob.mailbox_id == mailbox_id))
        if job is None:
            notify = ((message.headers or {}).get("notify_to") or "").strip().lower()
            if not (message.origin == "smtp" and message.receipt_requested and notify):
                raise Conflict("l'expéditeur n'a pas demandé d'accusé de lecture")
            job = MdnJob(message_id=message_id, mailbox_id=mailbox_id, account_id=actor.account_id,
                         notify_to=notify, status="ask", created_at=utcnow())
            s.add(job)
        if job.status == "ask":
            job.status = "queued" if send else "declined"
            job.next_attempt_at = utcnow() if send else None
            job.account_id = actor.account_id
            if send:
                tx.outbox_changed()
        await s.flush()
        return _view(job, message)


async def _message_in(s, mailbox_id: int, message_id: int) -> Message:
    found = await s.scalar(sa.select(Message).join(Delivery, Delivery.message_id == Message.id).where(
        Message.id == message_id, Delivery.mailbox_id == mailbox_id, Delivery.role == "in",
        Delivery.deleted.is_(False)).limit(1))
    if found is None:
        raise NotFound("message introuvable")
    return found
