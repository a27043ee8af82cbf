"""Per-mailbox state: read, favourite, to do, archived, the bin (restorable, emptied after 30 days),
and the counts per view and category.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from monsisra.domain.clock import iso, utcnow
from monsisra.domain.delegation import Right
from monsisra.domain.model import Access, Category, Role, View
from monsisra.services import audit, mailboxes
from monsisra.services.core import Actor, Core, Tx
from monsisra.services.errors import Invalid, NotFound
from monsisra.services.messages.placement import (
    bump_modseq,
    lock_mailboxes,
    prune_vanished,
    record_vanished,
    renew_uid,
)
from monsisra.store.models import (
    TRASH_VIEW,
    VIEW_SQL,
    Account,
    Delivery,
    DeliveryCount,
    Mailbox,
    Message,
    MessageAttachment,
    Recipient,
)

TRASH_KEEP = timedelta(days=30)


async def set_read(core: Core, actor: Actor, delivery_id: int, audit_rows: list[dict[str, Any]] = ()) -> None:
    """Mark read; ``audit_rows`` are written in the same transaction (the read itself)."""
    await _set_flags(core, actor, delivery_id, {"read": True}, audit_rows)


async def _set_flags(core: Core, actor: Actor, delivery_id: int, flags: dict[str, bool],
                     audit_rows: list[dict[str, Any]] = ()) -> None:
    now = utcnow()
    async with core.write() as tx:
        s = tx.session
        for row in audit_rows:
            audit.add(s, row)
        d = await s.get(Delivery, delivery_id)
        if d is None:
            raise NotFound("message introuvable")
        changed = {k: v for k, v in flags.items() if getattr(d, k) != v}
        if not changed:
            return
        # The mailbox first (see placement.lock_mailboxes). Archiving, the bin and back move the
        # message between IMAP folders: it takes a new uid, above any its new folder has shown.
        # Entering Favoris (flagged, or back from the bin flagged) gives it a new uid there.
        # The uids left behind are QRESYNC's expunge history (placement.record_vanished).
        moves = "archived" in changed or "deleted" in changed
        favorite_after = changed.get("favorite", d.favorite) and not changed.get("deleted", d.deleted)
        in_favorites = d.favorite and not d.deleted
        enters_favorites = favorite_after and not in_favorites
        old_uid, old_favorite_uid = d.uid, (d.favorite_uid or d.uid) if in_favorites else None
        if moves or enters_favorites:
            uid, modseq = await renew_uid(s, d.mailbox_id)
            if moves:
                d.uid = uid
                await record_vanished(s, d.mailbox_id, [old_uid], modseq)
            if enters_favorites:
                d.favorite_uid = uid
        else:
            modseq = await bump_modseq(s, d.mailbox_id)
        new_favorite_uid = (d.favorite_uid or d.uid) if favorite_after else None
        if old_favorite_uid is not None and old_favorite_uid != new_favorite_uid \
                and not (moves and old_favorite_uid == old_uid):
            await record_vanished(s, d.mailbox_id, [old_favorite_uid], modseq, favorites_only=True)
        for k, v in changed.items():
            setattr(d, k, v)
        if "deleted" in changed:
            d.deleted_at = now if d.deleted else None
        d.modseq = modseq
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
        access = await mailboxes.require_right(s, actor, mailbox_id, Right.FLAGS)
        delivery_id = await s.scalar(stmt.limit(1))
    if delivery_id is None:
        raise NotFound("message introuvable")
    # Done in someone else's mailbox (a delegate, a service member): on the record.
    rows = [] if access == Access.OWNER else [audit.entry(
        actor.account_id, "message.flags", object_type="message", object_id=message_id, mailbox_id=mailbox_id,
        client=actor.client, detail={"flags": flags, "access": access})]
    await _set_flags(core, actor, delivery_id, flags, rows)
    async with core.read() as s:
        d = await s.get(Delivery, delivery_id)
        assert d is not None
        return {"read": d.read, "favorite": d.favorite, "todo": d.todo, "archived": d.archived,
                "deleted": d.deleted, "deleted_at": iso(d.deleted_at)}


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
        sa.select(Delivery.id, Delivery.mailbox_id, Delivery.message_id, Delivery.uid)
        .where(sa.text(VIEW_SQL[TRASH_VIEW]), Delivery.deleted_at < now - TRASH_KEEP)
        .order_by(Delivery.deleted_at).limit(batch))).all()
    if not rows:
        return 0, 0
    boxes = sorted({r.mailbox_id for r in rows})
    await lock_mailboxes(s, boxes)
    await s.execute(sa.delete(Delivery).where(Delivery.id.in_([r.id for r in rows])))
    for mailbox_id in boxes:  # a removal is a change of the mailbox (IMAP expunge)
        modseq = await bump_modseq(s, mailbox_id)
        await record_vanished(s, mailbox_id, [r.uid for r in rows if r.mailbox_id == mailbox_id], modseq)
    await prune_vanished(s, now)
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


_COUNT_KEY = (DeliveryCount.deleted, DeliveryCount.role, DeliveryCount.category, DeliveryCount.read,
              DeliveryCount.archived, DeliveryCount.favorite, DeliveryCount.todo)


async def counts(core: Core, actor: Actor, mailbox_id: int) -> dict[str, Any]:
    """Unread/total per view and per category, from the mailbox's counters (``delivery_counts``,
    kept by the database in the same transaction as each change): the same cost at any size."""
    async with core.read() as s:
        await mailboxes.access_of(s, actor, mailbox_id)
        prefs = await s.scalar(sa.select(Account.inbox_categories).where(Account.id == actor.account_id))
        rows = (await s.execute(sa.select(*_COUNT_KEY, DeliveryCount.n).where(
            DeliveryCount.mailbox_id == mailbox_id, DeliveryCount.n > 0))).all()
        return tally(rows, prefs)


async def recount(core: Core, mailbox_id: int) -> list[tuple]:
    """The counters as a full scan of the mailbox would give them (checks of the triggers)."""
    async with core.read() as s:
        return sorted(tuple(r) for r in (await s.execute(
            sa.select(Delivery.deleted, Delivery.role, Delivery.category, Delivery.read, Delivery.archived,
                      Delivery.favorite, Delivery.todo, sa.func.count())
            .where(Delivery.mailbox_id == mailbox_id)
            .group_by(Delivery.deleted, Delivery.role, Delivery.category, Delivery.read, Delivery.archived,
                      Delivery.favorite, Delivery.todo))).all())


async def counters(core: Core, mailbox_id: int) -> list[tuple]:
    """The mailbox's counters as stored, in the shape of :func:`recount`."""
    async with core.read() as s:
        return sorted(tuple(r) for r in (await s.execute(sa.select(*_COUNT_KEY, DeliveryCount.n).where(
            DeliveryCount.mailbox_id == mailbox_id, DeliveryCount.n != 0))).all())


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
