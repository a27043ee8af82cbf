"""How a stored message enters mailboxes: one ``deliveries`` row per mailbox with a strictly
increasing ``uid`` and a ``modseq`` (ready for IMAP), its mailbox tokens in the text index, and the
events to publish after commit. The single way in for local sends, inbound SMTP and notices.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from monsisra.domain.clock import utcnow
from monsisra.domain.model import Role
from monsisra.domain.text import (
    fold,
)
from monsisra.services import mailboxes
from monsisra.services.core import Tx
from monsisra.store.models import (
    Delivery,
    Mailbox,
    Message,
)
from monsisra.store.reach import ImapVanished, ImapVanishedFloor


def new_message_id(domain: str) -> str:
    return f"<{uuid.uuid4().hex}@{domain}>"


# Statements of the delivery hot path, built once (building one costs more than running it).
_mailbox = Mailbox.__table__


_LOCK_MAILBOXES = (sa.select(_mailbox.c.id).where(_mailbox.c.id.in_(sa.bindparam("ids", expanding=True)))
                   .order_by(_mailbox.c.id).with_for_update(key_share=True))


_RESERVE_UIDS = (sa.update(_mailbox).where(_mailbox.c.id.in_(sa.bindparam("ids", expanding=True)))
                 .values(next_uid=_mailbox.c.next_uid + sa.bindparam("k", type_=sa.Integer),
                         modseq=_mailbox.c.modseq + sa.bindparam("k", type_=sa.Integer))
                 .returning(_mailbox.c.id, _mailbox.c.next_uid, _mailbox.c.modseq))


_INSERT_DELIVERIES = sa.insert(Delivery.__table__)


async def lock_mailboxes(session: AsyncSession, mailbox_ids) -> None:
    """Lock the rows of these mailboxes, in id order, before changing any of their deliveries.

    The rule of every transaction that changes deliveries: mailboxes first, in id order, then
    their deliveries (whose counters the database updates, ``delivery_counts``). Taken in another
    order, a flag change and a send into the same mailbox would wait on each other on PostgreSQL.
    SQLite has one writer at a time and needs no lock.
    """
    ids = sorted(set(mailbox_ids))
    if ids and session.bind.dialect.name != "sqlite":
        await session.execute(_LOCK_MAILBOXES, {"ids": ids})


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


VANISHED_KEEP_DAYS = 90


async def record_vanished(session: AsyncSession, mailbox_id: int, uids, modseq: int,
                          favorites_only: bool = False) -> None:
    """Remember uids that stop naming a message of the mailbox's IMAP folders, at ``modseq``
    (the change that removed them): QRESYNC answers exactly what vanished since a client's
    modseq (``mail_access.vanished_since``). ``favorites_only``: the uid left Favoris alone."""
    rows = [{"mailbox_id": mailbox_id, "uid": int(u), "modseq": modseq, "favorites_only": favorites_only,
             "removed_at": utcnow()} for u in uids]
    if rows:
        await session.execute(sa.insert(ImapVanished), rows)


async def prune_vanished(session: AsyncSession, now: datetime) -> int:
    """Forget removals older than 90 days; each mailbox's floor rises to the newest modseq
    forgotten, so that a client older than that is answered the whole list."""
    cutoff = now - timedelta(days=VANISHED_KEEP_DAYS)
    floors = (await session.execute(sa.select(ImapVanished.mailbox_id, sa.func.max(ImapVanished.modseq))
                                    .where(ImapVanished.removed_at < cutoff)
                                    .group_by(ImapVanished.mailbox_id))).all()
    for mailbox_id, modseq in floors:
        current = await session.get(ImapVanishedFloor, mailbox_id)
        if current is None:
            session.add(ImapVanishedFloor(mailbox_id=mailbox_id, modseq=modseq))
        elif current.modseq < modseq:
            current.modseq = modseq
    return (await session.execute(sa.delete(ImapVanished).where(ImapVanished.removed_at < cutoff))).rowcount


async def renew_uid(session: AsyncSession, mailbox_id: int) -> tuple[int, int]:
    """A fresh uid of the mailbox and its next modseq (a message changing IMAP folder)."""
    row = (await session.execute(
        sa.update(Mailbox).where(Mailbox.id == mailbox_id)
        .values(next_uid=Mailbox.next_uid + 1, modseq=Mailbox.modseq + 1)
        .returning(Mailbox.next_uid, Mailbox.modseq))).one()
    return row[0] - 1, row[1]


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
