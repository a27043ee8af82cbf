"""Lists of two-sided requests (support requests, tele-expertises): the actor's rows on one side
(their mailboxes on that side's column), optionally in one state, newest first and bounded, each
with the side(s) the actor stands on. Checking ``role`` and ``state`` stays with each capability
(its own French words)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import InstrumentedAttribute

from monsisra.services.core import Actor, Core
from monsisra.store.models import MailboxAccess

MAX_LIMIT = 200


async def by_side(core: Core, actor: Actor, stmt: sa.Select, *, sides: dict[str, InstrumentedAttribute],
                  role: str, newest: InstrumentedAttribute, state_column: InstrumentedAttribute | None = None,
                  state: str | None = None, limit: int = 100) -> list[tuple[Any, set[str]]]:
    """``stmt``'s rows (first entity: the request) where ``sides[role]`` is one of the actor's
    mailboxes, newest first (``newest``), at most ``limit`` (1 to 200), each with its sides."""
    limit = max(1, min(limit, MAX_LIMIT))
    mine = sa.select(MailboxAccess.mailbox_id).where(MailboxAccess.account_id == actor.account_id)
    stmt = stmt.where(sides[role].in_(mine))
    if state and state_column is not None:
        stmt = stmt.where(state_column == state)
    async with core.read() as s:
        rows = (await s.execute(stmt.order_by(newest.desc()).limit(limit))).all()
        boxes = set(await s.scalars(mine))
    return [(row, {name for name, column in sides.items() if getattr(row[0], column.key) in boxes}) for row in rows]
