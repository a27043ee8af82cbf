"""Directory search: ``q`` (names, specialties, services; accents, case, prefixes and typos forgiven)
and ``where`` (commune, postcode, department or establishment, then nearby by distance), split into
professionals and services.
"""

from __future__ import annotations

import bisect
import functools
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from monsisra.domain import directory_search as ds
from monsisra.domain.clock import as_utc, utcnow
from monsisra.domain.text import fold
from monsisra.services import accounts
from monsisra.services import communes as communes_service
from monsisra.services.core import Actor, Core
from monsisra.services.directory.common import ACTIVE_DAYS, KINDS, TOTAL_CAP, is_postgres
from monsisra.services.directory.local import is_current, opening, sync_local
from monsisra.services.directory.planner import (
    PG_SETTINGS,
    Engine,
    cell_population,
    count_rank_sqlite,
    count_totals,
    placing,
    read_section,
    section_bounds,
)
from monsisra.services.errors import Invalid
from monsisra.store.db import among
from monsisra.store.directory import (
    SECTIONS,
    DirSearch,
    DirTermKey,
)
from monsisra.store.models import Mailbox

# Matches up to which a section is ranked in one statement: on PostgreSQL as estimated (then
# counted in that statement); on SQLite, ordered by distance, counted in that statement up to
# TOTAL_CAP (below TOTAL_CAP here: level by level).
RANKED_ROWS = 3 * TOTAL_CAP
FUZZY_BELOW = 20  # typo matches are looked for when exact and prefix matches are fewer than this


@dataclass(frozen=True)
class Where:
    groups: tuple[ds.Group, ...] = ()
    ref: communes_service.Commune | None = None
    label: str = ""
    kind: str = ""
    rings: tuple[ds.Group, ...] = ()  # "in the commune", then "nearby": shown in this order


NEARBY_RADII_KM = (25.0, 15.0, 10.0, 5.0)


LONGER_NAME_WINS = 10  # a commune typed in full means a longer-named one only if it is this many times larger


NEARBY_POPULATION = 1_500_000  # the "nearby" ring shrinks until it holds about this many inhabitants


def _nearby_radius(centre: communes_service.Commune, radius_km: float) -> float:
    """The radius of the "nearby" ring around ``centre``: ``radius_km`` in the country, less in
    a city (in Paris, 25 km is ten million people: neither "nearby" for the user nor a short
    list for the index)."""
    population = cell_population()
    radii = [r for r in NEARBY_RADII_KM if r < radius_km]
    for r in (radius_km, *radii):
        if sum(population.get(c, 0) for c in ds.grid_cells_around(centre.latitude, centre.longitude, r)) \
                <= NEARBY_POPULATION:
            return r
    return min(radius_km, *radii) if radii else radius_km


def _department_rings(code: str) -> tuple[ds.Group, ...]:
    """Those whose main practice site is in the department, then those with another one there."""
    return (ds.Alt(ds.marker("xd", code)),), (ds.Alt(ds.marker("xs", code)),)


@functools.lru_cache(maxsize=4096)
def resolve_where(where: str, radius_km: float = communes_service.DEFAULT_RADIUS_KM) -> Where:
    """Turn the "où" field into place filters (and a reference commune for distance)."""
    text = (where or "").strip()
    if not text:
        return Where()
    index = communes_service.package_index()
    folded = fold(text)
    compact = folded.replace(" ", "")
    if re.fullmatch(r"\d{5}", compact):
        codes = index.by_postcode.get(compact, [])
        if not codes and compact in index.by_code:
            codes = [compact]
        alts = [ds.Alt(ds.marker("xp", compact))] + [ds.Alt(ds.marker("xc", c)) for c in codes]
        ref = index.largest(codes)
        return Where(((*alts,),), ref, f"code postal {compact}", "postcode")
    if re.fullmatch(r"(\d{2}|2a|2b|97\d)", compact):
        name = index.departments.get(compact.upper(), "")
        return Where((), None, f"département {compact.upper()} {name}".strip(), "department",
                     rings=_department_rings(compact))
    key = communes_service.name_key(text)
    if key in index.department_keys and key not in index.by_name:
        code = index.department_keys[key]
        return Where((), None, f"département {code}", "department", rings=_department_rings(code))
    found = index.find_by_name(text)
    if found:
        # "Clermont" means Clermont-Ferrand rather than Clermont (Oise): a longer name wins when
        # it is far larger. A name typed in full is that commune otherwise ("Vic" is not
        # Vic-le-Comte, "Lons" not Lons-le-Saunier); a name not typed in full, the largest begun.
        if len(key) >= 4 or key in index.by_name:
            longer = [index.by_code[c] for n in index.names_sorted[bisect.bisect_left(index.names_sorted, key):]
                      [:200] if n.startswith(key) and n != key for c in index.by_name[n]]
            if key in index.by_name:
                exact = max(c.population for c in found)
                longer = [c for c in longer if c.key.startswith(key + " ")
                          and c.population >= LONGER_NAME_WINS * max(exact, 1)]
            found = sorted({c.code: c for c in [*found, *longer]}.values(), key=lambda c: -c.population)
        centre = found[0]
        same = tuple(ds.Alt(ds.marker("xc", c.code)) for c in found if c.key == centre.key)
        if centre.latitude is None:
            return Where((same,), centre, f"{centre.name} ({centre.department_code})", "commune")
        radius = _nearby_radius(centre, radius_km)
        cells = tuple(ds.Alt(c) for c in ds.grid_cells_around(centre.latitude, centre.longitude, radius))
        return Where((), centre, f"{centre.name} ({centre.department_code})", "commune", rings=(same, cells))
    tokens = ds.query_tokens(text)
    if not tokens:
        return Where()
    return Where(tuple((ds.Alt("xe" + t, True),) for t in tokens), None, text, "establishment")


async def _fuzzy(session: AsyncSession, tokens: list[str]) -> dict[str, list[str]]:
    """token → the vocabulary words within its allowed typos (one read for all tokens). A token
    that is itself a common word is taken as spelled right: the typos of "saint" or "generale"
    would only widen the query."""
    keys = {t: k for t in tokens if (k := ds.lookup_keys(t))}
    if not keys:
        return {}
    t = DirTermKey.__table__
    found: dict[str, set[str]] = {}
    docs: dict[str, int] = {}
    for key, term, n in (await session.execute(sa.select(t.c.key, t.c.term, t.c.docs).where(
            among(t.c.key, sorted(set().union(*keys.values())), is_postgres(session))))).all():
        found.setdefault(key, set()).add(term)
        docs[term] = n
    out: dict[str, list[str]] = {}
    for token, wanted in keys.items():
        if not ds.may_be_misspelt(docs.get(token)):
            continue
        close = ds.close_terms(token, {term for k in wanted for term in found.get(k, ())})
        if close:
            out[token] = close
    return out


async def _completions(session: AsyncSession, tokens: list[str]) -> tuple[dict[str, list[str]], set[str]]:
    """token → every vocabulary word it begins, for the tokens that begin few enough words; and
    the tokens that begin many words or a common one ("kine": kinésithérapeute), taken as words
    being typed rather than misspelt."""
    out: dict[str, list[str]] = {}
    begun: set[str] = set()
    t = DirTermKey.__table__
    wanted = list(dict.fromkeys(token for token in tokens if ds.expandable(token)))
    if not wanted:
        return out, begun
    # Keys are the words and their one-letter deletions: scan each token's range, keep the
    # words; every token in one statement.
    ranges = [sa.select(sa.literal_column(str(i)).label("i"), t.c.key, t.c.docs)
              .where(t.c.key >= token, t.c.key < token + "{", t.c.key == t.c.term)
              .order_by(t.c.key).limit(ds.MAX_COMPLETIONS + 1).subquery(f"r{i}")
              for i, token in enumerate(wanted)]
    found: dict[int, list[tuple[str, int]]] = {i: [] for i in range(len(wanted))}
    stmt = sa.union_all(*(sa.select(r) for r in ranges)) if len(ranges) > 1 else sa.select(ranges[0])
    for i, key, n in (await session.execute(stmt)).all():
        found[i].append((key, n))
    for i, token in enumerate(wanted):
        rows = sorted(found[i])
        if len(rows) > ds.MAX_COMPLETIONS or any(not ds.may_be_misspelt(n) for _, n in rows):
            begun.add(token)
        if len(rows) <= ds.MAX_COMPLETIONS and rows:
            out[token] = [k for k, _ in rows]
    return out, begun


def typo_tiers(tier_queries: list[ds.Query], first_totals: dict[str, int]) -> dict[str, list[ds.Query]]:
    """The tiers a typo pass reads in each section. Where the first pass found nothing (its
    totals are exact counts, in the same transaction), its tiers (exact, prefix) match nothing
    in that section with these filters in these rings: only the typo tier, the widest, can
    match there, and excluding the earlier tiers from it excludes nothing. That section's
    levels then need neither the earlier tiers' levels nor their exclusion, which each index
    read evaluated again (a misspelt surname with a postcode: three levels and two NOTs per
    ring and section, read for nothing). The same entries, totals and order."""
    return {n: tier_queries[-1:] if total == 0 and tier_queries else tier_queries for n, total in first_totals.items()}


def _item(row: Any, opened: dict[int, Any], ref) -> dict[str, Any]:
    now = utcnow()
    last = opened.get(row.local_mailbox_id) if row.local_mailbox_id else None
    active = bool(row.is_local and last is not None and now - as_utc(last) <= timedelta(days=ACTIVE_DAYS))
    item = {"id": row.ref, "kind": row.kind or None, "section": row.section, "name": row.name,
            "address": row.address, "profession": row.profession, "specialty": row.specialty,
            "organisation": row.organisation, "service": row.service, "commune": row.commune,
            "commune_code": row.commune_code, "postcode": row.postcode, "department": row.department_code,
            "national_id": row.national_id or None, "is_local": row.is_local, "is_expert": row.is_expert,
            "is_resource_team": row.is_resource_team, "active": active}
    if ref is not None and ref.latitude is not None and row.latitude is not None:
        item["distance_km"] = round(communes_service.distance_km(ref.latitude, ref.longitude, row.latitude,
                                                                 row.longitude), 1)
    return item


async def search(core: Core, actor: Actor | None, q: str = "", where: str = "", kind: str = "all",
                 limit: int = 20, offset: int = 0, near: str | communes_service.Commune = "") -> dict[str, Any]:
    """Directory search: two sections (professionals, services), each paged and ranked; ``near``
    (a place, or a commune such as the actor's practice) orders by distance from it."""
    return await _search(core, None, None, q, where, kind, limit, offset, near)


async def search_for_token(core: Core, token: str, client: str | None = None, q: str = "", where: str = "",
                           kind: str = "all", limit: int = 20, offset: int = 0,
                           near: str | communes_service.Commune = "") -> dict[str, Any]:
    """:func:`search` for the bearer of ``token``, checked in the search's own transaction: its
    row is read by the search's first statement with the local state, and
    :func:`accounts.actor_of_row` makes the same checks as every request's (a revoked or expired
    session is refused; :class:`AuthFailed` before anything is searched). Through HTTP, a session
    of its own for the token cost about as much as a quick search's statements."""
    return await _search(core, token, client, q, where, kind, limit, offset, near)


async def _search(core: Core, token: str | None, client: str | None, q: str, where: str, kind: str, limit: int,
                  offset: int, near: str | communes_service.Commune) -> dict[str, Any]:
    if kind not in KINDS:
        raise Invalid(f"type inconnu : {kind} (attendu : {', '.join(KINDS)})")
    limit = max(1, min(int(limit), 100))
    offset = max(0, int(offset))
    # One session per search: the token's check and the check that our own entries are current
    # run in it, and only when they are not (a new account, a changed card) is a second one
    # needed after syncing.
    async with core.read() as s:
        # One round trip for the token's row, the local state and (PostgreSQL) the transaction's
        # settings; the token is checked on its row before anything else is used.
        pg = is_postgres(s)
        opened = await opening(s, accounts.token_query(token) if token is not None else None,
                               *(PG_SETTINGS if pg else ()))
        if token is not None:
            accounts.actor_of_row(core, opened, client)
        if await is_current(core, s, opened):
            return await _search_in(s, q, where, kind, limit, offset, near, configured=pg)
    await sync_local(core)
    async with core.read() as s:
        return await _search_in(s, q, where, kind, limit, offset, near)


async def _search_in(s: AsyncSession, q: str, where: str, kind: str, limit: int, offset: int,
                     near: str | communes_service.Commune, configured: bool = False) -> dict[str, Any]:
    tokens = ds.query_tokens(q)
    place = resolve_where(where)
    ref = place.ref
    if isinstance(near, communes_service.Commune):
        ref = near
    elif near:
        ref = resolve_where(near).ref or ref
    filters: tuple[ds.Group, ...] = place.groups
    if kind == "experts":
        filters += ((ds.Alt("xkexpert"),),)
    elif kind == "resource_teams":
        filters += ((ds.Alt("xkresource"),),)
    wanted = {"professionals": kind in ("all", "professionals", "experts", "resource_teams"),
              "services": kind in ("all", "services", "experts", "resource_teams")}
    out: dict[str, Any] = {"query": {"q": q, "tokens": tokens, "where": place.label or None,
                                     "where_kind": place.kind or None, "kind": kind,
                                     "reference": ref.as_dict() if ref else None}}
    engine = Engine(s)
    await engine.prepare(configured)
    rings = list(place.rings)
    # A prefix spelled out as its words: the same answers, but both engines then skip through
    # each word's postings instead of first gathering every row of every word so begun.
    # The variants' too (always prefixes): a prefix tier whose words the exact tier already has
    # is left out (ds.tiers), an empty level that the index would read in vain.
    completions, begun = await _completions(s, [*tokens, *(v for t in tokens for v in ds.variants(t))])
    begun &= set(tokens)
    tier_queries = ds.tiers(tokens, {}, filters, completions) or ([()] if rings else [])
    sections = [n for n in SECTIONS if wanted[n]] if tier_queries else []

    async def first_pass(typos: bool = False, section_tiers: dict[str, list[ds.Query]] | None = None
                         ) -> tuple[dict[str, list], dict[str, tuple[list[int], int] | None], dict[str, int]]:
        if not sections:
            # Nothing to match (a query of punctuation or spaces only): no query to build.
            return {}, {}, {}
        # Each section's levels (its tiers: see typo_tiers), "by distance" in the last ring.
        levels = {n: [(lv, (bool(rings) and lv[0][-1] == rings[-1]) or not rings)
                      for lv in ds.levels((section_tiers or {}).get(n, tier_queries), rings)] for n in sections}
        widest = ds.widest(tier_queries, rings)
        ranked: dict[str, tuple[list[int], int] | None] = {}
        totals: dict[str, int] = {}
        located = ref is not None and ref.latitude is not None and any(d for lv in levels.values() for _, d in lv)
        if not engine.pg and (located or typos) and RANKED_ROWS >= TOTAL_CAP:
            # SQLite, an order by distance: each level would be read whole to be sorted, a
            # statement per level and section. Counted, then ranked and paged in one statement
            # for every section within the cap (each round trip through aiosqlite's thread costs
            # about as much as the query). Without distance the first level usually fills the
            # page, its read stopping there: one statement already, cheaper than ranking all matches;
            # but the typo pass has few matches, often spread over its three levels (exact,
            # prefix, typo): a count and a statement per level, 4-5 statements, become one.
            tiers = max(len((section_tiers or {}).get(n, tier_queries)) for n in sections)
            totals, pages = await count_rank_sqlite(engine, sections, levels, widest, limit, offset, ref, tiers)
            return levels, {n: (pages[n], totals[n]) if n in pages else None for n in sections}, totals
        counted = [n for n in sections if not (engine.pg and await engine.estimate(widest, n) <= RANKED_ROWS)]
        totals.update(await count_totals(engine, counted, widest))
        for n in sections:
            if n not in counted:
                # One statement per section unless the matches are more than the cap.
                # Without distance nor place rings (levels in tier order only), the page is
                # looked for among the first entries in rank order first (Engine.rank_range).
                edge = engine.rank_range(widest, await engine.estimate(widest, n), n, offset + limit) \
                    if not rings and not located else None
                ranked[n] = await engine.ranked(engine.match(widest, n),
                                                [(ds.tsquery_level(lv), d) for lv, d in levels[n]],
                                                *section_bounds(n), TOTAL_CAP, limit, offset, ref, edge,
                                                engine.over(widest, n, TOTAL_CAP),
                                                placing([lv for lv, _ in levels[n]], widest))
                found = ranked[n]
                totals[n] = found[1] if found is not None else TOTAL_CAP + 1
            else:
                ranked[n] = None
        return levels, ranked, totals

    levels, ranked, totals = await first_pass()
    fuzzy: dict[str, list[str]] = {}
    if tokens and any(ds.max_typos(t) for t in tokens) and sum(totals.values()) < FUZZY_BELOW:
        fuzzy = await _fuzzy(s, [t for t in tokens if t not in begun])
        if fuzzy:
            tier_queries = ds.tiers(tokens, fuzzy, filters, completions)
            levels, ranked, totals = await first_pass(True, typo_tiers(tier_queries, totals))
    out["query"]["typos"] = fuzzy
    pages: dict[str, tuple[list[int], int, bool]] = {}
    for section in SECTIONS:
        done = ranked.get(section)
        if section not in totals:
            pages[section] = ([], 0, False)
        elif done is not None:
            pages[section] = (done[0], min(done[1], TOTAL_CAP), done[1] > TOTAL_CAP)
        else:
            pages[section] = await read_section(engine, section, levels[section], totals[section], limit, offset, ref)
    # Both sections' entries in one read, and when our own mailboxes were last opened in another.
    wanted_ids = [i for ids, _, _ in pages.values() for i in ids]
    st = DirSearch.__table__
    rows = {r.id: r for r in (await s.execute(
        sa.select(st).where(st.c.id.in_(wanted_ids)))).all()} if wanted_ids else {}
    local_ids = [r.local_mailbox_id for r in rows.values() if r.local_mailbox_id]
    opened = dict((await s.execute(sa.select(Mailbox.id, Mailbox.last_opened_at)
                                   .where(Mailbox.id.in_(local_ids)))).all()) if local_ids else {}
    for section, (ids, total, capped) in pages.items():
        items = [_item(rows[i], opened, ref) for i in ids if i in rows]
        end = offset + len(items)
        out[section] = {"items": items, "total": total, "next_offset": end if end < total else None,
                        "total_capped": capped}
    return out
