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

On SQLite a third way comes first: FTS5 asked for the whole tokens each prefix stands for
(``fts_tokens``, read from the index's own pages in the search's transaction) walks its postings
lazily, newest first, and stops at the page, whatever the words' frequency; only a prefix too wide
to list (« a ») takes the two ways below.

Which way, first from how frequent the words are in the store (``term_documents``: the
FTS5 vocabulary on SQLite, the ANALYZE statistics of ``search_vector`` on PostgreSQL, both
kept a few minutes in memory): rare words (the windows would walk more than ``WINDOW_BUDGET``
rows for a page), or words cheaper to read from the index than by walking rows, go straight
to the index; the others start with windows. Those hand the rest of the mailbox to the text index as soon as the density
of hits seen so far says the page would need more than ``WINDOW_BUDGET`` rows (the estimate
assumes the words independent of each other and of the mailbox): the windows cover message
ids [lower, upper), the index the ids below ``lower``, so the union is exactly the index's
answer, in the same order (message id descending, then role). Either way the rows are the
index's: the estimate only chooses how fast they come.

On PostgreSQL the windows walk ``search_signatures`` (migration ``0012_search_signatures``)
instead of the deliveries: one row per (mailbox, message) with a 512-bit signature of the
message's words (eight bigints, migration ``0013_signatures_long_letters``: a bit per word's first
four characters and one per its first six, so that it still filters on letters of 1,000 words),
read from its primary key alone (~0.2 µs a row). Only the rows whose signature
holds the bits of every query word of four characters or more (``signature_bits``), a few per
cent of a window, are joined to their delivery and message and tested against the words: a
signature never drops a match, so the rows are the same. Each window is one statement, which
also returns how many candidate rows it had, so the hand-over to the index weighs what the
windows really cost; the first one is sized for the page from the words' frequency. Its
statement is built once per shape and kept (``_signature_window``): building it cost the client
more CPU than the server spends answering it.

On PostgreSQL a search's statements run with custom plans (and, for rare words, no parallel
workers), set for its transaction once: by the service in its mailbox access check's own
statement (``search_settings``, ``setting_columns``), else by the first statement that needs them.
"""

from __future__ import annotations

import re
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from monsisra.services.messages.placement import MAILBOX_TOKEN
from monsisra.store.models import Delivery, Message

WINDOW_FIRST = 128  # rows of the first window; each next one is 4 times bigger, up to WINDOW_MAX
WINDOW_MAX = 8192
WINDOW_BUDGET = 2_000  # rows the windows may walk for one page before the text index takes over
# ... times this on engines whose window rows are cheaper: on PostgreSQL (1M messages, 100k
# mailbox) « fibrillation apixaban » needs ~3,800 rows, while GIN takes 100–120 ms for its
# 8,669 matches (prefix lists of 100k+ postings each). SQLite's rows cost ~3 µs since the
# substring pre-test (the windows there only serve prefixes too wide to list as tokens).
BUDGET_FACTOR = {"sqlite": 4, "postgresql": 4}
MIN_SAMPLE = 128  # rows walked before the hit density is trusted (a rare word: none in the first window)
# A window row (read the message's text, test the words) costs about as much as reading this
# many postings of the text index. SQLite: ~3 µs per row (instr() on the text, Python only for
# rows holding every word), ~0.035 µs per posting of a prefix (1M messages: « bilan » 673k
# postings in 24 ms). PostgreSQL tests a stored tsvector in C (at 100k messages: « échographie
# cardiaque » 16 ms by windows, 21–25 by GIN).
POSTINGS_PER_ROW = {"sqlite": 100, "postgresql": 40}
ESTIMATE_TTL = 600.0  # seconds a store's term frequencies are reused (they drift slowly)
_ESTIMATES_MAX = 4096
_estimates: dict[tuple[str, str], tuple[float, Any]] = {}

_FTS = sa.table("message_fts", sa.column("rowid", sa.Integer))

# --- PostgreSQL: signatures of (mailbox, message) -------------------------------------------------
SIGNATURES = True  # walk search_signatures when the store has it (tests switch it off)
SIGNATURE_WIDTH = 512  # migration 0013 (256 in 0012)
SIGNATURE_PREFIX = 4  # characters of a word that its bit hashes; shorter words set none
SIGNATURE_LONG_PREFIX = 6  # words this long set a second bit, for their first this many characters
SIGNATURE_FIRST = 1024  # signature rows of the first window; each next one 4 times bigger, up to:
SIGNATURE_MAX = 65_536
SIGNATURE_FIRST_MAX = 16_384  # a first window sized from the words' frequency stops here
# A signature row (read from the primary key, its bits tested) costs about this share of a
# window row (delivery + message read, tsvector tested): 1M store, 0.24 µs against 3–4 µs.
SIGNATURE_ROW_COST = 0.08
_SIGNED = re.compile(f"[a-z0-9]{{{SIGNATURE_PREFIX},}}")
_SIG = sa.table("search_signatures", sa.column("mailbox_id", sa.Integer), sa.column("message_id", sa.Integer),
                *(sa.column(f"sig{k}", sa.BigInteger) for k in range(SIGNATURE_WIDTH // 64)))


def signature_position(word: str, length: int = SIGNATURE_PREFIX) -> int:
    """The bit that the first ``length`` characters of a word hash to: the same hash as the SQL
    function ``search_signature`` (migration 0013): base-31 polynomial of the code points, then
    the top 9 bits of Knuth's multiplicative hash of it modulo 2^31 - 1."""
    h = 0
    for ch in word[:length]:
        h = h * 31 + ord(ch)
    for _ in range(length - len(word)):
        h *= 31
    return (h % 2147483647 * 2654435761 % 4294967296) >> (32 - (SIGNATURE_WIDTH.bit_length() - 1))


def lexeme_positions(word: str) -> set[int]:
    """The bits a lexeme of ``search_vector`` sets in a signature (``search_signature``): its
    first four characters', and its first six's from six characters on; none below four
    characters (no signed query term can match it) nor for a mailbox token."""
    if len(word) < SIGNATURE_PREFIX or word.startswith(MAILBOX_TOKEN):
        return set()
    positions = {signature_position(word)}
    if len(word) >= SIGNATURE_LONG_PREFIX:
        positions.add(signature_position(word, SIGNATURE_LONG_PREFIX))
    return positions


def signature_bits(terms: list[str]) -> list[int] | None:
    """The bits every message matching ``terms`` has in its signature, as its signed 64-bit
    words (bit p is bit 63 - p % 64 of word p // 64, as in ``search_signature``); None when no
    term sets one. Only plain ASCII words of four characters or more: PostgreSQL's parser reads
    each of them as a single lexeme, so a message holding a word that starts with it holds a
    lexeme at least as long whose first four (and six) characters are the term's."""
    positions: set[int] = set()
    for t in terms:
        if _SIGNED.fullmatch(t):
            positions |= lexeme_positions(t)
    if not positions:
        return None
    words = [0] * (SIGNATURE_WIDTH // 64)
    for p in positions:
        words[p // 64] |= 1 << (63 - p % 64)
    return [w - (1 << 64) if w >= 1 << 63 else w for w in words]


async def _has_signatures(s: AsyncSession) -> bool:
    async def compute() -> bool:
        return bool(await s.scalar(sa.text("SELECT to_regclass('search_signatures') IS NOT NULL")))

    return await _cached(s, "#signatures", compute)


def index_statement(dialect: str, columns, mailbox_id: int, terms: list[str],
                    tokens: list[list[str]] | None = None) -> sa.Select:
    """Messages of one mailbox matching every term (as a prefix), driven by the text index.
    SQLite: with ``tokens`` (each term's prefix expanded into the index's own tokens, see
    ``fts_tokens``), the same matches asked as whole tokens."""
    if dialect == "sqlite":
        if tokens is not None:
            words = ["(" + " OR ".join('"' + t.replace('"', '""') + '"' for t in ts) + ")" for ts in tokens]
        else:
            words = [f'"{t}"*' for t in terms]
        query = f"{MAILBOX_TOKEN}{mailbox_id} AND " + " AND ".join(words)
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
        # The Python test costs ~30 µs a row (the call and the text's conversion), instr() ~1 µs:
        # a row whose text does not even contain every word (nearly all of a window) never
        # reaches Python. ``words_match`` starts with the same substring test, so the answer is
        # the same; CASE guarantees the order.
        words = f"{MAILBOX_TOKEN}{mailbox_id} " + " ".join(f"{t}*" for t in terms)
        names = {f"w{i}": t for i, t in enumerate(terms)}
        contains = " AND ".join(f"instr(messages.search_text, :{n}) > 0" for n in names)
        return sa.text(f"CASE WHEN {contains} THEN monsisra_words(messages.search_text, :words) ELSE 0 END"
                       ).bindparams(words=words, **names)
    # ts_match_vq is what @@ calls; as a function it never leads the planner to the GIN index.
    return sa.text("ts_match_vq(messages.search_vector, to_tsquery('simple', :wtsq))").bindparams(
        wtsq=_tsquery(mailbox_id, terms))


# --- PostgreSQL: the search transaction's settings ------------------------------------------------
# Every statement of a search is planned for its own values (custom plans): a generic plan of a
# prepared statement is blind to the window's bounds and size, or to how rare the words are.
CUSTOM_PLANS = {"plan_cache_mode": "force_custom_plan"}
# A page of rare words from GIN runs without parallel workers (see ``_index_rows``).
SERIAL = {"max_parallel_workers_per_gather": "0"}


async def search_settings(s: AsyncSession, terms: list[str]) -> dict[str, str]:
    """The settings a search of ``terms`` makes for its transaction on PostgreSQL (none on SQLite):
    custom plans, and no parallel workers when the words are rare (``_rare_words``: then the page
    comes from the index, and the windows and the page's other statements are small index reads
    either way). The caller may send them with a statement it makes anyway (``setting_columns``,
    then ``settings_made``): the search then makes no round trip of its own for them."""
    if s.bind.dialect.name != "postgresql":
        return {}
    return {**CUSTOM_PLANS, **(SERIAL if await _rare_words(s, terms) else {})}


def setting_columns(settings: dict[str, str]) -> list[sa.ColumnElement[Any]]:
    """``set_config(name, value, true)`` for each setting (for this transaction only), as columns
    of a statement sent anyway; evaluated when that statement returns a row."""
    return [sa.func.set_config(name, value, True).label(f"setting_{k}")
            for k, (name, value) in enumerate(settings.items())]


def settings_made(s: AsyncSession, settings: dict[str, str]) -> None:
    """Record that ``settings`` are in effect in ``s``'s current transaction."""
    if settings:
        s.info["search_settings"] = (s.sync_session.get_transaction(), {**_settings_in(s), **settings})


def _settings_in(s: AsyncSession) -> dict[str, str]:
    made = s.info.get("search_settings")
    # Transaction-local: those recorded in an earlier transaction of the session are gone.
    if made is None or made[0] is not s.sync_session.get_transaction():
        return {}
    return made[1]


async def _make_settings(s: AsyncSession, settings: dict[str, str]) -> None:
    """Make those of ``settings`` not yet in effect in this transaction, in one statement (none
    when the caller already made them: ``search_settings``)."""
    made = _settings_in(s)
    missing = {k: v for k, v in settings.items() if made.get(k) != v}
    if missing:
        await s.execute(sa.select(*setting_columns(missing)))
        settings_made(s, missing)


def _order(stmt: sa.Select, first=Delivery.message_id) -> sa.Select:
    # Ties (one message twice in a view: sent to oneself) by role, the order in which SQLite's
    # index path meets them through the unique (mailbox, message, role) index.
    return stmt.order_by(first.desc(), Delivery.role)


async def search_rows(s: AsyncSession, columns, mailbox_id: int, terms: list[str], conditions: list[Any],
                      before: int | None, want: int, *, strategy: str = "auto") -> list[Any]:
    """Up to ``want`` rows of ``columns`` for the deliveries of ``mailbox_id`` meeting
    ``conditions`` whose message matches ``terms``, message id below ``before`` (the cursor),
    newest message first. ``strategy``: ``auto`` (the index for rare words, else ``adaptive``),
    ``adaptive`` (windows, then the index once hits are seen to be sparse), ``index``,
    ``window`` (windows to the end of the mailbox: for tests), ``tokens`` (SQLite: the index
    asked for whole tokens, see ``fts_tokens``; ``auto`` takes it whenever the prefixes expand)."""
    dialect = s.bind.dialect.name
    if dialect == "sqlite" and strategy in ("auto", "tokens"):
        tokens = await fts_tokens(s, terms)
        if tokens is not None:
            if not all(tokens):
                return []  # a term that no token of the index starts with
            return await _index_rows(s, dialect, columns, mailbox_id, terms, conditions, before, want, tokens)
    mask = None
    if dialect == "postgresql" and SIGNATURES:
        mask = signature_bits(terms)
        if mask is not None and not await _has_signatures(s):
            mask = None
    row_cost = SIGNATURE_ROW_COST if mask is not None else 1.0  # a walked row, in window rows
    if strategy == "index" or (strategy == "auto" and await _index_first(s, terms, want, row_cost)):
        return await _index_rows(s, dialect, columns, mailbox_id, terms, conditions, before, want)
    if mask is not None:
        return await _signature_rows(s, columns, mailbox_id, terms, conditions, before, want, strategy, mask)
    rows: list[Any] = []
    upper, walked, size = before, 0, WINDOW_FIRST
    match = _window_match(dialect, mailbox_id, terms)
    if dialect == "postgresql":
        # Planned for each window's bounds: a generic plan of the prepared statement may take
        # ix_deliveries_message_id and sort the whole window (no stop at the page's last row).
        await _make_settings(s, CUSTOM_PLANS)
    index_cost: float | None = None  # the index's cost in window rows, once the budget is passed
    while len(rows) < want:
        if strategy != "window" and walked >= MIN_SAMPLE:
            needed = (want - len(rows)) * walked / max(len(rows), 0.5)
            if walked + needed > WINDOW_BUDGET * BUDGET_FACTOR.get(dialect, 1):
                # Over budget, the index takes over only if it costs less than the rows still
                # needed: two words of 10 % each found together in 1.4 % of messages leave the
                # first window empty one time in six, and GIN then costs ~1 s at 10M messages.
                # A combination that never comes keeps raising ``needed`` until it does.
                if index_cost is None:
                    index_cost = await _index_cost_rows(s, terms)
                if needed > index_cost:
                    break
        in_box = [Delivery.mailbox_id == mailbox_id]
        if upper is not None:
            in_box.append(Delivery.message_id < sa.literal(upper, sa.BigInteger))
        # The lowest message id of the next ``size`` deliveries (covering unique index).
        lower = await s.scalar(sa.select(Delivery.message_id).where(*in_box)
                               .order_by(Delivery.message_id.desc()).limit(1).offset(size - 1))
        window = in_box[1:] + ([Delivery.message_id >= lower] if lower is not None else [])
        stmt = (sa.select(*columns).select_from(Delivery).join(Message, Message.id == Delivery.message_id)
                .where(*window, *conditions, match))
        if dialect != "postgresql":
            stmt = stmt.where(in_box[0])
        else:
            # Through the unique (mailbox, message, role) index: with a plain ``=`` the planner
            # walks ix_deliveries_message_id, which is better correlated with the heap, and
            # filters out every other mailbox's deliveries of the window (1M messages, window
            # of 4,096: 90,668 rows filtered, 14–37 ms → 3–4 ms). The array keeps mailbox_id
            # in the order, which only the unique index gives (see ``reading._in_mailbox``).
            stmt = stmt.where(Delivery.mailbox_id == sa.any_(sa.literal([mailbox_id], sa.ARRAY(sa.Integer))))
            stmt = stmt.order_by(Delivery.mailbox_id.desc())
        rows.extend((await s.execute(_order(stmt).limit(want - len(rows)))).all())
        walked += size
        if lower is None:
            return rows  # the whole mailbox (below the cursor) was walked
        upper, size = lower, min(size * 4, WINDOW_MAX)
    if len(rows) < want:
        rows.extend(await _index_rows(s, dialect, columns, mailbox_id, terms, conditions, upper, want - len(rows)))
    return rows


async def _signature_rows(s: AsyncSession, columns, mailbox_id: int, terms: list[str], conditions: list[Any],
                          before: int | None, want: int, strategy: str, mask: list[int]) -> list[Any]:
    """The windows of ``search_rows`` over ``search_signatures`` (PostgreSQL), one statement
    each: the window is the next ``size`` (mailbox, message) rows below ``upper`` (its lowest
    message id and how many of its rows are candidates come back with it); only the candidates
    are joined to their delivery and message and tested against the words. The first window is
    sized for the page from the words' frequency in the store. The rows below the last window
    walked come from the text index, as in ``search_rows``."""
    rows: list[Any] = []
    upper, walked, cost = before, 0, 0.0
    size = await _first_signature_window(s, terms, want)
    # Planned for each window's bounds and mask (see search_rows); set once per transaction.
    await _make_settings(s, CUSTOM_PLANS)
    index_cost: float | None = None
    params: dict[str, Any] = {"sig_box": mailbox_id, "sig_boxes": [mailbox_id],
                              "wtsq": _tsquery(mailbox_id, terms)}
    params.update({f"sig_m{k}": m for k, m in enumerate(mask) if m})
    words = tuple(k for k, m in enumerate(mask) if m)
    while len(rows) < want:
        if strategy != "window" and walked >= MIN_SAMPLE:
            needed = (want - len(rows)) * walked / max(len(rows), 0.5)  # mailbox rows still to walk
            per_row = cost / walked
            if cost + needed * per_row > WINDOW_BUDGET * BUDGET_FACTOR["postgresql"]:
                # As in search_rows: the index takes over only if it costs less than the rest.
                if index_cost is None:
                    index_cost = await _index_cost_rows(s, terms)
                if needed * per_row > index_cost:
                    break
        stmt = _signature_window(columns, conditions, words, upper is not None)
        got = (await s.execute(stmt, {**params, "sig_upper": upper, "sig_size": size,
                                      "sig_want": want - len(rows)})).all()
        lower, count, candidates = got[0][-3:]
        rows.extend(r for r in got if r.id is not None)
        walked += count
        cost += count * SIGNATURE_ROW_COST + candidates
        if count < size:
            return rows  # the whole mailbox (below the cursor) was walked
        upper, size = lower, min(size * 4, SIGNATURE_MAX)
    if len(rows) < want:
        rows.extend(await _index_rows(s, "postgresql", columns, mailbox_id, terms, conditions, upper,
                                      want - len(rows)))
    return rows


_WINDOW_STATEMENTS_MAX = 256
_window_statements: dict[Any, sa.Select] = {}


def _signature_window(columns, conditions: list[Any], words: tuple[int, ...], bounded: bool) -> sa.Select:
    """The statement of one signature window, built once per shape (columns, view conditions,
    mask words set, cursor or not) and then only executed with new parameters (``sig_box``,
    ``sig_boxes``, ``sig_m<k>``, ``sig_upper``, ``sig_size``, ``sig_want``, ``wtsq``). Building it
    costs the client more than the statement costs the server: the lateral subquery's columns
    alone are 23 new column objects, 4–6 ms of CPU a window on this host, while the server
    answers a page of « bilan » in about 2 ms. The conditions' own values are part of the key."""
    key = _statement_key(columns, conditions, words, bounded)
    statement = _window_statements.get(key) if key is not None else None
    if statement is not None:
        return statement
    # Word by word, on 64-bit integers (a bit(256) test costs ~0.6 µs a row, these ~0.05).
    candidate = sa.and_(*(_SIG.c[f"sig{k}"].bitwise_and(sa.bindparam(f"sig_m{k}", type_=sa.BigInteger))
                          == sa.bindparam(f"sig_m{k}", type_=sa.BigInteger) for k in words))
    below = [_SIG.c.message_id < sa.bindparam("sig_upper", type_=sa.BigInteger)] if bounded else []
    # The window: its lowest message id, rows and candidates, from the primary key alone.
    ahead = (sa.select(_SIG.c.message_id, candidate.label("hit"))
             .where(_SIG.c.mailbox_id == sa.bindparam("sig_box", type_=sa.Integer), *below)
             .order_by(_SIG.c.mailbox_id.desc(), _SIG.c.message_id.desc())
             .limit(sa.bindparam("sig_size", type_=sa.Integer)).subquery("ahead"))
    span = sa.select(sa.func.min(ahead.c.message_id).label("lower"), sa.func.count().label("walked"),
                     sa.func.count().filter(ahead.c.hit).label("candidates")).subquery("span")
    # The candidates' columns under plain names (c0, c1, …), read back by typed labels: the
    # lateral's own column collection (``found.c``) is what costs most to build.
    found = (sa.select(*(c.label(f"c{i}") for i, c in enumerate(columns))).select_from(_SIG)
             # mailbox_id = the constant: the delivery is found by its unique index.
             .join(Delivery, sa.and_(Delivery.mailbox_id == sa.bindparam("sig_box", type_=sa.Integer),
                                     Delivery.message_id == _SIG.c.message_id))
             .join(Message, Message.id == _SIG.c.message_id)
             .where(_SIG.c.mailbox_id == sa.any_(sa.bindparam("sig_boxes", type_=sa.ARRAY(sa.Integer))),
                    _SIG.c.message_id >= span.c.lower, *below, candidate, *conditions,
                    sa.text("ts_match_vq(messages.search_vector, to_tsquery('simple', :wtsq))"))
             .order_by(_SIG.c.mailbox_id.desc(), _SIG.c.message_id.desc(), Delivery.role)
             .limit(sa.bindparam("sig_want", type_=sa.Integer)).lateral("found"))
    names = [c.name for c in columns]
    out = [sa.literal_column(f"found.c{i}", c.type).label(name) for i, (c, name) in enumerate(zip(columns, names,
                                                                                                   strict=True))]
    statement = (sa.select(*out, span.c.lower, span.c.walked, span.c.candidates)
                 .select_from(span.outerjoin(found, sa.true()))
                 .order_by(sa.literal_column(f"found.c{names.index('id')}").desc(),
                           sa.literal_column(f"found.c{names.index('role')}")))
    if key is not None:
        if len(_window_statements) >= _WINDOW_STATEMENTS_MAX:
            _window_statements.clear()
        _window_statements[key] = statement
    return statement


def _statement_key(columns, conditions: list[Any], words: tuple[int, ...], bounded: bool) -> Any:
    """What a window statement depends on: the columns (the same tuple object), each condition's
    SQLAlchemy cache key (its structure) with its bound values, the mask words and the cursor;
    None when a condition has no cache key (then the statement is built for this call only)."""
    parts = []
    for c in conditions:
        ck = c._generate_cache_key()
        if ck is None:
            return None
        values = tuple(tuple(v) if isinstance(v, list) else v for v in (b.effective_value for b in ck.bindparams))
        parts.append((ck.key, values))
    return tuple(columns), tuple(parts), words, bounded


async def _first_signature_window(s: AsyncSession, terms: list[str], want: int) -> int:
    """Signature rows of the first window: those the page needs at the words' frequency in the
    store, a quarter more, within [``SIGNATURE_FIRST``, ``SIGNATURE_FIRST_MAX``];
    ``SIGNATURE_FIRST`` without statistics. The words are taken as independent: words that come
    together make the window too big, which costs only its count (~0.2 µs a row: the window
    itself stops at the page), while a window too small costs one more statement."""
    documents = [await term_documents(s, t) for t in terms]
    messages = await _store_messages(s)
    if any(d is None for d in documents) or messages <= 0:
        return SIGNATURE_FIRST
    density = 1.0
    for d in documents:
        density *= min(1.0, d / messages)
    rows = want / density * 1.25 if density > 0 else SIGNATURE_FIRST_MAX
    return int(max(SIGNATURE_FIRST, min(rows, SIGNATURE_FIRST_MAX)))


async def _index_rows(s: AsyncSession, dialect: str, columns, mailbox_id: int, terms: list[str],
                      conditions: list[Any], bound: int | None, want: int,
                      tokens: list[list[str]] | None = None) -> list[Any]:
    if dialect == "postgresql":
        # A generic plan of the prepared statement would ignore how rare the words are; and a
        # page of a rare word is planned as a Parallel Bitmap Heap Scan under a Gather Merge,
        # whose worker costs more to start than the scan itself (10M store, « phéochromocytome »:
        # first row at 6 ms, the worker's share done at 1.9 ms) and, on a busy host, is the
        # p99. Both in one statement (one round trip), or none when the caller made them with
        # its own (``search_settings``): serial when the words are rare.
        await _make_settings(s, {**CUSTOM_PLANS, **(SERIAL if await _rare_words(s, terms) else {})})
    stmt = index_statement(dialect, columns, mailbox_id, terms, tokens).where(
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


SERIAL_SHARE = 0.01  # words this rare (share of the store's messages) are read from the index without workers


async def _rare_words(s: AsyncSession, terms: list[str]) -> bool:
    """Whether the rarest term is in at most ``SERIAL_SHARE`` of the store's messages (from the
    statistics; False without them): the index then returns few enough rows for one process."""
    documents = [await term_documents(s, t) for t in terms]
    messages = await _store_messages(s)
    known = [d for d in documents if d is not None]
    return bool(known) and messages > 0 and min(known) <= SERIAL_SHARE * messages


def index_first(documents: list[int], messages: int, want: int, postings_per_row: float,
                budget: float | None = None) -> bool:
    """Whether a page of ``want`` rows is cheaper from the text index than from windows, given
    how many of the store's ``messages`` hold each term (``documents``): the windows walk about
    ``want / density`` rows, the index reads every posting of the terms (a prefix query
    collects all its postings before the first row). The density of several words together is
    taken as that of the rarest one: words searched together tend to come together
    (« échographie cardiaque »), and when they do not, the windows still hand over to the index."""
    if messages <= 0:
        return True
    density = min(min(1.0, d / messages) for d in documents)
    if density <= 0:
        return True
    rows = want / density
    return rows > (budget or WINDOW_BUDGET) or sum(documents) < rows * postings_per_row


async def _index_cost_rows(s: AsyncSession, terms: list[str]) -> float:
    """What reading the terms' postings from the index costs, in window rows (0: unknown)."""
    documents = [await term_documents(s, t) for t in terms]
    if any(d is None for d in documents):
        return 0.0
    return sum(documents) / POSTINGS_PER_ROW.get(s.bind.dialect.name, 100)


async def _index_first(s: AsyncSession, terms: list[str], want: int, row_cost: float = 1.0) -> bool:
    """``index_first`` with this engine's costs; ``row_cost``: a walked row in window rows (the
    signature rows of PostgreSQL cost a fraction of one). It weighs the postings against the
    rows, not the budget: a rare word still goes to the index (10M store, « phéochromocytome »:
    GIN 5 ms, while signature windows met a bit shared with common words and cost 30 ms)."""
    documents = [await term_documents(s, t) for t in terms]
    if any(d is None for d in documents):
        return False  # no statistics yet: windows, with their own hand-over
    dialect = s.bind.dialect.name
    return index_first(documents, await _store_messages(s), want, POSTINGS_PER_ROW.get(dialect, 100) * row_cost,
                       WINDOW_BUDGET * BUDGET_FACTOR.get(dialect, 1))


async def _cached(s: AsyncSession, key: str, compute) -> Any:
    database = str(s.bind.sync_engine.url)
    now = time.monotonic()
    hit = _estimates.get((database, key))
    if hit and hit[0] > now:
        return hit[1]
    value = await compute()
    if len(_estimates) >= _ESTIMATES_MAX:
        _estimates.clear()
    _estimates[(database, key)] = (now + ESTIMATE_TTL, value)
    return value


async def _store_messages(s: AsyncSession) -> int:
    async def compute() -> int:
        return int(await s.scalar(sa.select(sa.func.max(Message.id))) or 0)

    return await _cached(s, "#messages", compute)


async def term_documents(s: AsyncSession, term: str) -> int | None:
    """About how many messages of the store hold a word starting with ``term`` (folded), from the
    text index's own statistics; None when the engine has none yet (PostgreSQL before ANALYZE).
    SQLite: the FTS5 vocabulary (``temp.message_fts_vocab``, see ``store.db``) for a rare word, the
    number of index pages of a common one (``_fts_documents``); kept ``ESTIMATE_TTL`` seconds.
    PostgreSQL: the most common lexemes of ``search_vector`` and their frequencies (``pg_stats``);
    a term outside them is rarer than the rarest of them."""
    if s.bind.dialect.name == "sqlite":
        return await _cached(s, "term:" + term, lambda: _fts_documents(s, term))
    common = await _cached(s, "#pg_common", lambda: _pg_common_lexemes(s))
    if common is None:
        return None
    frequencies, floor, shares = common
    share = shares.get(term)
    if share is None:
        # A search asks for each term three times (settings, route, first window): the sum over
        # the ~1,000 common lexemes is made once per term while these statistics are kept.
        if len(shares) >= _ESTIMATES_MAX:
            shares.clear()
        share = shares[term] = sum(f for lexeme, f in frequencies.items() if lexeme.startswith(term)) or floor
    return round(share * await _store_messages(s))


# FTS5 keeps, per segment of its index, the first term of each leaf page that starts a term
# (``message_fts_idx``: segid, term prefixed by '0' for the main index, page number << 1 | flag).
# The pages from the one holding the first term >= t to the first one starting at or after the
# end of the prefix range hold every posting of the range: an upper bound read in two index
# lookups per segment, whatever the word's frequency. A common word's doclist is ~3.3 bytes a
# document (1M store: 1,135–1,244 documents per page for every word above 50,000 documents).
_FTS_PAGES = sa.text("""
WITH RECURSIVE seg(id) AS (
  SELECT (SELECT min(segid) FROM message_fts_idx)
  UNION ALL SELECT (SELECT min(segid) FROM message_fts_idx WHERE segid > seg.id) FROM seg WHERE seg.id IS NOT NULL)
SELECT coalesce(sum(
  coalesce((SELECT pgno FROM message_fts_idx WHERE segid = seg.id AND term >= :hi ORDER BY term LIMIT 1) >> 1,
           (SELECT max(id) FROM message_fts_data WHERE id BETWEEN seg.id << 37 AND (seg.id << 37) + (1 << 31) - 1)
           - (seg.id << 37) + 1)
  - coalesce((SELECT pgno FROM message_fts_idx WHERE segid = seg.id AND term <= :lo ORDER BY term DESC LIMIT 1)
             >> 1, 1)), 0)
FROM seg WHERE id IS NOT NULL""")
FTS_DOCUMENTS_PER_PAGE = 1_200
FTS_EXACT_PAGES = 128  # up to this many pages the vocabulary is read (~0.04 ms a page): exact


async def _fts_documents(s: AsyncSession, term: str) -> int:
    """Messages holding a token starting with ``term``: exact from the FTS5 vocabulary when the
    index pages of the range are few, else estimated from their number. Reading the vocabulary
    of a common word reads all its postings (« bilan »: 58 ms at 1M messages, ~0.6 s at 10M);
    the page count costs two index lookups per segment. The estimate only errs upwards (a rare
    word next to a long doclist), which costs a first window before the hand-over to the index."""
    upper = term[:-1] + chr(ord(term[-1]) + 1)
    pages = await s.scalar(_FTS_PAGES.bindparams(lo=("0" + term).encode(), hi=("0" + upper).encode()))
    if pages is not None and pages > FTS_EXACT_PAGES:
        return int(pages) * FTS_DOCUMENTS_PER_PAGE
    return int(await s.scalar(sa.text(
        "SELECT coalesce(sum(doc), 0) FROM temp.message_fts_vocab WHERE term >= :t AND term < :u"
    ).bindparams(t=term, u=upper)) or 0)


# --- SQLite: a prefix expanded into the index's own tokens ---------------------------------------
#
# FTS5 answers ``"bilan"*`` by first merging the postings of every token starting with « bilan »
# (no prefix index): 21 ms for the 673,346 documents of « bilan » at 1M messages, ten times that
# at 10M, before the first row. Asked as whole tokens (``"bilan" OR "bilans"``), it walks the
# postings lazily, newest first, leaping between the words and the mailbox token with the
# doclist indexes: 0.2–0.5 ms for the first page of every query of the benchmark at 1M.
# The tokens of a prefix are read from the index's leaf pages (format in SQLite's
# ext/fts5/fts5_index.c): in each segment, the page where the range would start (the last
# ``message_fts_idx`` key <= the prefix) and every page whose first term lies in the range; each
# page lists the offsets of the terms starting on it in its footer. Read in the same transaction
# as the search, so the tokens are exactly those of the index it asks.
FTS_TOKENS_MAX = 32  # tokens of one prefix asked as alternatives; more (« a »): the prefix query
FTS_TOKEN_PAGES_MAX = 64  # leaf pages read to list them; more: the prefix query
_FTS_TOKEN_PAGES = sa.text("""
WITH RECURSIVE seg(id) AS (
  SELECT (SELECT min(segid) FROM message_fts_idx)
  UNION ALL SELECT (SELECT min(segid) FROM message_fts_idx WHERE segid > seg.id) FROM seg WHERE seg.id IS NOT NULL),
page(id) AS (
  SELECT (id << 37)
         + (SELECT pgno >> 1 FROM message_fts_idx WHERE segid = seg.id AND term <= :lo ORDER BY term DESC LIMIT 1)
  FROM seg WHERE id IS NOT NULL
  UNION
  SELECT id FROM (SELECT (i.segid << 37) + (i.pgno >> 1) AS id
                  FROM seg JOIN message_fts_idx i ON i.segid = seg.id AND i.term >= :lo AND i.term < :hi
                  LIMIT :cap))
SELECT block FROM message_fts_data WHERE id IN (SELECT id FROM page)""")


def _varint(data: bytes, i: int) -> tuple[int, int]:
    """SQLite's varint at ``data[i]``: its value and the offset after it."""
    value = 0
    for _ in range(8):
        byte = data[i]
        i += 1
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            return value, i
    return (value << 8) | data[i], i + 1


def leaf_terms(block: bytes) -> list[bytes]:
    """The terms starting on an FTS5 leaf page (with their index prefix byte), in order: the
    footer from the offset in bytes 2–3 holds each term's offset, delta-coded; the first term
    is stored whole (size, bytes), the next ones as (bytes shared with the previous, size, new bytes)."""
    end, offset, i, offsets = int.from_bytes(block[2:4], "big"), 0, 0, []
    i = end
    while i < len(block):
        delta, i = _varint(block, i)
        offset += delta
        offsets.append(offset)
    terms: list[bytes] = []
    for k, at in enumerate(offsets):
        shared = 0
        if k:
            shared, at = _varint(block, at)
        size, at = _varint(block, at)
        terms.append(terms[-1][:shared] + block[at:at + size] if k else block[at:at + size])
    return terms


async def fts_tokens(s: AsyncSession, terms: list[str]) -> list[list[str]] | None:
    """For each term, the tokens of the FTS5 index starting with it; None when a prefix spans
    too many pages or tokens to be worth listing (the prefix query then)."""
    out = []
    for term in terms:
        lo = ("0" + term).encode()
        hi = ("0" + term[:-1] + chr(ord(term[-1]) + 1)).encode()
        blocks = (await s.execute(_FTS_TOKEN_PAGES.bindparams(lo=lo, hi=hi, cap=FTS_TOKEN_PAGES_MAX + 1))).all()
        if len(blocks) > FTS_TOKEN_PAGES_MAX:
            return None
        found: set[bytes] = set()
        for (block,) in blocks:
            found.update(t for t in leaf_terms(block) if lo <= t < hi)
        if len(found) > FTS_TOKENS_MAX:
            return None
        out.append(sorted(t[1:].decode() for t in found))
    return out


async def _pg_common_lexemes(s: AsyncSession) -> tuple[dict[str, float], float, dict[str, float]] | None:
    """The most common lexemes of ``search_vector`` and their frequencies, the lowest of them, and
    an empty memo of each term's share (filled by ``term_documents``)."""
    row = (await s.execute(sa.text(
        "SELECT most_common_elems::text::text[], most_common_elem_freqs FROM pg_stats "
        "WHERE tablename = 'messages' AND attname = 'search_vector' AND schemaname = current_schema()"
    ))).first()
    if row is None or not row[0]:
        return None
    lexemes, freqs = row[0], row[1]
    frequencies = dict(zip(lexemes, freqs[:len(lexemes)], strict=True))
    # After the lexemes' own frequencies come the lowest and highest of them.
    return frequencies, min(frequencies.values()), {}
