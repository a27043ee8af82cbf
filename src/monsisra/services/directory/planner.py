"""How a search reads the index: per-section statistics, estimates, and the statements of each
engine (SQLite FTS5, PostgreSQL full text), bounded walks and nearest-first reading of "nearby" levels.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import math
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from monsisra.domain import directory_search as ds
from monsisra.services import communes as communes_service
from monsisra.services.directory.common import COMMON_SHARE, TOTAL_CAP, WORD_SHARES, is_postgres
from monsisra.store.directory import (
    FTS_TABLE,
    NATIONAL_OFFSET,
    SECTION_SPAN,
    SECTIONS,
    WORD_COUNTS,
    DirMeta,
)


@functools.cache
def cell_population() -> dict[str, int]:
    cells: dict[str, int] = collections.Counter()
    for c in communes_service.package_index().by_code.values():
        if c.latitude is not None and c.longitude is not None:
            cells[ds.grid_cell(c.latitude, c.longitude)] += c.population
    return cells


@functools.cache
def _cell_shares() -> dict[str, float]:
    """Each grid cell's share of the population (of the entries located there, roughly)."""
    cells = cell_population()
    total = sum(cells.values()) or 1
    return {cell: n / total for cell, n in cells.items()}


# PostgreSQL plan choice, see Engine.frequent: among professionals (in name order), professions
# and places are spread over the id order, names cluster in it, and no name is this common.
# Services are in order of their service's name, which is what their common words are.
FREQUENT_SHARE = 0.05


WALKED_SECTIONS = ("professionals",)




PROBE_ROWS = 4_000  # PostgreSQL: rows read in id order looking for a first page among many matches


WALK_ROWS = 60_000  # PostgreSQL: at most this many for a level estimated to be frequent


_WINDOW = "(SELECT id, tsv FROM dir_search WHERE id BETWEEN :lo AND :hi ORDER BY id LIMIT {rows}) AS w"


# The probe is tried when its rows should hold this many times the page. Not more than 1: the
# estimate of words that go together (« sage-femme », « médecine générale ») is several times too
# low, and without the probe their first page comes from the index, sorting every match (at 2:
# 75 and 40 ms instead of about 10, 1 Dec).
PROBE_MARGIN = 1.0


# PostgreSQL, a first page without distance: read first among the section's first entries in
# rank (id) order, so that only their matches are fetched from the heap (BitmapAnd of the GIN
# index and an id range of the primary key) instead of every match: each fetch is a random heap
# page, and at national scale most miss the shared buffers (« pneumologie »: 2,748 matches on
# 2,659 pages, 9-30 ms; 89 matches in the first 16,384 entries, 1 ms). The range is sized to
# hold RANGE_MARGIN times the rows wanted by the estimate; when it does not hold the page (the
# estimate was too high), the page is read from every match as before.
RANGE_MARGIN = 4.0
RANGE_MIN = 2_048  # entries: below this the primary key's bitmap saves nothing
RANGE_SHARE = 0.25  # of the section: a wider range would cost about as much as every match
RANGE_ABOVE = 200.0  # estimated matches: fewer are read whole (few heap fetches either way)


STATS_TTL = 300.0  # seconds: the statistics below are read again after this (imports change them)


@dataclass(frozen=True)
class _Stats:
    """Statistics of the index for PostgreSQL's plans (see :func:`_store_word_shares`): each
    section's rows, and its words' shares of them."""

    at: float
    rows: dict[str, float]
    words: dict[str, ds.Shares]
    counts: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)  # WORD_COUNTS, by section


STATS: dict[str, _Stats] = {}  # by database




# Plan each query with its own words (a generic plan cannot tell rare words from common ones),
# and exact, not lossy, bitmaps for common words (no re-check of every row of a page); both for
# the transaction only. Columns of a select: a search selects them in its first statement.
PG_SETTINGS = (sa.func.set_config("plan_cache_mode", "force_custom_plan", True).label("plan_cache_mode"),
               sa.func.set_config("work_mem", "32MB", True).label("work_mem"))


class Engine:
    """The few statements whose SQL differs between SQLite FTS5 and PostgreSQL tsvector."""

    def __init__(self, session: AsyncSession) -> None:
        self.s = session
        self.pg = is_postgres(session)
        self._stats = _Stats(0.0, {}, {})

    def _shares(self, section: str) -> ds.Shares:
        return self._stats.words.get(section) or ds.Shares({}, 0.0, {})

    def match(self, level: ds.Level, section: str) -> ds.Split:
        if self.pg:
            return ds.split_level(level, self._shares(section))
        text = ds.fts5_level(level)
        return ds.Split(text, text)

    @staticmethod
    def _params(m: ds.Split) -> dict[str, str]:
        return {"m": m.index, "f": m.check} if m.check else {"m": m.index}

    def _ids(self, lo: int, m: ds.Split) -> str:
        """Ids of the section's rows matching ``m`` through the index (parameters from
        :meth:`_params`)."""
        if self.pg:
            # The section as a literal, so that the planner can use that section's partial GIN index.
            section = next((f" AND section = '{n}'" for n, k in SECTIONS.items() if k * SECTION_SPAN == lo), "")
            # ``id + 0`` keeps the planner on the GIN index (bitmap scan); the common words are
            # checked on the rows that the rare ones find (``ts_match_vq`` is ``@@`` as a
            # function call, which the planner cannot hand to the index).
            check = " AND ts_match_vq(tsv, to_tsquery('simple', :f))" if m.check else ""
            return (f"SELECT id FROM dir_search WHERE tsv @@ to_tsquery('simple', :m){check}{section} "
                    f"AND id + 0 BETWEEN :lo AND :hi")
        return f"SELECT rowid AS id FROM {FTS_TABLE} WHERE {FTS_TABLE} MATCH :m AND rowid BETWEEN :lo AND :hi"

    async def prepare(self, configured: bool = False) -> None:
        """On PostgreSQL, the transaction's :data:`PG_SETTINGS` (unless ``configured``: the caller
        selected them in its own first statement) and the index statistics."""
        if self.pg:
            if not configured:
                await self.s.execute(sa.select(*PG_SETTINGS))
            self._stats = await self._load_stats()

    async def estimate(self, level: ds.Level, section: str) -> float:
        """Estimated rows of the section matching the level's ``keep`` query (0 on SQLite), from
        PostgreSQL's statistics as its planner would estimate them, without asking it."""
        if not self.pg:
            return 0.0
        return self._stats.rows.get(section, 0.0) * ds.estimate(level[0], self._shares(section))

    async def _load_stats(self) -> _Stats:
        """The index statistics (:class:`_Stats`), read again every few minutes."""
        now = time.monotonic()
        key = str(self.s.bind.url)
        if key in STATS and now - STATS[key].at < STATS_TTL:
            return STATS[key]
        meta = dict((await self.s.execute(sa.select(DirMeta.name, DirMeta.value).where(
            DirMeta.name.in_((WORD_SHARES, WORD_COUNTS))))).all())
        stored = json.loads(meta.get(WORD_SHARES) or "{}")
        counted = json.loads(meta.get(WORD_COUNTS) or "{}")
        counts = counted.get("sections", {})
        # Before the first national import: no statistics, every query through the GIN index.
        stats = _Stats(now, {n: float(v["rows"]) for n, v in stored.items()},
                       {n: ds.Shares(v["words"], COMMON_SHARE / 2, _cell_shares()) for n, v in stored.items()},
                       counts)
        STATS[key] = stats
        return stats

    async def frequent(self, level: ds.Level, section: str) -> bool:
        """PostgreSQL: do the level's words match so large a share of the section's rows that
        reading rows in id order until enough match beats building the GIN bitmap of all of
        them? (A bitmap finds "none here" at once; id order would read it all.)"""
        return self.is_frequent(await self.estimate(level, section), section)

    def probe_pays(self, estimate: float, section: str, wanted: int) -> bool:
        """PostgreSQL: should the first rows in id order hold the page? Only if matches are
        dense enough (a rare surname's would not be there: names cluster), and never among
        services: they are in order of their service's name, so the services a common word
        finds (« Pneumologie » of every establishment) sit together, rarely in the first rows
        (the probe failed there, 1.5-2 ms, before the index read of the page)."""
        rows = self._stats.rows.get(section, 0.0)
        return section in WALKED_SECTIONS and rows > 0 and estimate / rows * PROBE_ROWS >= PROBE_MARGIN * wanted

    def rank_range(self, level: ds.Level, estimate: float, section: str, wanted: int) -> int | None:
        """PostgreSQL: the last id of the section's first entries in rank order that should
        hold ``wanted`` matches of ``level``, estimated at ``estimate`` (local entries, ranked
        first, are always in it); None when every match should be read (see :data:`RANGE_MARGIN`).

        Only for a level of one group (a word, its variants and completions): the estimate of
        several words together is unreliable (« FABR Mar »: estimated by its prefixes at
        thousands, a few dozen in fact), and so is the planner's: it walked the range through
        the primary key, checking every row (37 ms, then every match read after all)."""
        rows = self._stats.rows.get(section, 0.0)
        # Not among services: numbered in order of their service's name, the services a common
        # word finds sit together, rarely among the first (as for the probe, see probe_pays).
        if not self.pg or section not in WALKED_SECTIONS or rows <= 0 or len(level[0]) != 1 \
                or estimate < max(RANGE_ABOVE, RANGE_MARGIN * wanted):
            return None
        size = max(RANGE_MIN, math.ceil(RANGE_MARGIN * wanted * rows / estimate))
        if size > RANGE_SHARE * rows:
            return None
        return SECTIONS[section] * SECTION_SPAN + NATIONAL_OFFSET + size - 1

    def over(self, level: ds.Level, section: str, cap: int) -> bool:
        """PostgreSQL: is the level known, without counting, to match more than ``cap`` entries
        of the section (:func:`ds.least_matches` of the exact counts of its common words)?"""
        return ds.least_matches(level, self._stats.counts.get(section, {})) > cap

    def is_frequent(self, estimate: float, section: str) -> bool:
        rows = self._stats.rows.get(section, 0.0)
        return section in WALKED_SECTIONS and rows > 0 and estimate > FREQUENT_SHARE * rows

    async def ranked(self, widest: ds.Split, levels: list[tuple[str, bool]], lo: int, hi: int, cap: int, limit: int,
                     offset: int, ref: communes_service.Commune | None, edge: int | None = None,
                     over: bool = False, placed: list[str] | None = None) -> tuple[list[int], int] | None:
        """PostgreSQL, one statement: the section's matches (one bitmap scan of ``widest``), each
        placed in its level by re-checking the level queries on its own ``tsv`` (no more index
        reads), ranked, paged, and counted up to ``cap + 1`` (more: the total is ``cap + 1``,
        "more than the cap"). Gives the order of :func:`read_section`'s level-by-level path.

        Without distance, the first ``cap + 1`` matches in (level, id) order are kept, so a page
        is known even when the matches are more than the cap (« pneumologie »: the estimate said
        a few hundred, there are thousands; giving up there read the page again, 9 + 11 ms).
        With distance, beyond the cap a level is read by name or cell by cell: None, and the
        caller goes level by level.

        ``placed``: what places a match in each level (:func:`placing`), each level's whole
        query otherwise.

        ``edge`` (:meth:`rank_range`; without distance nor place rings): the page is looked for
        first among the entries up to that id, see :meth:`_ranked_in_range`; ``over``: the
        matches are known to be more than the cap (:meth:`over`), not counted there."""
        params: dict[str, Any] = {**self._params(widest), "lo": lo, "hi": hi, "cap": cap + 1, "limit": limit,
                                  "offset": offset}
        cases = []
        for i, (m, _) in enumerate(levels):
            test = m if placed is None else placed[i]
            if test:
                params[f"p{i}"] = test
            cases.append(f"WHEN tsv @@ to_tsquery('simple', :p{i}) THEN {i}" if test else f"WHEN true THEN {i}")
        located = ref is not None and ref.latitude is not None
        if located:
            params.update(lat=ref.latitude, lon=ref.longitude, k=math.cos(math.radians(ref.latitude)))
            near = [i for i, (_, by_distance) in enumerate(levels) if by_distance]
            dist = ("COALESCE((latitude - :lat) * (latitude - :lat) + "
                    "((longitude - :lon) * :k) * ((longitude - :lon) * :k), 1e9)")
            distance = f"CASE WHEN lvl IN ({', '.join(map(str, near))}) THEN d ELSE 0 END, " if near else ""
        else:
            dist, distance = "0", ""
        section = next((f" AND section = '{n}'" for n, k in SECTIONS.items() if k * SECTION_SPAN == lo), "")
        check = " AND ts_match_vq(tsv, to_tsquery('simple', :f))" if widest.check else ""
        matches = (f"FROM dir_search WHERE tsv @@ to_tsquery('simple', :m){check}{section} "
                   f"AND id + 0 BETWEEN :lo AND :hi")
        level = f"CASE {' '.join(cases)} ELSE {len(levels)} END"
        if edge is not None and not located and edge < hi:
            got = await self._ranked_in_range(level, matches, section, [m for m, _ in levels],
                                              {**params, "edge": edge, "need": offset + limit}, over)
            if got is not None:
                return got
        if located:
            sql = (f"WITH c AS MATERIALIZED (SELECT id, tsv, latitude, longitude {matches} LIMIT :cap) "
                   f"SELECT id, (SELECT count(*) FROM c) AS n FROM ("
                   f"SELECT id, {level} AS lvl, {dist} AS d FROM c) AS t "
                   f"ORDER BY lvl, {distance}id LIMIT :limit OFFSET :offset")
        else:
            # Every match is read either way (the bitmap heap scan fetches them all before the
            # limit when they are fewer than the cap); sorting them keeps only the first ones.
            sql = (f"WITH c AS MATERIALIZED (SELECT id, {level} AS lvl {matches} ORDER BY lvl, id LIMIT :cap) "
                   f"SELECT id, (SELECT count(*) FROM c) AS n FROM c ORDER BY lvl, id LIMIT :limit OFFSET :offset")
        rows = (await self.s.execute(sa.text(sql), params)).all()
        if not rows:
            total = 0 if offset == 0 else await self.count(widest, lo, hi, cap + 1)
        else:
            total = rows[0].n
        if total > cap:
            if located:
                return None
            # As read_section pages a capped section: no further than the cap.
            return [r.id for r in rows][:max(0, cap - offset)], cap + 1
        return [r.id for r in rows], total

    async def _ranked_in_range(self, level: str, matches: str, section: str, levels: list[str],
                               params: dict[str, Any], over: bool) -> tuple[list[int], int] | None:
        """:meth:`ranked` without distance, one statement: the section's total (counted up to
        the cap, as :meth:`count`) and its matches among the entries up to ``:edge``, ranked.
        Their first ``offset + limit`` are the page when no match beyond the edge can come
        before them: every match is within it, or the page's last one is of a level that no
        match beyond the edge belongs to or precedes (the first, or one before which the
        levels have nothing beyond the edge: checked by one more statement). None otherwise:
        every match is ranked instead."""
        cap, offset = params["cap"] - 1, params["offset"]
        check = " AND ts_match_vq(tsv, to_tsquery('simple', :f))" if "f" in params else ""
        # The total: known to be over the cap (a count would fetch cap + 1 matches), or counted.
        counted = ("SELECT CAST(:cap AS bigint) AS n" if over
                   else f"SELECT count(*) AS n FROM (SELECT 1 {matches} LIMIT :cap) AS c")
        sql = (f"WITH r AS MATERIALIZED (SELECT id, {level} AS lvl FROM dir_search "
               f"WHERE tsv @@ to_tsquery('simple', :m){check}{section} AND id BETWEEN :lo AND :edge), "
               "p AS MATERIALIZED (SELECT id, lvl FROM r ORDER BY lvl, id LIMIT :need) "
               "SELECT t.n, (SELECT count(*) FROM r) AS inside, p.id, p.lvl "
               f"FROM ({counted}) AS t LEFT JOIN p ON true ORDER BY p.lvl, p.id")
        rows = (await self.s.execute(sa.text(sql), params)).all()
        total, inside = rows[0].n, rows[0].inside
        found = [(r.id, r.lvl) for r in rows if r.id is not None]
        if not (total <= cap and inside == total):
            if len(found) < params["need"]:
                return None
            last = found[-1][1]
            if last > 0:
                # Levels before the page's last one: any match beyond the edge would come first.
                before = " | ".join(f"({m})" for m in levels[:last])
                beyond = await self.s.scalar(sa.text(
                    f"SELECT 1 FROM dir_search WHERE tsv @@ to_tsquery('simple', :b){section} "
                    "AND id + 0 > :edge AND id + 0 <= :hi LIMIT 1"), {"b": before, "edge": params["edge"],
                                                                      "hi": params["hi"]})
                if beyond is not None:
                    return None
        ids = [i for i, _ in found][offset:]
        if total > cap:
            return ids[:max(0, cap - offset)], cap + 1
        return ids, total

    async def count(self, m: ds.Split, lo: int, hi: int, cap: int, frequent: bool = False) -> int:
        params = {"lo": lo, "hi": hi, "cap": cap}
        if frequent:
            # Up to WALK_ROWS rows in id order; if the cap is not reached there, the estimate
            # was wrong (words that rarely go together): counted through the index after all.
            n = await self.s.scalar(sa.text(
                f"SELECT count(*) FROM (SELECT 1 FROM {_WINDOW.format(rows=WALK_ROWS)} "
                "WHERE tsv @@ to_tsquery('simple', :m) LIMIT :cap) AS t"), {**params, "m": m.full}) or 0
            if n >= cap:
                return n
        sql = f"SELECT count(*) FROM ({self._ids(lo, m)} LIMIT :cap) AS t"
        return await self.s.scalar(sa.text(sql), {**self._params(m), **params}) or 0

    async def _walk(self, m: ds.Split, rows: int, lo: int, hi: int, limit: int, offset: int) -> list[int] | None:
        """PostgreSQL: the page among the first ``rows`` rows in id order (entries are numbered
        in name order: when matches are many and spread, a page lies in the first few thousand
        rows, where a bitmap would fetch every match first); None if they do not hold it."""
        got = list((await self.s.execute(sa.text(
            f"SELECT id FROM {_WINDOW.format(rows=rows)} WHERE tsv @@ to_tsquery('simple', :m) "
            "ORDER BY id LIMIT :limit OFFSET :offset"),
            {"m": m.full, "lo": lo, "hi": hi, "limit": limit, "offset": offset})).scalars())
        return got if len(got) == limit else None

    async def page(self, m: ds.Split, lo: int, hi: int, limit: int, offset: int,
                   ref: communes_service.Commune | None, many: bool = False, probe: bool = False,
                   edge: int | None = None) -> list[int]:
        """A page of one level: in id order, or by distance from ``ref``. PostgreSQL, in id order:
        ``many`` or ``probe``, first among the first rows in id order (:meth:`_walk`); ``edge``
        (:meth:`rank_range`), then among the entries up to that id."""
        if ref is None or ref.latitude is None:
            if self.pg and (many or probe):
                # Many matches: in the first rows in id order, if they hold the page. Names that
                # cluster further on, or an estimate that was wrong, take the index after all.
                got = await self._walk(m, WALK_ROWS if many else PROBE_ROWS, lo, hi, limit, offset)
                if got is not None:
                    return got
            # Through the index, ``id + 0``: ordered by the primary key, a small page tempts the
            # planner into reading rows in id order, betting that matches are spread; names cluster.
            order = "id + 0" if self.pg else "id"
            params = {**self._params(m), "lo": lo, "hi": hi, "limit": limit, "offset": offset}
            if self.pg and edge is not None and edge < hi:
                # Among the first entries (their matches only fetched: the GIN bitmap and the
                # primary key's id range ANDed); a full page there is the level's first page.
                within = self._ids(lo, m).replace("AND id + 0 BETWEEN :lo AND :hi", "AND id BETWEEN :lo AND :edge")
                got = list((await self.s.execute(sa.text(f"{within} ORDER BY {order} LIMIT :limit OFFSET :offset"),
                                                 {**params, "edge": edge})).scalars())
                if len(got) == limit:
                    return got
            sql = f"{self._ids(lo, m)} ORDER BY {order} LIMIT :limit OFFSET :offset"
            return list((await self.s.execute(sa.text(sql), params)).scalars().all())
        return [i for i, _ in await self.nearest(m, lo, hi, limit, offset, ref)]

    async def nearest(self, m: ds.Split, lo: int, hi: int, limit: int, offset: int,
                      ref: communes_service.Commune) -> list[tuple[int, float]]:
        """Matches in distance order (every match is read, through the index), with their
        distance as :func:`ds.cell_distance2` measures it."""
        params = {**self._params(m), "lo": lo, "hi": hi, "limit": limit, "offset": offset,
                  "lat": ref.latitude, "lon": ref.longitude, "k": math.cos(math.radians(ref.latitude))}
        dist = ("COALESCE((latitude - :lat) * (latitude - :lat) + "
                "((longitude - :lon) * :k) * ((longitude - :lon) * :k), 1e9)")
        ids = self._ids(lo, m)
        if self.pg:  # the distance from the rows the index finds, in the same pass
            sql = ids.replace("SELECT id FROM", f"SELECT id, {dist} AS d FROM", 1)
        else:
            sql = f"SELECT id, {dist} AS d FROM dir_search WHERE id IN ({ids})"
        sql += " ORDER BY d, id LIMIT :limit OFFSET :offset"
        return [(r.id, r.d) for r in await self.s.execute(sa.text(sql), params)]


def section_bounds(section: str) -> tuple[int, int]:
    """The id range of a section's entries in ``dir_search``."""
    lo = SECTIONS[section] * SECTION_SPAN
    return lo, lo + SECTION_SPAN - 1


async def count_total(engine: Engine, section: str, widest: ds.Level) -> int:
    """How many entries of the section match, counted up to ``TOTAL_CAP + 1``. Levels are
    disjoint and ``widest`` is their union: one count instead of one per level."""
    if engine.over(widest, section, TOTAL_CAP):
        return TOTAL_CAP + 1
    return await engine.count(engine.match(widest, section), *section_bounds(section), TOTAL_CAP + 1,
                              await engine.frequent(widest, section))


async def count_totals(engine: Engine, sections: list[str], widest: ds.Level) -> dict[str, int]:
    """:func:`count_total` of several sections; on SQLite in one statement (the match is the same
    for every section there: a round trip saved per search, and under load each one costs)."""
    if engine.pg or len(sections) < 2:
        return {n: await count_total(engine, n, widest) for n in sections}
    params: dict[str, Any] = {"m": ds.fts5_level(widest), "cap": TOTAL_CAP + 1}
    parts = []
    for i, n in enumerate(sections):
        params[f"lo{i}"], params[f"hi{i}"] = section_bounds(n)
        parts.append(f"(SELECT count(*) FROM (SELECT rowid FROM {FTS_TABLE} WHERE {FTS_TABLE} MATCH :m "
                     f"AND rowid BETWEEN :lo{i} AND :hi{i} LIMIT :cap)) AS c{i}")
    row = (await engine.s.execute(sa.text("SELECT " + ", ".join(parts)), params)).one()
    return {n: int(row[i]) for i, n in enumerate(sections)}


async def read_section(engine: Engine, section: str, levels: list[tuple[ds.Level, bool]], total: int,
                   limit: int, offset: int, ref) -> tuple[list[int], int, bool]:
    """One section's page: levels shown in order; ``True`` levels sorted by distance when not too big.

    ``total`` comes from :func:`count_total`. A level is counted on its own only to skip it (a later
    page) or to decide whether it is small enough to be sorted by distance: most first pages are
    served by one or two page queries.
    """
    lo, hi = section_bounds(section)
    capped = total > TOTAL_CAP
    large = total > NEAREST_ABOVE
    total = min(total, TOTAL_CAP)
    ids: list[int] = []
    skip, want = offset, min(limit, max(total - offset, 0))
    for level, by_distance in levels:
        if want <= 0:
            break
        m = engine.match(level, section)
        estimate = await engine.estimate(level, section)
        frequent = engine.is_frequent(estimate, section)
        if skip:
            c = skip + 1 if engine.over(level, section, skip) else await engine.count(m, lo, hi, skip + 1, frequent)
            if c <= skip:
                skip -= c
                continue
        located = by_distance and ref is not None and ref.latitude is not None
        if located and large and ds.is_ring(level[0][-1]):
            # A large "nearby" level: its ring's cells are read nearest first.
            got = await _nearest(engine, section, level, want, skip, ref)
            ids.extend(got)
            want -= len(got)
            skip = 0
            continue
        # Sorting a very large level by distance would read all of it: beyond the cap, by name.
        huge = (located and capped and (engine.over(level, section, TOTAL_CAP)
                                        or await engine.count(m, lo, hi, TOTAL_CAP + 1, frequent) > TOTAL_CAP))
        order_ref = ref if by_distance and not huge else None
        got = await engine.page(m, lo, hi, want, skip, order_ref, many=frequent,
                                probe=capped and engine.probe_pays(estimate, section, skip + want),
                                edge=engine.rank_range(level, estimate, section, skip + want))
        ids.extend(got)
        want -= len(got)
        skip = 0
    return ids, total, capped


NEAREST_CELLS = 2  # cells of the "nearby" ring read in the first batch; each batch doubles


NEAREST_ABOVE = TOTAL_CAP  # section matches above which "nearby" levels are read cell batch by cell batch


async def _nearest(engine: Engine, section: str, level: ds.Level, limit: int, offset: int,
                   ref: communes_service.Commune) -> list[int]:
    """A page of a "nearby" level in distance order, without reading all of the level: the
    cells of its ring are read nearest first, in growing batches, until the page's entries are
    known to be the nearest (no cell left can hold a closer one). The same entries, in the same
    order, as sorting the whole level."""
    keep, drops = level
    lo, hi = section_bounds(section)
    k = math.cos(math.radians(ref.latitude))

    def bound(cell: ds.Alt) -> float:
        return ds.cell_distance2(cell.term, ref.latitude, ref.longitude, k)

    cells = sorted(keep[-1], key=lambda c: (bound(c), c.term))
    need = offset + limit
    found: dict[int, float] = {}
    ordered: list[tuple[int, float]] = []
    start, size = 0, NEAREST_CELLS
    while start < len(cells):
        batch = tuple(cells[start:start + size])
        start, size = start + size, size * 2
        # Only a batch's nearest ``need`` can be among the page's.
        found.update(await engine.nearest(engine.match(((*keep[:-1], batch), drops), section), lo, hi, need, 0,
                                          ref))
        ordered = sorted(found.items(), key=lambda x: (x[1], x[0]))
        if start < len(cells) and len(ordered) >= need and ordered[need - 1][1] < bound(cells[start]):
            break
    return [i for i, _ in ordered[offset:need]]


def placing(levels: list[ds.Level], widest: ds.Level) -> list[str]:
    """PostgreSQL: for each level, the tsquery that places a match of ``widest`` in it
    (:func:`ds.level_tests`: without the groups that being in the widest level already says, such
    as the ~30 cells of a "nearby" ring, tested on every match before), "" when nothing is left
    to test."""
    return [" & ".join([*(ds.tsquery((g,)) for g in keep), *(f"!({ds.tsquery(d)})" for d in drops)])
            for keep, drops in ds.level_tests(levels, widest)]


# SQLite: indexed text that is not only folded words between single spaces (``raw``).
IRREGULAR_TEXT = "raw GLOB '*[^0-9a-z ]*' OR raw GLOB '*  *' OR raw GLOB ' *' OR raw GLOB '* '"


def _level_case(levels: list[tuple[ds.Level, bool]], widest: ds.Level, params: dict[str, Any], name: str) -> str:
    """SQLite: the level of a match of ``widest`` (``lvl``: :func:`ds.level_tests`) from its indexed
    words (``t``: ``dir_search.text`` between spaces), an index past the last when none; a word
    is `` word `` in ``t``, a prefix `` prefix``. Its terms are parameters in ``params``, named
    after ``name``."""
    terms: dict[str, str] = {}

    def term(text: str) -> str:
        key = terms.setdefault(text, f"{name}{len(terms)}")
        params[key] = text
        return key

    def group(g: ds.Group) -> str:
        return "(" + " OR ".join(f"instr(t, :{term(f' {a.term}' if a.prefix else f' {a.term} ')}) > 0"
                                 for a in g) + ")"

    whens = []
    for i, (keep, drops) in enumerate(ds.level_tests([lv for lv, _ in levels], widest)):
        tests = [group(g) for g in keep] + ["NOT (" + " AND ".join(group(g) for g in d) + ")" for d in drops]
        whens.append(f"WHEN {' AND '.join(tests) or '1'} THEN {i}")
    if not whens:
        return "0"
    # Text that is not only folded words between single spaces (a raw postcode: « CH-1211 », which
    # the index reads as « ch » and « 1211 »): each level asked of the index for this entry.
    asked = []
    for i, (lv, _) in enumerate(levels):
        params[f"{name}k{i}"] = ds.fts5_level(lv)
        asked.append(f"WHEN EXISTS (SELECT 1 FROM {FTS_TABLE} WHERE {FTS_TABLE} MATCH :{name}k{i} AND rowid = id) "
                     f"THEN {i}")
    return (f"CASE WHEN {IRREGULAR_TEXT} THEN CASE {' '.join(asked)} ELSE {len(levels)} END "
            f"ELSE CASE {' '.join(whens)} ELSE {len(levels)} END END")


async def count_rank_sqlite(engine: Engine, sections: list[str], levels: dict[str, list[tuple[ds.Level, bool]]],
                            widest: ds.Level, limit: int, offset: int, ref: communes_service.Commune | None,
                            tiers: int = 2) -> tuple[dict[str, int], dict[str, list[int]]]:
    """SQLite, an order by distance or a typo pass: each section's count (as :func:`count_totals`)
    and the pages of the sections within the cap, in one statement and one index read per
    section. The index is read for ``widest`` only (the union of the levels, as
    :func:`count_total` counts it), up to ``TOTAL_CAP + 1`` matches; in the sections within the
    cap each match is placed in its level by its own words (``dir_search.text``, the indexed
    text; :func:`_level_case`), and the matches are ranked as :func:`read_section` shows them
    (levels in order; a ``True`` level by distance, then id; the others by id). Each level was an
    index read of its own before, with its exclusions: a located search read two tiers × two
    rings, each with the ring's ~30 cell words, in every section. ``levels``: each section's (a
    typo pass may read fewer tiers in one section than in another, see ``searching.typo_tiers``);
    the sections beyond the cap are for :func:`read_section`.

    ``tiers``: the most tiers a section's levels have. With one (a level per ring), reading the
    levels one by one reads what the widest level is made of, no more, and placing each match
    by its words only costs more (« kiné » in Annecy, replayed: 9 → 12-14 ms): the levels are read
    (:func:`_count_rank_by_level`)."""
    if tiers <= 1:
        return await _count_rank_by_level(engine, sections, levels, limit, offset, ref)
    params: dict[str, Any] = {"span": SECTION_SPAN, "cap": TOTAL_CAP + 1, "within": TOTAL_CAP, "first": offset,
                              "last": offset + limit, "w": ds.fts5_level(widest)}
    located = ref is not None and ref.latitude is not None and any(
        by_distance for n in sections for _, by_distance in levels[n])
    if located:
        params.update(lat=ref.latitude, lon=ref.longitude, k=math.cos(math.radians(ref.latitude)))
        dist = ("COALESCE((latitude - :lat) * (latitude - :lat) + "
                "((longitude - :lon) * :k) * ((longitude - :lon) * :k), 1e9)")
    else:
        dist = "0"
    gathered, placed, near = [], [], []
    for j, n in enumerate(sections):
        params[f"lo{j}"], params[f"hi{j}"] = section_bounds(n)
        gathered.append(f"SELECT id FROM (SELECT rowid AS id FROM {FTS_TABLE} WHERE {FTS_TABLE} MATCH :w "
                        f"AND rowid BETWEEN :lo{j} AND :hi{j} LIMIT :cap)")
        placed.append(f"SELECT id, {_level_case(levels[n], widest, params, f't{j}_')} AS lvl, {dist} AS d FROM ("
                      "SELECT m.id, dir_search.text AS raw, ' ' || dir_search.text || ' ' AS t, latitude, longitude "
                      "FROM m "
                      f"JOIN dir_search ON dir_search.id = m.id WHERE m.id BETWEEN :lo{j} AND :hi{j} "
                      f"AND {SECTIONS[n]} IN (SELECT s FROM n WHERE total <= :within))")
        by_distance = [str(i) for i, (_, d) in enumerate(levels[n]) if d]
        if located and by_distance:
            near.append(f"(id BETWEEN :lo{j} AND :hi{j} AND lvl IN ({', '.join(by_distance)}))")
    # Levels in order; in a level ordered by distance, nearest first; then id.
    order = f"lvl, CASE WHEN {' OR '.join(near)} THEN d ELSE 0 END, id" if near else "lvl, id"
    sql = (f"WITH m AS MATERIALIZED ({' UNION ALL '.join(gathered)}), "
           "n AS MATERIALIZED (SELECT id / :span AS s, count(*) AS total FROM m GROUP BY id / :span), "
           f"r AS MATERIALIZED ({' UNION ALL '.join(placed)}) "
           "SELECT NULL AS id, s, total AS rn FROM n UNION ALL "
           "SELECT id, s, rn FROM (SELECT id, id / :span AS s, row_number() OVER (PARTITION BY id / :span "
           f"ORDER BY {order}) AS rn FROM r) WHERE rn > :first AND rn <= :last")
    return await _totals_and_pages(engine, sql, params, sections)


async def _count_rank_by_level(engine: Engine, sections: list[str], levels: dict[str, list[tuple[ds.Level, bool]]],
                               limit: int, offset: int, ref: communes_service.Commune | None
                               ) -> tuple[dict[str, int], dict[str, list[int]]]:
    """:func:`count_rank_sqlite` when each section's levels are of one tier (one per ring): the
    count (:func:`count_totals`) and the ranking of the sections within the cap in one statement
    (they were two, the ranking reading again what the count had read: two of the slowest
    statements of a "where" search, each 2-10 ms at 500,000 people). Each section's
    matches are gathered level by level up to ``TOTAL_CAP + 1`` (levels are disjoint and
    together are every match: the same count), and the sections found within the cap are ranked
    on those rows (levels in order; a ``True`` level by distance, then id; the others by id: the
    order of :func:`read_section`, which reads level after level, a statement each). Returns
    every section's total (as :func:`count_totals`) and the pages of those within the cap; the
    others are for :func:`read_section`. ``levels``: each section's (a typo pass may read fewer
    tiers in one section than in another, see ``searching.typo_tiers``)."""
    params: dict[str, Any] = {"span": SECTION_SPAN, "cap": TOTAL_CAP + 1, "within": TOTAL_CAP, "first": offset,
                              "last": offset + limit}
    texts: dict[str, str] = {}  # a level's query → its parameter (the same in every section that reads it)
    gathered = []
    for j, n in enumerate(sections):
        params[f"lo{j}"], params[f"hi{j}"] = section_bounds(n)
        parts = []
        for i, (lv, by_distance) in enumerate(levels[n]):
            key = texts.setdefault(ds.fts5_level(lv), f"k{len(texts)}")
            params[key] = ds.fts5_level(lv)
            # ``near``: the level is ordered by distance (its rows carry it, as levels differ by section).
            parts.append(f"SELECT rowid AS id, {i} AS lvl, {int(by_distance)} AS near FROM {FTS_TABLE} "
                         f"WHERE {FTS_TABLE} MATCH :{key} AND rowid BETWEEN :lo{j} AND :hi{j}")
        union = " UNION ALL ".join(parts)
        gathered.append(f"SELECT id, lvl, near FROM (SELECT id, lvl, near FROM ({union}) LIMIT :cap)")
    located = any(by_distance for n in sections for _, by_distance in levels[n])
    within = "m.id / :span IN (SELECT s FROM n WHERE total <= :within)"
    if ref is not None and ref.latitude is not None and located:
        params.update(lat=ref.latitude, lon=ref.longitude, k=math.cos(math.radians(ref.latitude)))
        dist = ("COALESCE((latitude - :lat) * (latitude - :lat) + "
                "((longitude - :lon) * :k) * ((longitude - :lon) * :k), 1e9)")
        source = (f"SELECT m.id, m.lvl, m.near, {dist} AS d FROM m JOIN dir_search ON dir_search.id = m.id "
                  f"WHERE {within}")
        order = "lvl, CASE WHEN near THEN d ELSE 0 END, id"
    else:
        source, order = f"SELECT m.id, m.lvl FROM m WHERE {within}", "lvl, id"
    sql = (f"WITH m AS MATERIALIZED ({' UNION ALL '.join(gathered)}), "
           "n AS MATERIALIZED (SELECT id / :span AS s, count(*) AS total FROM m GROUP BY id / :span) "
           "SELECT NULL AS id, s, total AS rn FROM n UNION ALL "
           f"SELECT id, s, rn FROM (SELECT id, id / :span AS s, row_number() OVER (PARTITION BY id / :span "
           f"ORDER BY {order}) AS rn FROM ({source})) "
           "WHERE rn > :first AND rn <= :last")
    return await _totals_and_pages(engine, sql, params, sections)


async def _totals_and_pages(engine: Engine, sql: str, params: dict[str, Any], sections: list[str]
                            ) -> tuple[dict[str, int], dict[str, list[int]]]:
    """Run a count-and-rank statement (rows ``(NULL, section, total)`` and ``(id, section, rank)``):
    each section's total, and the page of those within the cap."""
    by_number = {SECTIONS[n]: n for n in sections}
    totals = dict.fromkeys(sections, 0)
    ranked: dict[str, list[tuple[int, int]]] = {n: [] for n in sections}
    for row in await engine.s.execute(sa.text(sql), params):
        n = by_number.get(row.s)
        if n is None:
            continue
        if row.id is None:
            totals[n] = int(row.rn)
        else:
            ranked[n].append((row.rn, row.id))
    pages = {n: [i for _, i in sorted(ranked[n])] for n in sections if totals[n] <= TOTAL_CAP}
    return totals, pages
