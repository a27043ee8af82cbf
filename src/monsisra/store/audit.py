"""The audit log's append: entries wait on the transaction and are chained when it commits.

``add`` keeps an entry on the session (async or sync); just before the transaction commits, the
``before_commit`` hook below flushes everything else, locks the chain head (one row, ``FOR UPDATE``
on PostgreSQL; SQLite writers are already serialised by ``BEGIN IMMEDIATE``), numbers and hashes
the entries after it (:mod:`domain.audit_chain`), inserts them in one statement and moves the head.
Taking the lock last keeps it for the shortest time (the commit itself) and after every other row
lock of the transaction, so that two writers cannot wait on each other: concurrent writers on
PostgreSQL queue on the head instead of forking the chain. A rolled-back transaction leaves
nothing, entries included.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, Session, mapped_column

from monsisra.domain import audit_chain
from monsisra.store.models import AuditEvent, Base
from monsisra.store.types import Line

PENDING = "monsisra.audit.pending"
HEAD_ID = 1


class AuditHead(Base):
    """The last entry of the chain (one row, id 1): its position and hash. Locked by every append."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(primary_key=True)
    seq: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    hash: Mapped[str] = mapped_column(Line(64), default=audit_chain.GENESIS)


_log = AuditEvent.__table__
_head = AuditHead.__table__
_INSERT = sa.insert(_log)
_LOCK_HEAD = sa.select(_head.c.seq, _head.c.hash).where(_head.c.id == HEAD_ID).with_for_update()
_MOVE_HEAD = sa.update(_head).where(_head.c.id == HEAD_ID)


def add(session: Any, entry: dict[str, Any]) -> None:
    """Queue an entry (columns of ``audit_log`` but the chain's) on ``session``'s transaction."""
    session.info.setdefault(PENDING, []).append(entry)


def _seal(session: Session) -> None:
    entries = session.info.pop(PENDING, None)
    if not entries:
        return
    session.flush()
    conn = session.connection()
    head = conn.execute(_LOCK_HEAD).first()
    if head is None:  # a database migrated before the head existed, or emptied by hand
        conn.execute(sa.insert(_head).values(id=HEAD_ID, seq=0, hash=audit_chain.GENESIS))
        head_seq, head_hash = 0, audit_chain.GENESIS
    else:
        head_seq, head_hash = head.seq, head.hash
    seq, last = audit_chain.link(entries, head_seq, head_hash)
    conn.execute(_INSERT, entries)
    conn.execute(_MOVE_HEAD.values(seq=seq, hash=last))


def _forget(session: Session) -> None:
    session.info.pop(PENDING, None)


sa.event.listen(Session, "before_commit", _seal)
sa.event.listen(Session, "after_rollback", _forget)
