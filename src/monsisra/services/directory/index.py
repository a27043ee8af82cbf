"""The rebuild of the search index from the national tables, in helper processes, and the
per-section word statistics that guide PostgreSQL's plans.
"""

from __future__ import annotations

import collections
import json
import math
from collections.abc import AsyncIterator, Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

import monsisra.services.directory.common as common
import monsisra.services.directory.freshness as freshness
import monsisra.services.directory.pool as pool
from monsisra.domain import directory_search as ds
from monsisra.services.core import Core
from monsisra.services.directory.common import COMMON_SHARE, WORD_SHARES, Progress, insert_tuples, is_postgres
from monsisra.services.directory.documents import (
    ActivityRow,
    BoxRow,
    IndexRows,
    PersonRow,
    professional_rows,
    row_columns,
    service_rows,
)
from monsisra.services.directory.local import sync_local
from monsisra.services.directory.planner import STATS
from monsisra.services.directory.pool import HelperPool, Pipeline
from monsisra.store.db import among
from monsisra.store.directory import (
    FTS_TABLE,
    SECTIONS,
    WORD_COUNTS,
    DirActivity,
    DirMailbox,
    DirMeta,
    DirOrganisation,
    DirPerson,
    DirSearch,
    DirTermKey,
    word_counts_sql,
    word_counts_value,
)


async def _national_batches(core: Core, session: AsyncSession) -> AsyncIterator[tuple[Callable[..., IndexRows],
                                                                                      tuple]]:
    """National entries in ranking order, as batches of rows for :func:`professional_rows` and
    :func:`service_rows` (streamed: memory stays flat)."""
    m, p = DirMailbox, DirPerson
    professionals = sa.union_all(
        sa.select(m.sort_key.label("sk"), sa.literal("m").label("src"), m.id.label("id"))
        .where(m.source == "national", m.active.is_(True), m.kind == "PER"),
        sa.select(p.sort_key.label("sk"), sa.literal("p").label("src"), p.id.label("id"))
        .where(p.active.is_(True), ~sa.exists().where(m.national_id == p.national_id, m.kind == "PER",
                                                       m.active.is_(True))),
    ).subquery()
    # Byte order on both engines (PostgreSQL's locale collation would order, and so rank, differently).
    pg = is_postgres(session)
    sort_key = professionals.c.sk.collate("C") if pg else professionals.c.sk
    stmt = sa.select(professionals.c.src, professionals.c.id).order_by(sort_key, professionals.c.src,
                                                                        professionals.c.id)
    mt, pt, at = m.__table__, p.__table__, DirActivity.__table__
    seq = 0
    conn = await session.connection()  # Core rows: the ORM's per-row handling is not needed here
    result = await conn.stream(stmt)
    async for chunk in result.partitions(common.BATCH):
        mids = [r.id for r in chunk if r.src == "m"]
        pids = [r.id for r in chunk if r.src == "p"]
        async with core.read() as rs:
            box_rows = (await rs.execute(sa.select(*row_columns(mt, BoxRow)).where(among(mt.c.id, mids, pg)))).all()
            nids = {b.national_id for b in box_rows} - {""}
            boxes = [tuple(b) for b in box_rows]
            people = [tuple(x) for x in (await rs.execute(sa.select(*row_columns(pt, PersonRow)).where(
                sa.or_(among(pt.c.id, pids, pg), among(pt.c.national_id, nids, pg))))).all()]
            person_ids = [x[0] for x in people]
            activities = [tuple(a) for a in (await rs.execute(
                sa.select(*row_columns(at, ActivityRow))
                .where(among(at.c.person_id, person_ids, pg), at.c.active.is_(True))
                .order_by(at.c.person_id, at.c.id))).all()]
        yield professional_rows, (seq, [(r.src, r.id) for r in chunk], boxes, people, activities)
        seq += len(chunk)
    stmt = (sa.select(*row_columns(mt, BoxRow)).where(mt.c.source == "national", mt.c.active.is_(True),
                                                    mt.c.kind != "PER")
            .order_by(mt.c.sort_key.collate("C") if pg else mt.c.sort_key, mt.c.id))
    result = await conn.stream(stmt)
    seq = 0
    async for chunk in result.partitions(common.BATCH):
        org_ids = {b.organisation_id for b in chunk if b.organisation_id}
        async with core.read() as rs:
            org_places = dict((await rs.execute(sa.select(DirOrganisation.id, DirOrganisation.commune_code).where(
                among(DirOrganisation.id, org_ids, pg)))).all()) if org_ids else {}
        yield service_rows, (seq, [tuple(b) for b in chunk], org_places)
        seq += len(chunk)


async def index_count(core: Core) -> int:
    async with core.read() as s:
        return await s.scalar(sa.select(sa.func.count()).select_from(DirSearch)) or 0


async def rebuild_index(core: Core, progress: Progress | None = None) -> int:
    """Rebuild the national part of the search index and the typo vocabulary; returns entries indexed."""
    await sync_local(core, force=True)
    total = 0
    vocabulary: collections.Counter = collections.Counter()
    table = DirSearch.__table__
    async with core.read() as s:
        expected = await s.scalar(sa.select(sa.func.count()).select_from(DirMailbox).where(
            DirMailbox.source == "national", DirMailbox.active.is_(True))) or 0
    async with core.write() as tx:
        s = tx.session
        pg = is_postgres(s)
        await s.execute(sa.delete(table).where(table.c.is_local.is_(False)))
        if pg:
            for name in SECTIONS:
                await s.execute(sa.text(f"DROP INDEX IF EXISTS ix_dir_search_tsv_{name}"))

        async def store(keep: int | None = None) -> None:
            nonlocal total
            async for columns, rows, words in helpers.results(keep):
                vocabulary.update(words)
                await writes.submit(insert_tuples(s, table, columns, rows))
                total += len(rows)
                if progress:
                    progress("index", total, max(expected, total))

        # Helpers build the entries of a batch while this process reads the next and writes the last.
        with HelperPool(inline=expected < pool.HELPERS_ABOVE) as helpers:
            async with core.read() as rs, Pipeline() as writes:
                async for build, args in _national_batches(core, rs):
                    helpers.submit(build, *args)
                    await store()
                await store(keep=0)
        if pg:
            # A GIN index is built much faster in one go, with room to sort, than row by row.
            await s.execute(sa.text("SET LOCAL maintenance_work_mem = '512MB'"))
            for name in SECTIONS:  # one GIN index per section: a section's query reads only its postings
                await s.execute(sa.text(f"CREATE INDEX ix_dir_search_tsv_{name} ON dir_search USING gin (tsv) "
                                        f"WHERE section = '{name}'"))
            await _store_word_shares(s, total)
            await _store_word_counts(s)
            STATS.clear()
        else:
            await s.execute(sa.text(f"INSERT INTO {FTS_TABLE}({FTS_TABLE}) VALUES ('rebuild')"))
        local_words = (await s.execute(sa.select(table.c.text).where(table.c.is_local.is_(True)))).scalars().all()
        for text in local_words:
            vocabulary.update({w for w in text.split() if len(w) >= 3 and not w.isdigit()
                               and not w.startswith(ds.MARKER_PREFIXES)})
        await freshness.stamp(s)  # serving processes notice it and drop what they knew (freshness)
        await s.execute(sa.delete(DirTermKey.__table__))
        terms = sorted(vocabulary)
        keys_table = DirTermKey.__table__
        for i in range(0, len(terms), 5000):
            rows = sorted({(k, t, vocabulary[t]) for t in terms[i:i + 5000] for k in ds.stored_keys(t)})
            await insert_tuples(s, keys_table, ["key", "term", "docs"], rows)
            if progress:
                progress("vocabulary", min(i + 5000, len(terms)), len(terms))
    if pg:
        # VACUUM: the rows of the previous index are dead; without it, searches step over them
        # until autovacuum comes by.
        async with core.db.engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(sa.text("VACUUM ANALYZE dir_search"))
            await conn.execute(sa.text("ANALYZE dir_term_keys"))
    await freshness.settle_after_import(core)
    return total


async def _store_word_counts(s: AsyncSession) -> None:
    """PostgreSQL: the exact entries of each section's most common words (``WORD_COUNTS``)."""
    sections = {name: {w: int(n) for w, n in (await s.execute(sa.text(word_counts_sql(name)))).all()}
                for name in SECTIONS}
    await s.execute(sa.delete(DirMeta).where(DirMeta.name == WORD_COUNTS))
    s.add(DirMeta(name=WORD_COUNTS, value=word_counts_value(sections)))


async def _store_word_shares(s: AsyncSession, rows: int) -> None:
    """PostgreSQL: each section's common words with their share of the section's entries, from
    a sample of the index. Its own statistics are for the whole table: "kinésithérapeute" is in
    a tenth of the entries, all of them professionals, and a plan made for services on that
    figure reads the whole section in vain."""
    sample = "TABLESAMPLE SYSTEM (10) REPEATABLE (1)" if rows > 200_000 else ""
    out: dict[str, Any] = {}
    for name in SECTIONS:
        source = f"SELECT tsv FROM dir_search {sample} WHERE section = '{name}'"
        n = await s.scalar(sa.text(f"SELECT count(*) FROM ({source}) AS t")) or 0
        total = await s.scalar(sa.text(f"SELECT count(*) FROM dir_search WHERE section = '{name}'")) or 0
        words = (await s.execute(sa.text("SELECT word, ndoc FROM ts_stat(:q) WHERE ndoc >= :least"),
                                 {"q": source, "least": max(1, math.ceil(n * COMMON_SHARE))})).all() if n else []
        out[name] = {"rows": total, "words": {w: round(k / n, 6) for w, k in words}}
    await s.execute(sa.delete(DirMeta).where(DirMeta.name == WORD_SHARES))
    s.add(DirMeta(name=WORD_SHARES, value=json.dumps(out)))
