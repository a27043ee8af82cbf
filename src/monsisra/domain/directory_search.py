"""Pure rules of directory search: words, typo keys, edit distance, and the boolean queries
rendered for SQLite FTS5 and PostgreSQL ``tsquery``.

Both engines index the same folded ``[a-z0-9]`` words and receive the same expanded query
(exact word, word prefix, or one of the vocabulary words within a small edit distance), so
they return the same entries in the same order.
"""

from __future__ import annotations

import bisect
import functools
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

from monsisra.domain.text import fold

_WORD = re.compile(r"[0-9a-z]+")
# Words that say nothing about who is searched for ("Dr Petit").
QUERY_NOISE = frozenset({"dr", "docteur", "pr", "professeur", "mme", "madame", "m", "mr", "monsieur"})
MARKER_PREFIXES = ("xc", "xd", "xs", "xp", "xe", "xk")  # xs: department of a second practice site
MAX_TERM = 60


def words(text: str) -> list[str]:
    """Folded alphanumeric words of ``text`` (``"Saint-Étienne"`` → ``["saint", "etienne"]``)."""
    return list(_words(text or ""))


def _fast_table() -> dict[int, str]:
    table = {}
    for cp in range(0xC0, 0x250):
        folded = fold(chr(cp))
        if folded.isascii():
            table[cp] = folded
    return table


_FAST = _fast_table()
_SPACES = re.compile(r"\s+")


def fast_fold(text: str) -> str:
    """Same result as :func:`fold`, several times faster on Latin text (national files are large)."""
    t = text.translate(_FAST).lower()
    if t.isascii():
        return _SPACES.sub(" ", t).strip()
    return fold(text)


@functools.lru_cache(maxsize=100_000)
def _words(text: str) -> tuple[str, ...]:
    # Places and specialties repeat a lot in national files: folding once each is enough.
    return tuple(w[:MAX_TERM] for w in _WORD.findall(fast_fold(text)))


cached_fold = functools.lru_cache(maxsize=100_000)(fast_fold)


def query_tokens(query: str, limit: int = 8) -> list[str]:
    """The words of a user query that take part in matching (duplicates and titles dropped)."""
    out: list[str] = []
    for w in words(query):
        if w in QUERY_NOISE or w in out:
            continue
        out.append(w)
    return out[:limit]


def deletions(word: str) -> set[str]:
    """``word`` with one letter removed, every way (the typo keys of SymSpell)."""
    return {word[:i] + word[i + 1:] for i in range(len(word))}


def stored_keys(term: str) -> set[str]:
    """Keys under which a vocabulary word is filed: itself and its one-letter deletions."""
    return {term} | deletions(term) if len(term) >= 3 else set()


def max_typos(token: str) -> int:
    if token.isdigit() or len(token) < 4:
        return 0
    return 1 if len(token) < 7 else 2


def lookup_keys(token: str) -> set[str]:
    """Keys to look up for ``token``: covers every word within one edit, and most within two."""
    if max_typos(token) == 0:
        return set()
    keys = {token} | deletions(token)
    if max_typos(token) >= 2:
        keys |= {d2 for d in deletions(token) for d2 in deletions(d)}
    return keys


def osa_distance(a: str, b: str, limit: int = 2) -> int:
    """Optimal-string-alignment distance (edits incl. adjacent swaps); ``limit + 1`` when above."""
    if a == b:
        return 0
    la, lb = len(a), len(b)
    if abs(la - lb) > limit:
        return limit + 1
    prev2: list[int] = []
    prev = list(range(lb + 1))
    for i in range(1, la + 1):
        cur = [i] + [0] * lb
        best = cur[0]
        for j in range(1, lb + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            v = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                v = min(v, prev2[j - 2] + 1)
            cur[j] = v
            best = min(best, v)
        if best > limit:
            return limit + 1
        prev2, prev = prev, cur
    return min(prev[lb], limit + 1)


COMMON_WORD = 20  # entries: a query word found in this many is taken as spelled right


def may_be_misspelt(entries: int | None) -> bool:
    """Whether a query word found in ``entries`` entries (None: not a word of the directory)
    is worth looking for typos of. A common word is spelled right, whatever it combines with:
    "médecine générale Celle-Saint-Cloud" finds few entries, but none of its words is a typo."""
    return entries is None or entries < COMMON_WORD


def close_terms(token: str, candidates: Iterable[str], limit: int = 12) -> list[str]:
    """Vocabulary words within the allowed typos of ``token`` that it is not a prefix of."""
    n = max_typos(token)
    scored = []
    for term in set(candidates):
        if term.startswith(token):
            continue
        d = osa_distance(token, term, n)
        if d <= n:
            scored.append((d, term))
    scored.sort()
    return [t for _, t in scored[:limit]]


# --- Boolean queries -------------------------------------------------------------------------

@dataclass(frozen=True)
class Alt:
    term: str
    prefix: bool = False


Group = tuple[Alt, ...]  # any of these
Query = tuple[Group, ...]  # all of these groups


def fts5(query: Query) -> str:
    parts = []
    for group in query:
        alts = [f'"{a.term}"' + ("*" if a.prefix else "") for a in group]
        parts.append(alts[0] if len(alts) == 1 else "(" + " OR ".join(alts) + ")")
    return " AND ".join(parts)


def tsquery(query: Query) -> str:
    parts = []
    for group in query:
        alts = [f"'{a.term}'" + (":*" if a.prefix else "") for a in group]
        parts.append(alts[0] if len(alts) == 1 else "(" + " | ".join(alts) + ")")
    return " & ".join(parts)


def fts5_minus(keep: Query, drop: Query) -> str:
    return f"({fts5(keep)}) NOT ({fts5(drop)})"


def tsquery_minus(keep: Query, drop: Query) -> str:
    return f"({tsquery(keep)}) & !({tsquery(drop)})"


# How people name a profession or specialty vs how the directory spells it.
_SUFFIXES = (("ologues", "ologie"), ("ologue", "ologie"), ("iatres", "iatrie"), ("iatre", "iatrie"),
             ("ieres", "ier"), ("iere", "ier"), ("iennes", "ien"), ("ienne", "ien"))
_WORDS = {"generaliste": "generale", "generalistes": "generale", "kine": "kinesitherapeute",
          "sagefemme": "sage", "gyneco": "gynecologie", "ophtalmo": "ophtalmologie", "orl": "oto"}


def variants(token: str) -> list[str]:
    """Other spellings of a profession word (``cardiologue`` → ``cardiologie``)."""
    out = []
    if token in _WORDS:
        out.append(_WORDS[token])
    for suffix, repl in _SUFFIXES:
        if token.endswith(suffix) and len(token) > len(suffix) + 2:
            out.append(token[: -len(suffix)] + repl)
            break
    return [v for v in out if v != token]


def is_prefix(token: str, last: bool = True) -> bool:
    """Whether ``token`` also stands for the words it begins. Not a single character: "d" (of
    "d'Ascq"), "à", an initial or a unit number would match nearly every entry, and both engines
    would read the whole index to find out. Two letters only in the word being typed (the last):
    elsewhere they are a whole word ("CH", "de", "la")."""
    return len(token) >= 3 or (last and len(token) == 2)


MAX_COMPLETIONS = 24  # a prefix is spelled out as its vocabulary words when they are this few


def expandable(token: str) -> bool:
    """Whether the vocabulary lists every word ``token`` can begin (it holds the words of three
    letters or more, digits excepted)."""
    return len(token) >= 3 and not any(c.isdigit() for c in token)


def tiers(tokens: list[str], fuzzy: dict[str, list[str]], filters: Query,
          completions: dict[str, list[str]] | None = None) -> list[Query]:
    """Queries from strictest to loosest: exact words, then prefixes, then typos.

    Results are shown tier by tier, so exact matches come first. ``filters`` (place, kind)
    are added to every tier. A tier identical to the previous one is left out. A prefix whose
    every completion is known (``completions``: all the vocabulary words it begins) is written
    as those words: the same matches, but PostgreSQL's GIN index can then skip through them
    instead of gathering every row of every word that starts so before the first test.
    """
    if not tokens:
        return [filters] if filters else []
    completions = completions or {}

    def begun(t: str, last: bool) -> tuple[Alt, ...]:
        if t in completions:
            return tuple(Alt(w) for w in completions[t])
        return (Alt(t, is_prefix(t, last)),)

    exact = tuple((Alt(t), *(Alt(v) for v in variants(t))) for t in tokens)
    prefix = tuple((*begun(t, i == len(tokens) - 1), *(Alt(v, True) for v in variants(t)))
                   for i, t in enumerate(tokens))
    loose = tuple((*p, *(Alt(f) for f in fuzzy.get(t, []))) for t, p in zip(tokens, prefix, strict=True))
    prefix, loose = tuple(map(_covered_dropped, prefix)), tuple(map(_covered_dropped, loose))
    out: list[Query] = []
    for q in (exact, prefix, loose):
        full = q + filters
        if not out or not any(_within(full, kept, completions) for kept in out):
            out.append(full)
    return out


def _spelled(group: Group, completions: dict[str, list[str]]) -> frozenset[Alt]:
    """The group's alternatives with each prefix whose every completion is known written as
    those words (the same matches)."""
    return frozenset(w for a in group
                     for w in ((Alt(c) for c in completions[a.term]) if a.prefix and a.term in completions else (a,)))


def _within(query: Query, earlier: Query, completions: dict[str, list[str]]) -> bool:
    """Whether every entry ``query`` matches is matched by ``earlier`` already (each group's
    alternatives among the same group's of ``earlier``): a tier after it would be an empty
    level. ``kiné``: its prefix tier is the prefix « kinesitherapeute* » of its variant, whose only
    word is « kinesitherapeute », already an exact alternative; on SQLite that empty level cost
    two FTS5 reads of every kinésithérapeute per section (13 of 19 ms of « kiné » in Annecy)."""
    return len(query) == len(earlier) and all(
        _spelled(g, completions) <= _spelled(e, completions) for g, e in zip(query, earlier, strict=True))


def _covered_dropped(group: Group) -> Group:
    """The group without the words that one of its prefixes already covers (``kine`` completes
    to "kinesitherapeute", and its variant is the prefix "kinesitherapeute*"): the same
    matches, one posting list fewer for the index to read."""
    prefixes = [a.term for a in group if a.prefix]
    return tuple(dict.fromkeys(a for a in group if a.prefix or not any(a.term.startswith(p) for p in prefixes)))


def marker(prefix: str, value: str) -> str:
    return prefix + re.sub(r"[^0-9a-z]", "", cached_fold(value))


# --- Places: a grid of ~11 km cells, so that "near X" is a short OR of cell words ------------

GRID_LAT = 0.1
GRID_LON = 0.15


def grid_cell(lat: float, lon: float) -> str:
    return f"xg{math.floor(lat / GRID_LAT) + 1000:04d}{math.floor(lon / GRID_LON) + 2000:04d}"


def grid_cells_around(lat: float, lon: float, radius_km: float) -> list[str]:
    """The cells that a circle of ``radius_km`` around (lat, lon) touches."""
    dlat = radius_km / 111.0
    dlon = radius_km / (111.0 * max(math.cos(math.radians(lat)), 0.2))
    out = []
    for i in range(math.floor((lat - dlat) / GRID_LAT), math.floor((lat + dlat) / GRID_LAT) + 1):
        for j in range(math.floor((lon - dlon) / GRID_LON), math.floor((lon + dlon) / GRID_LON) + 1):
            out.append(f"xg{i + 1000:04d}{j + 2000:04d}")
    return out


def is_ring(group: Group) -> bool:
    """Whether ``group`` is a ring of grid cells ("nearby")."""
    return bool(group) and all(a.term.startswith("xg") and not a.prefix for a in group)


def cell_distance2(cell: str, lat: float, lon: float, k: float) -> float:
    """The smallest squared distance from (lat, lon) to the cell, in the measure search orders
    by: degrees of latitude, longitude degrees times ``k`` (the cosine of the latitude), a hair
    less so that rounding never makes it larger than an entry's own distance."""
    i, j = int(cell[2:6]) - 1000, int(cell[6:10]) - 2000
    dlat = max(0.0, i * GRID_LAT - lat, lat - (i + 1) * GRID_LAT)
    dlon = max(0.0, j * GRID_LON - lon, lon - (j + 1) * GRID_LON)
    return max(0.0, (dlat * dlat + (dlon * k) * (dlon * k)) * (1 - 1e-9) - 1e-12)


Level = tuple[Query, tuple[Query, ...]]  # matches ``keep`` and none of the ``drops``


def levels(tier_queries: list[Query], rings: list[Group]) -> list[Level]:
    """Result levels in display order: by tier (exact, prefix, typo), then by ring (here, near).

    Each level excludes what earlier levels showed, so no entry appears twice.
    """
    out: list[Level] = []
    for i, tier in enumerate(tier_queries):
        for j, ring in enumerate(rings or [()]):
            keep = tier + ((ring,) if ring else ())
            drops: list[Query] = []
            if i:
                drops.append(tier_queries[i - 1])
            if j:
                drops.append((rings[j - 1],))
            out.append((keep, tuple(drops)))
    return out


def widest(tier_queries: list[Query], rings: list[Group]) -> Level:
    """The union of all :func:`levels`: the loosest tier, in any of the rings. Tiers widen one
    another, so one count of this level is the section's total."""
    keep = tier_queries[-1]
    if rings:
        keep = (*keep, tuple(dict.fromkeys(alt for ring in rings for alt in ring)))
    return keep, ()


def level_tests(levels: list[Level], widest: Level) -> list[tuple[list[Group], list[Query]]]:
    """For entries known to match ``widest`` (the union of ``levels``), what places each in its
    level: for each level, the groups to test (all must match) and the excluded queries (none
    may match). Lets one index read of the widest level stand for one read per level: levels are
    disjoint and together are the widest, so each match found there is placed in the first
    level whose tests its own words pass (see ``planner.count_rank_sqlite``).

    A group that such an entry matches anyway is left out: one that holds every alternative of
    a group of ``widest`` (the last tier's words), or every one but those of a group that the
    level excludes (a "nearby" ring of ~30 cells, outside the commune it excludes: the union of
    the rings is a group of ``widest``)."""
    wide = [frozenset(g) for g in widest[0]]

    def implied(g: Group, drops: tuple[Query, ...]) -> bool:
        alts = frozenset(g)
        return any(w <= alts or any(len(d) == 1 and w <= alts | frozenset(d[0]) for d in drops) for w in wide)

    return [([g for g in keep if not implied(g, drops)], list(drops)) for keep, drops in levels]


def fts5_level(level: Level) -> str:
    keep, drops = level
    text = fts5(keep)
    for d in drops:
        text = f"({text}) NOT ({fts5(d)})"
    return text


def tsquery_level(level: Level) -> str:
    keep, drops = level
    return " & ".join([f"({tsquery(keep)})", *(f"!({tsquery(d)})" for d in drops)])


# --- PostgreSQL: which words the GIN index intersects, which are checked on the rows ----------

CHECK_SHARE = 0.02  # a group found in this share of the entries or more is a common one…
# …when it is this many times as common as the rarest group of the query. Checking a row costs
# its heap fetch (about 2 µs, measured at 500,000 entries); intersecting a word in the GIN index,
# decoding its postings (about 0.02 µs an entry): checking pays only when the common group has
# about a hundred times the rows of the rare one. At 5, « gynécologie » in Paris 16e was read
# through the index and the Paris cells checked on its 5,464 rows: 13 ms, against 4 ms in the index.
CHECK_RATIO = 100.0
# A prefix (« le* ») is many words: the GIN index decodes every one's postings, several times the
# cost of one word's (« le* » with the 29: 13 ms for 900 matches); checking it pays much sooner.
CHECK_RATIO_PREFIX = 10.0


@dataclass(frozen=True)
class Split:
    """A level as PostgreSQL runs it: ``index`` through the GIN index, ``check`` (may be empty)
    on the rows it finds; ``full`` is the whole level, for plans that read rows in id order."""

    full: str
    index: str
    check: str = ""


@dataclass(frozen=True)
class Shares:
    """What a word's share of the entries is estimated from: the most common words with their
    share (PostgreSQL's statistics), the share of any other word (``rare``), and, for the grid
    cells missing from the statistics, their share of the population (at most ``rare``: a
    query's ring is an OR of twenty or thirty cells, mostly rural, and counting each as
    ``rare`` would make it look many times larger than it is)."""

    common: dict[str, float]
    rare: float
    cells: dict[str, float]

    @functools.cached_property
    def _sorted(self) -> tuple[list[str], list[float]]:
        words = sorted(self.common)
        sums = [0.0]
        for w in words:
            sums.append(sums[-1] + self.common[w])
        return words, sums

    def begun(self, prefix: str) -> float:
        """The summed shares of the common words that begin with ``prefix`` (two binary searches)."""
        words, sums = self._sorted
        return sums[bisect.bisect_left(words, prefix + "\x7f")] - sums[bisect.bisect_left(words, prefix)]


def share(group: Group, shares: Shares) -> float:
    """Estimated share of the entries matching any word of ``group``."""
    total = 0.0
    for alt in group:
        if alt.prefix:
            total += shares.rare + shares.begun(alt.term)
        elif alt.term in shares.common:
            total += shares.common[alt.term]
        else:
            total += min(shares.cells.get(alt.term, shares.rare), shares.rare)
    return min(total, 1.0)


def estimate(query: Query, shares: Shares) -> float:
    """Estimated share of the entries matching every group of ``query``. Words of a query often
    go together ("sage-femme", "médecine générale"): taken as independent, as PostgreSQL's
    planner does, "sage" and "femme" would be 30 times rarer together than they are. So each
    group but the rarest counts less and less (exponential back-off: s1 · s2^½ · s3^¼ …)."""
    out, power = 1.0, 1.0
    for s in sorted(share(group, shares) for group in query):
        out *= s ** power
        power /= 2
    return out


def split_level(level: Level, shares: Shares) -> Split:
    """Intersecting a very common word in a GIN index means decoding its whole posting list
    (« infirmier »: 140,000 entries, about 8 ms, and again for each OR branch it is paired
    with), whereas checking it on the few rows that the query's rare words find costs a few
    microseconds a row. Groups (and excluded levels) much more common than the rarest group
    are checked on the rows; the others are intersected in the index."""
    keep, drops = level
    full = tsquery_level(level)
    if not keep:
        return Split(full, full)
    of_groups = [share(g, shares) for g in keep]
    rarest = min(range(len(keep)), key=of_groups.__getitem__)

    def common_enough(group: Group, s: float) -> bool:
        ratio = CHECK_RATIO_PREFIX if any(a.prefix for a in group) else CHECK_RATIO
        return s >= CHECK_SHARE and s >= ratio * of_groups[rarest]

    # The rarest group is always read through the index: something has to find the rows.
    checked = [i != rarest and common_enough(g, s) for i, (g, s) in enumerate(zip(keep, of_groups, strict=True))]
    index = tuple(g for g, c in zip(keep, checked, strict=True) if not c)
    check = [f"({tsquery(tuple(g for g, c in zip(keep, checked, strict=True) if c))})"] if any(checked) else []
    index_drops = []
    for d in drops:
        if any(common_enough(g, share(g, shares)) for g in d):
            check.append(f"!({tsquery(d)})")
        else:
            index_drops.append(d)
    if not check:
        return Split(full, full)
    return Split(full, tsquery_level((index, tuple(index_drops))), " & ".join(check))


def least_matches(level: Level, counts: dict[str, int]) -> int:
    """A lower bound of the entries matching ``level``, from the exact entries of the words in
    ``counts`` (the most common ones): a level of one group, without exclusions, matches at least
    as many entries as any one of its words (a prefix: as any word it begins). 0 otherwise."""
    keep, drops = level
    if len(keep) != 1 or drops:
        return 0
    best = 0
    for alt in keep[0]:
        if alt.prefix:
            best = max(best, max((n for w, n in counts.items() if w.startswith(alt.term)), default=0))
        else:
            best = max(best, counts.get(alt.term, 0))
    return best
