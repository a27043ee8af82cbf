"""Windowed mailbox search (issue 18, item 4): walking a mailbox newest first in windows and
testing each row against the words gives exactly the rows of the text index (FTS5 / GIN), in
the same order, page after page, for common, rare, prefix and two-word queries, in every view,
on both engines — with the windows small enough here that the walk crosses many windows and
hands over to the index half-way."""

from __future__ import annotations

import asyncio
import random
import sqlite3
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from monsisra.domain.text import search_terms, words_match
from monsisra.services import accounts, messages
from monsisra.services.core import Actor, Core
from monsisra.services.messages import search
from monsisra.services.messages.reading import _LIST_COLUMNS, _qualified
from monsisra.store.db import make_engine
from monsisra.store.models import VIEW_SQL, Delivery, Message
from tests.support import fresh_database, make_settings

COMMON = ["bilan", "patient", "suivi"]
MEDIUM = ["echographie", "cardiaque", "fibrillation"]
RARE = ["pheochromocytome", "apixaban"]
FILLER = ["consultation", "resultat", "courrier", "controle", "traitement", "examen", "cardio", "bilans"]
# « diaque »: inside « cardiaque » (the substring pre-test of SQLite's windows passes, the token test not).
QUERIES = ["bilan", "Échographie cardiaque", "fibrillation apixaban", "phéochromocytome", "car", "Dubois",
           "nulle-part", "diaque"]
VIEWS = [("all", None), ("inbox", None), ("sent", None), ("archived", None), ("trash", None), ("all", "result")]


def _text(rng: random.Random) -> str:
    words = [rng.choice(FILLER) for _ in range(rng.randint(3, 12))]
    if rng.random() < 0.5:
        words.append(rng.choice(COMMON))
    if rng.random() < 0.08:
        words.append(rng.choice(MEDIUM))
    if rng.random() < 0.01:
        words.append(rng.choice(RARE))
    rng.shuffle(words)
    return " ".join(words)


async def _populate(core: Core, box: int, other: int) -> None:
    rng = random.Random(5)
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    async with core.write() as tx:
        s = tx.session
        msgs, dels = [], []
        for i in range(1, 1501):
            sender = rng.choice(["Dr Paul DUBOIS", "Dr Anne DUBOISSON", "Dr Marc LEROY", "Labo Bio"])
            subject, body = _text(rng).capitalize(), _text(rng)
            if rng.random() < 0.05:
                subject = "Échographie cardiaque " + subject  # accents are folded away by the index
            tokens = [box, other]
            if rng.random() < 0.02:
                tokens = [other, int(f"{box}5")]  # delivered here but without this box's token
            text = messages.build_search_text(subject, body, sender, "x@monsisra.localhost", [], mailbox_ids=tokens)
            msgs.append({"id": i, "message_id": f"<{i}@t>", "sender_address": "x@monsisra.localhost",
                         "sender_name": sender, "subject": subject, "body": body, "preview": body[:100],
                         "category": rng.choice(["letter", "result", "mssante"]), "created_at": t0 + timedelta(i),
                         "search_text": text})
            roles = ["in"] if rng.random() < 0.85 else (["sent"] if rng.random() < 0.7 else ["in", "sent"])
            for role in roles:
                deleted = rng.random() < 0.05
                dels.append({"mailbox_id": box, "message_id": i, "uid": len(dels) + 1, "role": role,
                             "category": msgs[-1]["category"], "created_at": t0 + timedelta(i),
                             "read": rng.random() < 0.7, "archived": rng.random() < 0.3, "deleted": deleted,
                             "deleted_at": t0 + timedelta(i + 1) if deleted else None})
        rng.shuffle(dels)  # delivery ids do not follow message ids: the order is the message's
        await s.execute(sa.insert(Message), msgs)
        await s.execute(sa.insert(Delivery), dels)


async def _all_pages(s, box: int, terms: list[str], conditions, strategy: str, page: int) -> list[tuple]:
    out, before = [], None
    while True:
        rows = await search.search_rows(s, _LIST_COLUMNS, box, terms, conditions, before, page + 1,
                                        strategy=strategy)
        out += [(r.id, r.delivery_id) for r in rows[:page]]
        if len(rows) <= page:
            return out
        before = rows[page - 1].id


@pytest.fixture(scope="module")
def store(backend, tmp_path_factory):
    with fresh_database(backend, tmp_path_factory.mktemp(f"db-window-{backend}")) as url:
        settings = make_settings(url, tmp_path_factory.mktemp(f"data-window-{backend}"), smtp_enabled=False,
                                 run_workers=False)

        async def setup():
            core = Core(settings)
            await core.start()
            a, box = await accounts.create_account(core, accounts.NewAccount(username="win.a", password=None,
                                                                             first_name="A", last_name="Win"))
            _b, other = await accounts.create_account(core, accounts.NewAccount(username="win.b", password=None,
                                                                                first_name="B", last_name="Win"))
            await _populate(core, box.id, other.id)
            await core.close()
            return a.id, box.id

        account_id, box = asyncio.run(setup())
        yield settings, account_id, box


@pytest.mark.parametrize("sizes", ["app", "tiny", "tiny-unsigned"])
def test_windows_return_exactly_the_index_rows(store, sizes, monkeypatch):
    """``tiny-unsigned``: PostgreSQL's windows over the deliveries, without the signatures
    (on SQLite, which has none, the same run as ``tiny``)."""
    settings, _account_id, box = store
    if sizes.startswith("tiny"):  # many windows per page, and the hand-over to the index on most queries;
        # on SQLite « car » (cardio, cardiaque) then has too many tokens: back to the prefix query
        for name, value in (("WINDOW_FIRST", 8), ("WINDOW_MAX", 64), ("MIN_SAMPLE", 24), ("WINDOW_BUDGET", 150),
                            ("FTS_TOKENS_MAX", 1), ("SIGNATURE_FIRST", 8), ("SIGNATURE_MAX", 64)):
            monkeypatch.setattr(search, name, value)
    if sizes == "tiny-unsigned":
        monkeypatch.setattr(search, "SIGNATURES", False)

    async def run():
        core = Core(settings)
        await core.start()
        compared = 0
        try:
            async with core.read() as s:
                for q in QUERIES:
                    terms = search_terms(q)
                    for view, category in VIEWS:
                        conditions = [sa.text(_qualified(VIEW_SQL[view]))]
                        if category:
                            conditions.append(Delivery.category == category)
                        # Page by page: a cursor is a message id, so a message present twice in
                        # the view (sent to oneself) loses its second row at a page boundary, as before.
                        for page in ((50,) if sizes == "app" else (40,)):
                            expected = await _all_pages(s, box, terms, conditions, "index", page)
                            for strategy in ("window", "adaptive", "auto", "tokens"):
                                got = await _all_pages(s, box, terms, conditions, strategy, page)
                                assert got == expected, (q, view, category, strategy, page)
                        compared += len(expected)
        finally:
            await core.close()
        return compared

    assert asyncio.run(run()) > 1000  # the queries do find rows, in all views together


def test_service_pages_follow_the_index_order(store):
    settings, account_id, box = store

    async def run():
        core = Core(settings)
        await core.start()
        actor = Actor(account_id, "win.a")
        try:
            for q in ("bilan", "cardiaque", "apixaban"):
                got, cursor = [], None
                while True:
                    page = await messages.list_messages(core, actor, box, view="all", q=q, cursor=cursor, limit=20)
                    got += [m["id"] for m in page["items"]]
                    cursor = page["next_cursor"]
                    if not cursor:
                        break
                async with core.read() as s:
                    expected = await _all_pages(s, box, search_terms(q), [sa.text(_qualified(VIEW_SQL["all"]))],
                                                "index", 10_000)
                assert got == [mid for mid, _ in expected] and got, q
        finally:
            await core.close()

    asyncio.run(run())


def test_window_statements_are_reused_with_each_calls_values(store, backend):
    """A signature window's statement is built once per shape and then executed with the call's
    own values: each category, category list and cursor gives the index's rows (full rows, in
    order), whether its statement was just built or reused, and a second run builds none."""
    settings, _account_id, box = store

    async def run():
        core = Core(settings)
        await core.start()
        search._window_statements.clear()
        try:
            async with core.read() as s:
                cases = [[Delivery.category == c] for c in ("result", "letter", "mssante")]
                cases += [[Delivery.category.in_(c)] for c in (["result"], ["letter", "mssante"])]
                cases += [[sa.text(_qualified(VIEW_SQL[v]))] for v in ("inbox", "archived")]
                for run_ in range(2):
                    for conditions in cases:
                        for terms in (["bilan"], ["echographie", "cardiaque"]):
                            for before in (None, 700):
                                expected = await search.search_rows(s, _LIST_COLUMNS, box, terms, conditions,
                                                                    before, 30, strategy="index")
                                got = await search.search_rows(s, _LIST_COLUMNS, box, terms, conditions,
                                                               before, 30, strategy="window")
                                # (a window's rows also carry its span: lower, walked, candidates)
                                n = len(_LIST_COLUMNS)
                                assert [tuple(r)[:n] for r in got] == [tuple(r) for r in expected] and got, (
                                    terms, conditions, before)
                                assert {r._fields[:n] for r in got} == {r._fields for r in expected}
                    if run_ == 0:
                        built = len(search._window_statements)
            if backend == "postgres":
                assert built == len(search._window_statements) > len(cases)  # nothing built the second time
            else:
                assert not search._window_statements  # SQLite has no signatures
        finally:
            await core.close()

    asyncio.run(run())


def test_words_match_follows_the_fts_tokens():
    text = "echographie cardiaque dr dubois-martin zzmbx1 zzmbx12"
    assert words_match(text, "zzmbx1 cardi*")
    assert words_match(text, "zzmbx12 martin*")  # « - » separates tokens
    assert not words_match(text, "zzmbx1 ardiaque*")  # a prefix starts a token
    assert not words_match(text, "zzmbx2 cardiaque*")  # a bare word is a whole token
    assert not words_match(text, "zzmbx1 dubois* scanner*")
    assert not words_match(None, "zzmbx1")


def test_term_frequencies_route_rare_words_to_the_index(store, backend, monkeypatch):
    """The store's term frequencies (FTS5 vocabulary / pg_stats after ANALYZE) say how many
    messages hold a word: a rare word goes straight to the index, a common one to windows."""
    settings, _account_id, _box = store

    async def run():
        core = Core(settings)
        await core.start()
        try:
            if backend == "postgres":
                async with core.write() as tx:
                    await tx.session.execute(sa.text("ANALYZE messages"))
            search._estimates.clear()
            async with core.read() as s:
                texts = (await s.scalars(sa.select(Message.search_text))).all()
                for term in ("bilan", "pheochromocytome", "car"):
                    exact = sum(1 for t in texts if words_match(t, f"{term}*"))
                    got = await search.term_documents(s, term)
                    if backend == "sqlite":  # the vocabulary counts each token with the prefix
                        assert got >= exact and (term != "pheochromocytome" or got == exact), term
                    else:  # an estimate from a sample
                        assert got is not None and got > 0, term
                        if term == "pheochromocytome":  # not among the common lexemes: below them
                            assert got < 0.1 * len(texts), term
                        else:  # a prefix sums its lexemes (« cardio » and « cardiaque »)
                            assert 0.5 * exact < got < 3 * exact, term
                        # Summed once per term while the statistics are kept (a search asks three times).
                        _frequencies, _floor, shares = search._estimates[
                            (str(s.bind.sync_engine.url), "#pg_common")][1]
                        assert term in shares and await search.term_documents(s, term) == got, term
                assert await search._index_first(s, ["pheochromocytome"], 51)
                assert await search._index_first(s, ["bilan"], 51)  # 1,500 messages: the index is cheap
                monkeypatch.setitem(search.POSTINGS_PER_ROW, s.bind.dialect.name, 1)  # as in a store of millions
                assert not await search._index_first(s, ["bilan"], 51)
        finally:
            await core.close()

    asyncio.run(run())


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)  # parallel workers: PostgreSQL's planner
def test_rare_words_are_read_from_the_index_without_workers(store, backend, monkeypatch):
    """A page of a rare word from GIN is planned without parallel workers (starting one costs more
    than the scan), for that transaction only; a common word keeps the server's setting. Both
    give the index's rows."""
    settings, _account_id, box = store
    monkeypatch.setattr(search, "SERIAL_SHARE", 0.05)  # 1,500 messages: « pheochromocytome » is in ~1 %

    async def run():
        core = Core(settings)
        await core.start()
        try:
            async with core.write() as tx:
                await tx.session.execute(sa.text("ANALYZE messages"))
            search._estimates.clear()
            async with core.read() as s:
                default = await s.scalar(sa.text("SHOW max_parallel_workers_per_gather"))
            assert default != "0"
            for term, workers in (("pheochromocytome", "0"), ("bilan", default)):
                async with core.read() as s:
                    expected = [tuple(r) for r in await search._index_rows(
                        s, "postgresql", _LIST_COLUMNS, box, [term], [], None, 1000)]
                    assert await s.scalar(sa.text("SHOW max_parallel_workers_per_gather")) == workers, term
                    assert await s.scalar(sa.text("SHOW plan_cache_mode")) == "force_custom_plan"
                async with core.read() as s:
                    assert await s.scalar(sa.text("SHOW max_parallel_workers_per_gather")) == default
                    await s.execute(sa.text("SET LOCAL max_parallel_workers_per_gather = 2"))
                    parallel = [tuple(r) for r in (await s.execute(
                        search.index_statement("postgresql", _LIST_COLUMNS, box, [term])
                        .where(Delivery.mailbox_id == box).order_by(Message.id.desc(), Delivery.role)
                        .limit(1000))).all()]
                assert expected == parallel and (term == "bilan") == (len(expected) > 100), term
        finally:
            await core.close()

    asyncio.run(run())


def test_index_first_weighs_walked_rows_against_postings():
    assert search.index_first([10], 1_000_000, 51, 400)  # rare: the windows would walk the mailbox
    assert not search.index_first([300_000], 1_000_000, 51, 400)  # common: one window fills the page
    assert search.index_first([50_000, 50_000], 1_000_000, 51, 400)  # medium: postings cheaper than rows
    assert not search.index_first([50_000, 50_000], 1_000_000, 51, 40)  # ... unless rows are cheap
    assert search.index_first([500_000, 1_000], 1_000_000, 51, 40)  # the rarest word decides
    assert search.index_first([5], 0, 51, 400)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)  # FTS5's index pages: SQLite's engine only
def test_fts_page_count_bounds_the_documents_from_above(store, backend, monkeypatch):
    """SQLite, a common word: the documents are estimated from the FTS5 index pages of the prefix
    range (no read of its postings); the estimate never falls below the true count, so a word
    the estimate sends to the index is one the exact count would send there too."""
    settings, _account_id, _box = store
    monkeypatch.setattr(search, "FTS_EXACT_PAGES", 0)

    async def run():
        core = Core(settings)
        await core.start()
        try:
            async with core.read() as s:
                texts = (await s.scalars(sa.select(Message.search_text))).all()
                for term in ("bilan", "pheochromocytome", "car", "zzz", "a", "0"):
                    exact = sum(1 for t in texts if words_match(t, f"{term}*"))
                    assert await search._fts_documents(s, term) >= exact, term
        finally:
            await core.close()

    asyncio.run(run())


def test_fts_tokens_list_the_vocabulary_of_each_prefix(tmp_path):
    """The tokens of a prefix read from the FTS5 leaf pages are exactly those of the index's
    vocabulary, with many small pages and many segments (one per transaction)."""
    path = tmp_path / "fts.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("CREATE VIRTUAL TABLE message_fts USING fts5(search_text, tokenize='unicode61 remove_diacritics 2')")
    db.execute("INSERT INTO message_fts(message_fts, rank) VALUES ('pgsz', 64)")
    db.execute("INSERT INTO message_fts(message_fts, rank) VALUES ('automerge', 0)")
    rng = random.Random(3)
    words = COMMON + MEDIUM + RARE + FILLER + [f"car{i}" for i in range(40)] + ["dubois", "duboisson", "é", "x"]
    for batch in range(12):
        db.execute("BEGIN")
        for i in range(60):
            db.execute("INSERT INTO message_fts(rowid, search_text) VALUES (?, ?)",
                       (batch * 60 + i + 1, " ".join(rng.choice(words) for _ in range(rng.randint(1, 30)))))
        db.execute("COMMIT")
    assert db.execute("SELECT count(DISTINCT segid) FROM message_fts_idx").fetchone()[0] > 5
    db.execute("CREATE VIRTUAL TABLE temp.v USING fts5vocab(main, message_fts, row)")
    vocab = sorted(r[0] for r in db.execute("SELECT term FROM temp.v"))
    db.close()
    prefixes = sorted({t[:k] for t in vocab for k in range(1, len(t) + 1)} | {"zzz", "0", "dubz"})

    async def run():
        engine = make_engine(f"sqlite+aiosqlite:///{path}")
        try:
            async with engine.connect() as conn:
                s = AsyncSession(bind=conn)
                listed = 0
                for prefix in prefixes:
                    got = await search.fts_tokens(s, [prefix])
                    if got is not None:
                        assert got == [[t for t in vocab if t.startswith(prefix)]], prefix
                        listed += 1
                return listed
        finally:
            await engine.dispose()

    assert asyncio.run(run()) > 0.8 * len(prefixes)


# --- PostgreSQL: search signatures (migrations 0012, 0013) ---------------------------------------------

_SIGNATURES_DRIFT = sa.text("""
    WITH fresh AS (SELECT DISTINCT d.mailbox_id, d.message_id, search_signature(m.search_vector) AS sig
                   FROM deliveries d JOIN messages m ON m.id = d.message_id),
         kept AS (SELECT mailbox_id, message_id, ARRAY[sig0, sig1, sig2, sig3, sig4, sig5, sig6, sig7] AS sig
                  FROM search_signatures)
    SELECT count(*) FROM ((SELECT * FROM kept EXCEPT SELECT * FROM fresh)
                          UNION ALL (SELECT * FROM fresh EXCEPT SELECT * FROM kept)) drift""")


async def _same_as_index(s, box: int) -> int:
    found = 0
    for q in [*QUERIES, "dubo", "leroy", "bilan dubois", "traitement examen"]:
        terms = search_terms(q)
        for view, category in VIEWS:
            conditions = [sa.text(_qualified(VIEW_SQL[view]))]
            if category:
                conditions.append(Delivery.category == category)
            expected = await _all_pages(s, box, terms, conditions, "index", 40)
            for strategy in ("window", "adaptive", "auto"):
                assert await _all_pages(s, box, terms, conditions, strategy, 40) == expected, (q, view, strategy)
            found += len(expected)
    return found


# The table and its triggers exist on PostgreSQL only: SQLite keeps its FTS5 path (migration 0012).
@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_signatures_follow_every_change_and_keep_the_search_exact(backend, tmp_path_factory, monkeypatch):
    """The triggers keep one signature per (mailbox, message) delivered, equal to the message's
    words' bits, through new deliveries, deletions (one role of two, both, a whole message),
    moves to another mailbox and changes of a message's text; the signed windows give exactly
    the index's rows after each change. Then the migration, run again on that store, rebuilds
    the same table (the backfill of an existing store)."""
    for name, value in (("SIGNATURE_FIRST", 8), ("SIGNATURE_MAX", 64), ("MIN_SAMPLE", 24), ("WINDOW_BUDGET", 150)):
        monkeypatch.setattr(search, name, value)
    with fresh_database(backend, tmp_path_factory.mktemp("db-signatures")) as url:
        settings = make_settings(url, tmp_path_factory.mktemp("data-signatures"), smtp_enabled=False,
                                 run_workers=False)

        async def run() -> None:
            core = Core(settings)
            await core.start()
            try:
                _a, box = await accounts.create_account(core, accounts.NewAccount(
                    username="sig.a", password=None, first_name="A", last_name="Sig"))
                _b, other = await accounts.create_account(core, accounts.NewAccount(
                    username="sig.b", password=None, first_name="B", last_name="Sig"))
                await _populate(core, box.id, other.id)

                async def check() -> int:
                    async with core.read() as s:
                        assert await s.scalar(_SIGNATURES_DRIFT) == 0
                        assert await s.scalar(sa.text("SELECT count(*) FROM search_signatures")) == await s.scalar(
                            sa.text("SELECT count(DISTINCT (mailbox_id, message_id)) FROM deliveries"))
                        return await _same_as_index(s, box.id)

                assert await check() > 1000
                async with core.write() as tx:
                    s = tx.session
                    twice = (await s.execute(sa.text(
                        "SELECT message_id FROM deliveries WHERE mailbox_id = :b GROUP BY message_id "
                        "HAVING count(*) = 2 ORDER BY message_id DESC LIMIT 3"), {"b": box.id})).scalars().all()
                    assert twice
                    # One role of two: the (mailbox, message) keeps its signature; both: it goes.
                    await s.execute(sa.delete(Delivery).where(Delivery.mailbox_id == box.id,
                                                              Delivery.message_id == twice[0], Delivery.role == "sent"))
                    await s.execute(sa.delete(Delivery).where(Delivery.mailbox_id == box.id,
                                                              Delivery.message_id.in_(twice[1:])))
                    # Newest deliveries gone, a whole message gone (cascade).
                    newest = (await s.execute(sa.select(Delivery.message_id).where(Delivery.mailbox_id == box.id)
                                              .order_by(Delivery.message_id.desc()).limit(20))).scalars().all()
                    await s.execute(sa.delete(Delivery).where(Delivery.mailbox_id == box.id,
                                                              Delivery.message_id.in_(newest[::2])))
                    await s.execute(sa.delete(Message).where(Message.id == newest[1]))
                    # A delivery moved to the other mailbox.
                    await s.execute(sa.update(Delivery).where(Delivery.mailbox_id == box.id,
                                                              Delivery.message_id == newest[3])
                                    .values(mailbox_id=other.id))
                    # Texts rewritten: « bilan » becomes « dubois », and back on others.
                    await s.execute(sa.text(
                        "UPDATE messages SET search_text = replace(search_text, 'bilan ', 'dubois ') "
                        "WHERE id IN (SELECT message_id FROM deliveries WHERE mailbox_id = :b "
                        "ORDER BY message_id DESC LIMIT 60)"), {"b": box.id})
                    await s.execute(sa.text(
                        "UPDATE messages SET search_text = replace(search_text, 'dubois', 'leroy') "
                        "WHERE id % 7 = 0"))
                    # New messages delivered to both mailboxes.
                    rng = random.Random(9)
                    t0 = datetime(2026, 1, 1, tzinfo=UTC)
                    first = int(await s.scalar(sa.select(sa.func.max(Message.id)))) + 1
                    for i in range(first, first + 40):
                        subject, body = _text(rng), _text(rng) + " dubois apixaban"
                        text = messages.build_search_text(subject, body, "Dr Paul DUBOIS", "x@monsisra.localhost",
                                                          [], mailbox_ids=[box.id, other.id])
                        s.add(Message(id=i, message_id=f"<{i}@n>", sender_address="x@monsisra.localhost",
                                      sender_name="Dr Paul DUBOIS", subject=subject, body=body, preview=body[:100],
                                      category="letter", created_at=t0 + timedelta(i), search_text=text))
                    await s.flush()
                    uid = int(await s.scalar(sa.select(sa.func.max(Delivery.uid)))) + 1
                    await s.execute(sa.insert(Delivery), [
                        {"mailbox_id": m, "message_id": i, "uid": uid + 2 * (i - first) + k, "role": role,
                         "category": "letter", "created_at": t0 + timedelta(i)}
                        for i in range(first, first + 40)
                        for k, (m, role) in enumerate([(box.id, "in"), (other.id, "sent")])])
                assert await check() > 1000
            finally:
                await core.close()

        asyncio.run(run())
        # The migration on a store that already has deliveries: the backfill gives the same rows.
        async def drift() -> tuple[int, int]:
            engine = make_engine(url)
            try:
                async with engine.connect() as conn:
                    return (await conn.scalar(_SIGNATURES_DRIFT),
                            await conn.scalar(sa.text("SELECT count(*) FROM search_signatures")))
            finally:
                await engine.dispose()

        _, rows = asyncio.run(drift())
        from alembic import command

        from monsisra.store.migrate import alembic_config, upgrade
        command.downgrade(alembic_config(url), "0011_directory_word_counts")
        upgrade(url)
        assert asyncio.run(drift()) == (0, rows)


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)  # the SQL function exists on PostgreSQL only
def test_signature_bits_are_those_of_the_sql_function(store, backend):
    """Python's ``lexeme_positions`` hashes a word's first four and six characters as the
    migration's ``search_signature`` does, words under four characters setting none; a query's
    mask only names the words PostgreSQL reads as one lexeme."""
    settings, _account_id, _box = store
    words = ["dubois", "dubo", "duboi", "duboisson", "bilan", "2026", "a1b2c3", "oeil", "zz", "abc", "naïve",
             "中文字符", "中文字符中文", "insuffisance", "insuline"]

    async def run():
        engine = make_engine(settings.database_url)
        try:
            async with engine.connect() as conn:
                for word in words:
                    sig = await conn.scalar(sa.text("SELECT search_signature(to_tsvector('simple', :w))"), {"w": word})
                    assert _positions(sig) == sorted(search.lexeme_positions(word)), word
                    assert search.signature_bits([word]) in (None, sig), word
                # A whole text: the union of its lexemes' bits (short words and mailbox tokens: none).
                text = "le bilan de M. Dubois, 12 mg d'apixaban zzmbx12 insuffisance cardiaque"
                sig = await conn.scalar(sa.text("SELECT search_signature(to_tsvector('simple', :w))"), {"w": text})
                lexemes = await conn.scalar(sa.text("SELECT tsvector_to_array(to_tsvector('simple', :w))"),
                                            {"w": text})
                assert _positions(sig) == sorted(set().union(*(search.lexeme_positions(x) for x in lexemes)))
                empty = await conn.scalar(sa.text("SELECT search_signature(to_tsvector('simple', 'zzmbx12 le de'))"))
                assert empty == [0] * 8  # mailbox tokens and short words set no bit
        finally:
            await engine.dispose()

    asyncio.run(run())
    assert len(_positions(search.signature_bits(["car", "naive", "x"]))) == 1  # « naive » alone (5 characters)
    assert search.signature_bits(["car", "zz"]) is None
    # « dubois » sets its four- and six-character bits; « dubo » only the first.
    assert set(_positions(search.signature_bits(["dubo"]))) < set(_positions(search.signature_bits(["dubois"])))
    assert len(_positions(search.signature_bits(["dubois", "dubo"]))) == 2
    assert len(_positions(search.signature_bits(["dubois", "apixaban", "bilan"]))) == 5
    # Same first four characters, told apart by the sixth-character bit.
    assert search.signature_bits(["insuffisance"]) != search.signature_bits(["insuline"])


def _positions(words: list[int]) -> list[int]:
    return sorted(64 * k + 63 - b for k, w in enumerate(words) for b in range(64) if w >> b & 1)


class PgTrips:
    """Counts the round trips of asyncpg (the driver under SQLAlchemy on PostgreSQL) while ``on``:
    a simple query (the pool's ping, BEGIN, ROLLBACK, …), a statement's preparation, a prepared
    statement's execution; each is one exchange with the server. ``sql`` keeps what each sent."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import asyncpg.connection
        import asyncpg.prepared_stmt

        self.on, self.sql = False, []
        for cls, name in ((asyncpg.connection.Connection, "execute"), (asyncpg.connection.Connection, "prepare"),
                          (asyncpg.prepared_stmt.PreparedStatement, "fetch")):
            monkeypatch.setattr(cls, name, self._counted(getattr(cls, name), name))

    def _counted(self, method, name):
        trips = self

        async def counted(obj, *args, **kwargs):
            if trips.on:
                trips.sql.append((name, args[0] if name != "fetch" else obj.get_query()))
            return await method(obj, *args, **kwargs)

        return counted

    async def of(self, call) -> list[tuple[str, str]]:
        self.sql, self.on = [], True
        try:
            await call()
        finally:
            self.on = False
        return self.sql


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)  # its plan settings are PostgreSQL-only
def test_a_search_sets_its_plans_without_a_round_trip_of_its_own(store, backend, monkeypatch):
    """On PostgreSQL a search's settings for its transaction (custom plans; no parallel workers for
    rare words) go in the mailbox access check's statement: a search page by signature windows
    or by the index costs the round trips of a plain page of the same view (the previous code
    sent a ``SET LOCAL`` / ``set_config`` of its own: one more). The settings are in effect for
    the window and index statements: run again and again on one connection, their prepared
    statements are planned for each call's values (no generic plan)."""
    settings, account_id, box = store
    trips = PgTrips(monkeypatch)
    monkeypatch.setattr(search, "SERIAL_SHARE", 0.05)  # 1,500 messages: « pheochromocytome » is in ~1 %
    ways: list[str] = []
    costs = dict(search.POSTINGS_PER_ROW)
    for name in ("_signature_rows", "_index_rows"):
        def spy(*args, _name=name, _f=getattr(search, name), **kwargs):
            ways.append(_name)
            return _f(*args, **kwargs)
        monkeypatch.setattr(search, name, spy)

    async def run():
        core = Core(settings)
        await core.start()
        actor = Actor(account_id, "win.a")
        try:
            async with core.write() as tx:
                await tx.session.execute(sa.text("ANALYZE messages"))
            search._estimates.clear()
            cases = [("bilan", "_signature_rows", {"postgresql": 1}),  # windows, as in a store of millions
                     ("bilan", "_index_rows", {"postgresql": 10**6}),  # a common word by the index
                     ("pheochromocytome", "_index_rows", {})]  # rare: the index, without workers
            for q, way, postings in cases:
                for dialect, value in postings.items():
                    monkeypatch.setitem(search.POSTINGS_PER_ROW, dialect, value)
                for view in ("all", "inbox"):
                    async def page(q=q, view=view):
                        return await messages.list_messages(core, actor, box, view=view, q=q, limit=20)

                    async def plain(view=view):
                        return await messages.list_messages(core, actor, box, view=view, limit=20)

                    await page(), await plain()  # statements prepared, estimates cached
                    ways.clear()
                    searched, listed = await trips.of(page), await trips.of(plain)
                    assert ways == [way], (q, view, ways)
                    assert len(searched) == len(listed), (q, view, searched, listed)
                    assert not [sql for _, sql in searched if sql.startswith("SET ") or sql.startswith(
                        "SELECT set_config(")], (q, view)
                    access = [sql for _, sql in searched if "set_config(" in sql and "mailbox_access" in sql]
                    assert len(access) == 1, (q, view)
                    # Custom plans always; no parallel workers too (a second setting) for the rare word.
                    assert ("setting_1" in access[0]) == (q == "pheochromocytome"), (q, view, access)
                    for _ in range(8):  # past the five custom plans after which a generic one may be chosen
                        await page()
                    async with core.read() as s:
                        shown = (await s.execute(sa.text(
                            "SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements "
                            "WHERE statement LIKE '%search_signatures%' OR statement LIKE '%@@%'"))).all()
                        plans = {r.statement: (r.generic_plans, r.custom_plans) for r in shown}
                    ran = [sql for _, sql in searched if sql in plans]
                    assert ran and all(plans[sql][0] == 0 and plans[sql][1] >= 9 for sql in ran), (q, view, plans)
                for dialect in postings:
                    monkeypatch.setitem(search.POSTINGS_PER_ROW, dialect, costs[dialect])
        finally:
            await core.close()

    asyncio.run(run())


def test_service_search_pages_are_the_index_rows_in_every_view(store, backend, monkeypatch):
    """Through the service (the access check carrying the search's settings on PostgreSQL), page
    after page by cursor, every query in every view and category gives the index's rows: with the
    engine's costs, and with window rows made cheap (windows, signatures on PostgreSQL, first)."""
    settings, account_id, box = store

    async def run():
        core = Core(settings)
        await core.start()
        actor = Actor(account_id, "win.a")
        compared = 0
        try:
            async with core.write() as tx:
                if backend == "postgres":
                    await tx.session.execute(sa.text("ANALYZE messages"))
            search._estimates.clear()
            for postings in (None, 1):
                if postings is not None:
                    monkeypatch.setitem(search.POSTINGS_PER_ROW, "postgresql", postings)
                    monkeypatch.setitem(search.POSTINGS_PER_ROW, "sqlite", postings)
                for q in QUERIES:
                    for view, category in VIEWS:
                        got, cursor = [], None
                        while True:
                            page = await messages.list_messages(core, actor, box, view=view, category=category,
                                                                q=q, cursor=cursor, limit=40)
                            got += [m["id"] for m in page["items"]]
                            cursor = page["next_cursor"]
                            if not cursor:
                                break
                        conditions = [sa.text(_qualified(VIEW_SQL[view]))]
                        if category:
                            conditions.append(Delivery.category == category)
                        async with core.read() as s:
                            expected = await _all_pages(s, box, search_terms(q), conditions, "index", 40)
                        assert got == [mid for mid, _ in expected], (q, view, category, postings)
                        compared += len(got)
        finally:
            await core.close()
        return compared

    assert asyncio.run(run()) > 1000
