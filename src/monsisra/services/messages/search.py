"""Full-text search inside one mailbox, newest first, fast for common and rare words alike.

A search returns the mailbox's deliveries whose message holds every query word (as a prefix)
and the mailbox's own index token, newest message first. Two ways give the same rows:

- **the text index** (FTS5 on SQLite, the GIN index of ``search_vector`` on PostgreSQL) gives
  every message of the store holding the words and this mailbox's token; the engine then keeps
  the mailbox's view and sorts. Its cost follows the number of matches in the store: a common
  word (« bilan ») in a mailbox of 500,000 deliveries costs hundreds of milliseconds.
- **windows**: walk the mailbox's deliveries newest message first by the unique
  (mailbox, message, role) index, a window of a few hundred to a few thousand rows at a time,
  and test each row's message against the words (``monsisra_words`` on SQLite, the ``@@`` of the
  stored tsvector through ``ts_match_vq`` on PostgreSQL, so no index is tempted), until the page
  is full. Its cost follows the number of rows walked: a common word fills a page in the
  first window.

The search starts with windows and hands the rest of the mailbox to the text index as soon
as the density of hits seen so far says the page would need more than ``WINDOW_BUDGET`` rows
(rare words): the windows cover message ids [lower, upper), the index the ids below ``lower``,
so the union is exactly the index's answer, in the same order (message id descending, then role).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from monsisra.services.messages.placement import MAILBOX_TOKEN
from monsisra.store.models import Delivery, Message

WINDOW_FIRST = 128  # rows of the first window; each next one is 4 times bigger, up to WINDOW_MAX
WINDOW_MAX = 8192
WINDOW_BUDGET = 2_000  # rows the windows may walk for one page before the text index takes over
MIN_SAMPLE = 128  # rows walked before the hit density is trusted (a rare word: none in the first window)

_FTS = sa.table("message_fts", sa.column("rowid", sa.Integer))


def index_statement(dialect: str, columns, mailbox_id: int, terms: list[str]) -> sa.Select:
    """Messages of one mailbox matching every term (as a prefix), driven by the text index."""
    if dialect == "sqlite":
        query = f"{MAILBOX_TOKEN}{mailbox_id} AND " + " AND ".join(f'"{t}"*' for t in terms)
        return (sa.select(*columns).select_from(_FTS)
                .join(Delivery, Delivery.message_id == _FTS.c.rowid)
                .join(Message, Message.id == Delivery.message_id)
                .where(sa.text("message_fts MATCH :fts").bindparams(fts=query)))
    return (sa.select(*columns).select_from(Message).join(Delivery, Delivery.message_id == Message.id)
            .where(sa.text("messages.search_vector @@ to_tsquery('simple', :tsq)").bindparams(tsq=_tsquery(
                mailbox_id, terms))))


def _tsquery(mailbox_id: int, terms: list[str]) -> str:
    return f"{MAILBOX_TOKEN}{mailbox_id} & " + " & ".join(f"{t}:*" for t in terms)


def _window_match(dialect: str, mailbox_id: int, terms: list[str]) -> sa.TextClause:
    """The per-row test of a window: the same words and mailbox token as the index query."""
    if dialect == "sqlite":
        words = f"{MAILBOX_TOKEN}{mailbox_id} " + " ".join(f"{t}*" for t in terms)
        return sa.text("monsisra_words(messages.search_text, :words)").bindparams(words=words)
    # ts_match_vq is what @@ calls; as a function it never leads the planner to the GIN index.
    return sa.text("ts_match_vq(messages.search_vector, to_tsquery('simple', :wtsq))").bindparams(
        wtsq=_tsquery(mailbox_id, terms))


def _order(stmt: sa.Select, first=Delivery.message_id) -> sa.Select:
    # Ties (one message twice in a view: sent to oneself) by role, the order in which SQLite's
    # index path meets them through the unique (mailbox, message, role) index.
    return stmt.order_by(first.desc(), Delivery.role)


async def search_rows(s: AsyncSession, columns, mailbox_id: int, terms: list[str], conditions: list[Any],
                      before: int | None, want: int, *, strategy: str = "auto") -> list[Any]:
    """Up to ``want`` rows of ``columns`` for the deliveries of ``mailbox_id`` meeting
    ``conditions`` whose message matches ``terms``, message id below ``before`` (the cursor),
    newest message first. ``strategy``: ``auto`` (windows, then the index), ``index``, ``window``
    (windows to the end of the mailbox: for tests)."""
    dialect = s.bind.dialect.name
    if strategy == "index":
        return await _index_rows(s, dialect, columns, mailbox_id, terms, conditions, before, want)
    rows: list[Any] = []
    upper, walked, size = before, 0, WINDOW_FIRST
    match = _window_match(dialect, mailbox_id, terms)
    while len(rows) < want:
        if strategy == "auto" and walked >= MIN_SAMPLE:
            needed = (want - len(rows)) * walked / max(len(rows), 0.5)
            if walked + needed > WINDOW_BUDGET:
                break
        in_box = [Delivery.mailbox_id == mailbox_id]
        if upper is not None:
            in_box.append(Delivery.message_id < sa.literal(upper, sa.BigInteger))
        # The lowest message id of the next ``size`` deliveries (covering unique index).
        lower = await s.scalar(sa.select(Delivery.message_id).where(*in_box)
                               .order_by(Delivery.message_id.desc()).limit(1).offset(size - 1))
        window = in_box + ([Delivery.message_id >= lower] if lower is not None else [])
        stmt = (sa.select(*columns).select_from(Delivery).join(Message, Message.id == Delivery.message_id)
                .where(*window, *conditions, match))
        rows.extend((await s.execute(_order(stmt).limit(want - len(rows)))).all())
        walked += size
        if lower is None:
            return rows  # the whole mailbox (below the cursor) was walked
        upper, size = lower, min(size * 4, WINDOW_MAX)
    if len(rows) < want:
        rows.extend(await _index_rows(s, dialect, columns, mailbox_id, terms, conditions, upper, want - len(rows)))
    return rows


async def _index_rows(s: AsyncSession, dialect: str, columns, mailbox_id: int, terms: list[str],
                      conditions: list[Any], bound: int | None, want: int) -> list[Any]:
    if dialect == "postgresql":
        # A generic plan of the prepared statement would ignore how rare the words are.
        await s.execute(sa.text("SET LOCAL plan_cache_mode = force_custom_plan"))
    stmt = index_statement(dialect, columns, mailbox_id, terms).where(
        Delivery.mailbox_id == mailbox_id, *conditions)
    if bound is not None:
        # On the index's own key: a bound on deliveries.message_id leads SQLite to walk the
        # mailbox and run the MATCH once per row (minutes for a 250k mailbox).
        key = _FTS.c.rowid if dialect == "sqlite" else Message.id
        stmt = stmt.where(key < sa.literal(bound, sa.BigInteger))
    # Ordered by the index's own key, so that the engine can stop at the first page.
    # On SQLite by the FTS rowid alone (ties come in role order through the unique index):
    # any second key makes it sort every match first.
    stmt = stmt.order_by(_FTS.c.rowid.desc()) if dialect == "sqlite" else _order(stmt, Message.id)
    return list((await s.execute(stmt.limit(want))).all())
