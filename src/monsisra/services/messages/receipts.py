"""Who read a sent message, and where each recipient stands (delivered, read, queued, retrying,
failed): for the sending mailbox's users only.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from monsisra.domain.clock import iso
from monsisra.domain.model import Role
from monsisra.services import mailboxes
from monsisra.services.core import Actor, Core
from monsisra.services.errors import NotFound
from monsisra.store.models import (
    Account,
    Delivery,
    Mailbox,
    Message,
    Recipient,
)


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
                "next_attempt_at": iso(r.next_attempt_at) if r.status == "retrying" else None,
                "read_at": iso(read_at),
                "read_by": reader if r.mailbox_kind and r.mailbox_kind != "PER" else (reader if reader else None),
            })
        return out


def _name_parts(display_name: str) -> tuple[str, ...]:
    words = [w for w in display_name.replace("Dr ", "").split() if w[:1].isalpha()]
    return (words[0], words[-1]) if len(words) >= 2 else tuple(words)
