"""Reading at scale: p50/p99 of mailbox pages, counts and search with 1,000,000 messages.

The store is bulk-loaded (executemany on SQLite, COPY on PostgreSQL) with fictitious but
realistic French medical correspondence: 1,000,000 messages between 2,000 professionals, of
which 50,000 sit in one mailbox (Dr Alice MARTIN: 45,000 received, 5,000 sent), with
recipients, per-mailbox deliveries (read/archived/favorite/todo/deleted states), patients and
PDF attachments. ``search_text`` is built by ``messages.build_search_text``; the full-text
index is the app's own (FTS5 external-content table rebuilt after the load on SQLite, the
generated tsvector column + GIN index on PostgreSQL). Secondary indexes and triggers are
dropped during the load and recreated from their own DDL afterwards, so the measured schema
is exactly the migrated one.

Then, through the service layer (``messages.list_messages`` / ``messages.counts`` on a
``Core`` with the app's engine settings), each query runs a warm-up and then ≥ 200 timed
iterations; p50/p99 are reported, with the plan of the slowest SQL statement of each query.

The generated SQLite database is cached under ``/tmp/monsisra_bench_read/`` (reused while
the generator version and scale match); the PostgreSQL database ``monsisra_bench_<random>``
is dropped at the end unless ``--keep-pg``.

Run: ``.venv/bin/python -m bench.core_read [--scale 0.1] [--engines sqlite,postgres]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import sqlite3
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bench.common import (
    FIRST_NAMES,
    LAST_NAMES,
    SPECIALTIES,
    Corpus,
    header,
    new_meta,
    pg_admin,
    pg_url,
    summary_ms,
    uptime,
    write_results,
)
from monsisra.config import Settings
from monsisra.domain.addresses import base_local_part
from monsisra.domain.text import preview
from monsisra.services import messages
from monsisra.services.accounts import hash_password
from monsisra.services.core import Actor, Core

GENERATOR_VERSION = 4
CACHE = Path("/tmp/monsisra_bench_read")
DOMAIN = "monsisra.localhost"
READER = "alice.martin"
PASSWORD = "bench-password"
CHUNK = 20_000
T0 = datetime(2024, 11, 1, 7, 0, tzinfo=UTC)
SPAN = timedelta(days=730)

COLUMNS = {
    "accounts": ("id", "username", "password_hash", "is_admin", "active", "civility", "first_name", "last_name",
                 "profession_code", "profession", "specialty", "appear_absent", "created_at"),
    "mailboxes": ("id", "address", "kind", "display_name", "owner_account_id", "description", "organisation",
                  "is_expert", "is_resource_team", "active", "uidvalidity", "next_uid", "modseq", "created_at"),
    "mailbox_access": ("mailbox_id", "account_id", "access", "created_at"),
    "patients": ("id", "ins", "ins_oid", "family_name", "given_names", "birth_date", "sex", "created_at"),
    "messages": ("id", "message_id", "thread_id", "in_reply_to_id", "from_mailbox_id", "author_account_id",
                 "sender_address", "sender_name", "subject", "body", "html", "preview", "category", "created_at",
                 "sent_at", "is_draft", "patient_id", "has_attachments", "origin", "receipt_requested",
                 "no_reply", "search_text"),
    "attachments": ("id", "sha256", "size", "content_type", "filename", "uploaded_by", "created_at"),
    "message_attachments": ("message_id", "attachment_id", "position"),
    "recipients": ("id", "message_id", "kind", "address", "display_name", "mailbox_id", "status", "status_at",
                   "attempts"),
    "deliveries": ("id", "mailbox_id", "message_id", "uid", "role", "category", "created_at", "read", "favorite",
                   "todo", "archived", "deleted", "modseq", "first_read_at", "first_read_by"),
}
BULK_TABLES = ("messages", "attachments", "message_attachments", "recipients", "deliveries")


# --- generation ----------------------------------------------------------------------------


class Plan:
    def __init__(self, scale: float) -> None:
        self.scale = scale
        self.n_messages = max(2_000, int(1_000_000 * scale))
        self.n_target = max(500, int(50_000 * scale))
        self.n_mailboxes = max(100, int(2_000 * scale))
        self.n_patients = max(200, int(20_000 * scale))


def people(plan: Plan) -> tuple[list[tuple], list[tuple], list[tuple], list[tuple]]:
    """accounts, mailboxes, mailbox_access and patients rows (mailbox i belongs to account i)."""
    rng = random.Random(7)
    created = T0 - timedelta(days=400)
    accounts, mailboxes, access, seen = [], [], [], set()
    for i in range(1, plan.n_mailboxes + 1):
        if i == 1:
            first, last, spec = "Alice", "Martin", "Médecine générale"
        else:
            first, last, spec = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES), rng.choice(SPECIALTIES)
        base = base_local_part(first, last)
        local, k = base, 1
        while local in seen:
            k += 1
            local = f"{base}{k}"
        seen.add(local)
        username = READER if i == 1 else f"{local}.{i}"
        pw = hash_password(PASSWORD) if i == 1 else None
        accounts.append((i, username, pw, False, True, "Dr", first, last, "10", "Médecin", spec, False, created))
        mailboxes.append((i, f"{local}@{DOMAIN}", "PER", f"Dr {first} {last.upper()}", i, "", "", False, False,
                          True, rng.randint(1, 2**31 - 1), 1, 1, created))
        access.append((i, i, "owner", created))
    patients = []
    for i in range(1, plan.n_patients + 1):
        sex = rng.choice("12")
        ins = f"{sex}{rng.randint(30, 99):02d}{rng.randint(1, 12):02d}{rng.randint(1, 95):02d}" \
              f"{rng.randint(1, 999):03d}{i % 1000:03d}{rng.randint(1, 97):02d}"
        patients.append((i, ins[:15] + str(i)[:0], "1.2.250.1.213.1.4.10", rng.choice(LAST_NAMES).upper(),
                         rng.choice(FIRST_NAMES), f"19{rng.randint(30, 99)}-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}",
                         "M" if sex == "1" else "F", created))
    # INS must be unique: suffix collisions away deterministically.
    seen_ins: set[str] = set()
    for j, p in enumerate(patients):
        ins = p[1]
        while ins in seen_ins:
            ins = f"{(int(ins[:13]) + 1) % 10**13:013d}{ins[13:]}"
        seen_ins.add(ins)
        patients[j] = (p[0], ins, *p[2:])
    return accounts, mailboxes, access, patients


def generate(plan: Plan, mailboxes: list[tuple]) -> Iterator[dict[str, list[tuple]]]:
    """Chunks of rows of the bulk tables; the target mailbox (id 1) gets ``plan.n_target`` deliveries."""
    rng = random.Random(11)
    corpus = Corpus(13)
    n = plan.n_messages
    target_msgs = set(rng.sample(range(1, n + 1), plan.n_target))
    address = {m[0]: m[1] for m in mailboxes}
    name = {m[0]: m[3] for m in mailboxes}
    others = list(range(2, plan.n_mailboxes + 1))
    next_uid = {m[0]: 1 for m in mailboxes}
    recipient_id = delivery_id = 0
    step = SPAN / n
    chunk: dict[str, list[tuple]] = {t: [] for t in BULK_TABLES}
    for mid in range(1, n + 1):
        created = T0 + step * mid
        age_days = (SPAN - step * mid).days
        category, subject, body = corpus.message()
        if mid in target_msgs and rng.random() < 0.1:
            sender = 1
            rcpts = rng.sample(others, rng.choice((1, 1, 1, 2)))
        else:
            sender = rng.choice(others)
            k = rng.choices((1, 2, 3), (70, 20, 10))[0]
            rcpts = [1] if mid in target_msgs else []
            while len(rcpts) < k:
                r = rng.choice(others)
                if r != sender and r not in rcpts:
                    rcpts.append(r)
        patient_id = rng.randint(1, plan.n_patients) if rng.random() < 0.3 else None
        filenames = []
        if category in ("letter", "result", "mssante") and rng.random() < 0.6:
            filenames.append(rng.choice(("CR_", "Resultats_", "Courrier_", "Ordonnance_"))
                             + f"{rng.choice(LAST_NAMES)}_{created:%Y%m%d}.pdf")
            att_id = uuid.UUID(int=rng.getrandbits(128)).hex
            chunk["attachments"].append((att_id, f"{rng.getrandbits(256):064x}", rng.randint(20_000, 2_000_000),
                                         "application/pdf", filenames[0], sender, created))
            chunk["message_attachments"].append((mid, att_id, 0))
        # With the tokens of the mailboxes it sits in (messages.MAILBOX_TOKEN), exactly as a send stores it.
        search = messages.build_search_text(subject, body, name[sender], address[sender], filenames,
                                            mailbox_ids=[sender, *rcpts])
        chunk["messages"].append((mid, f"<{mid:x}.{rng.getrandbits(48):x}@{DOMAIN}>", mid, None, sender, sender,
                                  address[sender], name[sender], subject, body, None, preview(body), category,
                                  created, created, False, patient_id, bool(filenames), "local", False, False,
                                  search))
        for pos, r in enumerate(rcpts):
            recipient_id += 1
            chunk["recipients"].append((recipient_id, mid, "to" if pos == 0 else "cc", address[r], name[r], r,
                                        "delivered", created, 0))
        placements = [(sender, "sent")] + [(r, "in") for r in rcpts]
        for box, role in placements:
            delivery_id += 1
            uid = next_uid[box]
            next_uid[box] += 1
            if role == "in":
                unread = (age_days < 10 and rng.random() < 0.7) or rng.random() < 0.02
                archived = age_days > 90 and rng.random() < 0.6
                favorite, todo = rng.random() < 0.02, rng.random() < (0.08 if age_days < 30 else 0.01)
            else:
                unread, archived, favorite, todo = False, False, rng.random() < 0.01, False
            deleted = rng.random() < 0.01
            read_at = None if unread or role != "in" else created + timedelta(hours=rng.randint(1, 72))
            chunk["deliveries"].append((delivery_id, box, mid, uid, role, category, created, not unread, favorite,
                                        todo, archived, deleted, uid, read_at, box if read_at else None))
        if mid % CHUNK == 0 or mid == n:
            yield chunk
            chunk = {t: [] for t in BULK_TABLES}
    for i, m in enumerate(mailboxes):
        mailboxes[i] = (*m[:11], next_uid[m[0]], next_uid[m[0]], *m[13:])


# --- SQLite --------------------------------------------------------------------------------


def _sqlite_value(v: Any) -> Any:
    if isinstance(v, datetime):
        return v.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    return v


def _insert_sql(table: str, qmark: bool = True) -> str:
    cols = COLUMNS[table]
    marks = ", ".join("?" * len(cols)) if qmark else ", ".join(f"${i + 1}" for i in range(len(cols)))
    return f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({marks})"


def load_sqlite(path: Path, plan: Plan) -> dict[str, float]:
    from monsisra.store.migrate import upgrade

    timings = {}
    url = f"sqlite+aiosqlite:///{path}"
    t = time.perf_counter()
    upgrade(url)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")  # the load only; the measured engine uses the app's pragmas
    db.execute("PRAGMA cache_size=-262144")
    tables = ("accounts", "mailboxes", "mailbox_access", "patients", *BULK_TABLES)
    ddl = db.execute(
        "SELECT type, name, sql FROM sqlite_master WHERE type IN ('index', 'trigger') AND sql IS NOT NULL "
        f"AND tbl_name IN ({', '.join('?' * len(tables))})", tables).fetchall()
    for kind, name, _ in ddl:
        db.execute(f'DROP {kind.upper()} "{name}"')
    accounts, mailboxes, access, patients = people(plan)
    db.execute("BEGIN")
    for table, rows in (("accounts", accounts), ("patients", patients)):
        db.executemany(_insert_sql(table), [tuple(map(_sqlite_value, r)) for r in rows])
    db.execute("COMMIT")
    done = 0
    for chunk in generate(plan, mailboxes):
        db.execute("BEGIN")
        for table in BULK_TABLES:
            db.executemany(_insert_sql(table), [tuple(map(_sqlite_value, r)) for r in chunk[table]])
        db.execute("COMMIT")
        done += len(chunk["messages"])
        if done % 100_000 < CHUNK:
            print(f"    {done:,} messages ({time.perf_counter() - t:.0f} s)", flush=True)
    db.execute("BEGIN")
    db.executemany(_insert_sql("mailboxes"), [tuple(map(_sqlite_value, r)) for r in mailboxes])
    db.executemany(_insert_sql("mailbox_access"), [tuple(map(_sqlite_value, r)) for r in access])
    db.execute("COMMIT")
    timings["insert_s"] = time.perf_counter() - t
    t = time.perf_counter()
    for kind, _, sql in ddl:
        if kind == "index":
            db.execute(sql)
    timings["indexes_s"] = time.perf_counter() - t
    t = time.perf_counter()
    if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'message_fts'").fetchone():
        db.execute("INSERT INTO message_fts(message_fts) VALUES ('rebuild')")
    timings["fts_s"] = time.perf_counter() - t
    for kind, _, sql in ddl:
        if kind == "trigger":
            db.execute(sql)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    return timings


def sqlite_db(plan: Plan, rebuild: bool) -> tuple[str, dict[str, Any]]:
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"core_read_v{GENERATOR_VERSION}_{plan.n_messages}.db"
    info: dict[str, Any] = {"path": str(path)}
    if rebuild or not path.exists():
        for suffix in ("", "-wal", "-shm", ".tmp", ".tmp-wal", ".tmp-shm"):
            with contextlib.suppress(FileNotFoundError):
                Path(str(path) + suffix).unlink()
        tmp = Path(str(path) + ".tmp")
        print(f"[{time.strftime('%H:%M:%S')}] building {tmp} ({plan.n_messages:,} messages)", flush=True)
        info["load"] = load_sqlite(tmp, plan)
        tmp.rename(path)
        info["cached"] = False
    else:
        from monsisra.store.migrate import upgrade

        upgrade(f"sqlite+aiosqlite:///{path}")  # new migrations of other capabilities, if any
        info["cached"] = True
    info["size_mb"] = round(path.stat().st_size / 2**20)
    return f"sqlite+aiosqlite:///{path}", info


# --- PostgreSQL ----------------------------------------------------------------------------


async def load_pg(url: str, plan: Plan) -> dict[str, float]:
    import asyncpg

    u = sa.make_url(url)
    conn = await asyncpg.connect(user=u.username or "postgres", host=u.host or "127.0.0.1", port=u.port or 5432,
                                 database=u.database, password=u.password)
    timings = {}
    try:
        t = time.perf_counter()
        tables = ("accounts", "mailboxes", "mailbox_access", "patients", *BULK_TABLES)
        # Secondary indexes that do not back a constraint: dropped now, recreated after the load.
        idx = await conn.fetch(
            "SELECT i.indexname, i.indexdef FROM pg_indexes i WHERE i.schemaname = 'public' "
            "AND i.tablename = ANY($1::text[]) AND NOT EXISTS (SELECT 1 FROM pg_constraint c "
            "WHERE c.conname = i.indexname)", list(tables))
        for r in idx:
            await conn.execute(f'DROP INDEX "{r["indexname"]}"')
        await conn.execute("SET session_replication_role = replica")  # no FK triggers during the load
        accounts, mailboxes, access, patients = people(plan)
        await conn.copy_records_to_table("accounts", records=accounts, columns=COLUMNS["accounts"])
        await conn.copy_records_to_table("patients", records=patients, columns=COLUMNS["patients"])
        done = 0
        for chunk in generate(plan, mailboxes):
            async with conn.transaction():
                for table in BULK_TABLES:
                    await conn.copy_records_to_table(table, records=chunk[table], columns=COLUMNS[table])
            done += len(chunk["messages"])
            if done % 100_000 < CHUNK:
                print(f"    {done:,} messages ({time.perf_counter() - t:.0f} s)", flush=True)
        await conn.copy_records_to_table("mailboxes", records=mailboxes, columns=COLUMNS["mailboxes"])
        await conn.copy_records_to_table("mailbox_access", records=access, columns=COLUMNS["mailbox_access"])
        await conn.execute("SET session_replication_role = DEFAULT")
        serial = await conn.fetch("SELECT table_name FROM information_schema.columns WHERE table_schema = "
                                  "'public' AND column_name = 'id' AND column_default LIKE 'nextval%' "
                                  "AND table_name = ANY($1::text[])", list(tables))
        for r in serial:  # explicit ids were given: move the sequences past them
            table = r["table_name"]
            await conn.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                               f"(SELECT coalesce(max(id), 1) FROM {table}))")
        timings["insert_s"] = time.perf_counter() - t
        t = time.perf_counter()
        await conn.execute("SET maintenance_work_mem = '256MB'")
        for r in idx:
            await conn.execute(r["indexdef"])
        timings["indexes_s"] = time.perf_counter() - t
        t = time.perf_counter()
        # What autovacuum would have done on a live system (statistics, visibility map).
        await conn.execute("VACUUM ANALYZE")
        timings["vacuum_analyze_s"] = time.perf_counter() - t
    finally:
        await conn.close()
    return timings


# --- measurement ---------------------------------------------------------------------------


QUERIES: list[tuple[str, str, dict[str, Any]]] = [
    ("inbox, first page", "list", {"view": "inbox"}),
    ("inbox, second page (cursor)", "list2", {"view": "inbox"}),
    ("category view (result)", "list", {"view": "all", "category": "result"}),
    ("category view (dgs_urgent)", "list", {"view": "all", "category": "dgs_urgent"}),
    ("unread view", "list", {"view": "unread"}),
    ("archived view", "list", {"view": "archived"}),
    ("counts (cache hit: mailbox unchanged)", "counts", {}),
    ("counts (cold: mailbox changed since)", "counts_cold", {}),
    ("search rare word: « phéochromocytome »", "search", {"view": "all", "q": "phéochromocytome"}),
    ("search common word: « bilan »", "search", {"view": "all", "q": "bilan"}),
    ("search 2 words: « fibrillation apixaban »", "search", {"view": "all", "q": "fibrillation apixaban"}),
    ("search sender name: « Dubois »", "search", {"view": "all", "q": "Dubois"}),
    ("search in inbox: « échographie cardiaque »", "search", {"view": "inbox", "q": "échographie cardiaque"}),
]
TARGETS = {"list": 20.0, "list2": 20.0, "counts": 20.0, "counts_cold": 20.0, "search": 100.0}


class StatementLog:
    def __init__(self, engine: Any) -> None:
        self.active = False
        self.rows: list[tuple[float, str, Any]] = []
        sync = engine.sync_engine

        @sa.event.listens_for(sync, "before_cursor_execute")
        def _before(conn, cursor, statement, parameters, context, executemany) -> None:
            conn.info["bench_t0"] = time.perf_counter()

        @sa.event.listens_for(sync, "after_cursor_execute")
        def _after(conn, cursor, statement, parameters, context, executemany) -> None:
            if self.active:
                self.rows.append((time.perf_counter() - conn.info["bench_t0"], statement, parameters))


async def measure(url: str, engine_name: str, iterations: int, warmup: int) -> list[dict[str, Any]]:
    settings = Settings(database_url=url, data_dir=CACHE / "data", smtp_enabled=False, run_workers=False,
                        secret_key="bench-secret-" + "x" * 40)
    core = Core(settings)
    await core.start()
    log = StatementLog(core.db.engine)
    actor = Actor(1, READER)
    out = []
    try:
        first = await messages.list_messages(core, actor, 1, view="inbox", limit=50)
        cursor = first["next_cursor"]

        async def call(kind: str, params: dict[str, Any]) -> Any:
            if kind == "counts":
                return await messages.counts(core, actor, 1)
            if kind == "counts_cold":
                # messages.counts keeps the tally per (mailbox, modseq) in-process: forget it, as
                # any change to the mailbox (new message, flag) does.
                getattr(messages, "_COUNTS_CACHE", {}).clear()
                return await messages.counts(core, actor, 1)
            if kind == "list2":
                return await messages.list_messages(core, actor, 1, cursor=cursor, limit=50, **params)
            return await messages.list_messages(core, actor, 1, limit=50, **params)

        for label, kind, params in QUERIES:
            for _ in range(warmup):
                await call(kind, params)
            samples, cpu = [], []
            for _ in range(iterations):
                c = time.process_time()
                t = time.perf_counter()
                result = await call(kind, params)
                samples.append(time.perf_counter() - t)
                cpu.append(time.process_time() - c)
            stats = summary_ms(samples)
            # CPU time of this process (all threads: aiosqlite runs SQLite in a thread of ours;
            # PostgreSQL's own work is in the server): much less sensitive to the other
            # engineers' load on the 2 shared cores than wall time.
            cpu_stats = summary_ms(cpu)
            # One more call with the statements recorded: the slowest one gets explained.
            log.rows.clear()
            log.active = True
            t = time.perf_counter()
            result = await call(kind, params)
            wall = time.perf_counter() - t
            log.active = False
            slowest = max(log.rows, key=lambda r: r[0])
            # The settings the call made for its transaction (SET LOCAL, set_config: alone, or in
            # the access check's statement), before it: the plan explained is the one the call ran
            # (workers, custom plan).
            settings = [r for r in log.rows[:log.rows.index(slowest)]
                        if r[1].startswith("SET ") or "set_config(" in r[1]]
            plan = await explain(core, engine_name, slowest[1], slowest[2], settings)
            items = len(result["items"]) if "items" in result else None
            target = TARGETS[kind]
            row = {"query": label, "kind": kind, "params": params, **stats, "cpu_p50": cpu_stats["p50"],
                   "cpu_p99": cpu_stats["p99"], "target_p99_ms": target,
                   "met": stats["p99"] < target, "items": items, "statements": len(log.rows),
                   "slowest_statement_ms": round(slowest[0] * 1000, 2), "slowest_sql": slowest[1],
                   "traced_call_ms": round(wall * 1000, 2),
                   "traced_sql_ms": round(sum(r[0] for r in log.rows) * 1000, 2),
                   "plan": plan}
            if kind.startswith("counts"):
                row["unread_inbox"] = result["views"]["inbox"]["unread"]
                row["total_all"] = result["views"]["all"]["total"]
            print(f"    {label:45s} p50 {stats['p50']:7.2f} ms  p99 {stats['p99']:7.2f} ms  "
                  f"({'ok' if row['met'] else 'MISSED'}; {items} items, {len(log.rows)} statements)", flush=True)
            out.append(row)
    finally:
        await core.close()
    return out


async def explain(core: Core, engine_name: str, statement: str, parameters: Any,
                  settings: list[tuple[float, str, Any]] = ()) -> str:
    prefix = "EXPLAIN QUERY PLAN " if engine_name == "sqlite" else "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) "
    async with core.db.engine.connect() as conn:
        for _, sql, params in settings:
            await conn.exec_driver_sql(sql, tuple(params or ()))
        rows = (await conn.exec_driver_sql(prefix + statement, tuple(parameters or ()))).all()
    if engine_name == "sqlite":
        return "\n".join(f"{r[0]}|{r[1]}| {r[3]}" for r in rows)
    return "\n".join(r[0] for r in rows)


async def mailbox_facts(url: str) -> dict[str, Any]:
    engine = sa.ext.asyncio.create_async_engine(url)
    try:
        async with engine.connect() as conn:
            q = lambda sql: conn.exec_driver_sql(sql)  # noqa: E731
            return {
                "messages": (await q("SELECT count(*) FROM messages")).scalar(),
                "deliveries": (await q("SELECT count(*) FROM deliveries")).scalar(),
                "recipients": (await q("SELECT count(*) FROM recipients")).scalar(),
                "target_deliveries": (await q("SELECT count(*) FROM deliveries WHERE mailbox_id = 1")).scalar(),
                "target_unread": (await q("SELECT count(*) FROM deliveries WHERE mailbox_id = 1 AND role = 'in' "
                                          "AND read = false AND deleted = false")).scalar(),
            }
    finally:
        await engine.dispose()


def main() -> None:
    import sqlalchemy.ext.asyncio  # noqa: F401

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of 1,000,000 messages / 50,000 in one box")
    parser.add_argument("--engines", default="sqlite,postgres")
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--rebuild", action="store_true", help="regenerate the cached SQLite database")
    parser.add_argument("--keep-pg", action="store_true", help="do not drop the PostgreSQL database")
    parser.add_argument("--no-write", action="store_true", help="print only, do not write bench/results")
    parser.add_argument("--render", action="store_true", help="rewrite the .md from the last .json and exit")
    args = parser.parse_args()
    if args.render:
        import json

        from bench.common import RESULTS

        data = json.loads((RESULTS / "core_read.json").read_text())
        (RESULTS / "core_read.md").write_text("\n".join(report(data["meta"], data["runs"])) + "\n")
        return
    plan = Plan(args.scale)
    meta = new_meta()
    meta["plan"] = vars(plan)
    meta["iterations"], meta["warmup"] = args.iterations, args.warmup
    runs = []
    for engine_name in args.engines.split(","):
        if engine_name == "sqlite":
            url, info = sqlite_db(plan, args.rebuild)
            info["facts"] = asyncio.run(mailbox_facts(url))
            print(f"[{time.strftime('%H:%M:%S')}] sqlite: {info}", flush=True)
            info["load_at_start"] = uptime()
            runs.append({"engine": "sqlite", "store": info,
                         "queries": asyncio.run(measure(url, "sqlite", args.iterations, args.warmup))})
        else:
            name = f"monsisra_bench_core_{uuid.uuid4().hex[:10]}"
            asyncio.run(pg_admin(f'CREATE DATABASE "{name}"'))
            url = pg_url(name)
            try:
                from monsisra.store.migrate import upgrade

                upgrade(url)
                print(f"[{time.strftime('%H:%M:%S')}] loading PostgreSQL {name}", flush=True)
                info: dict[str, Any] = {"database": name, "load": asyncio.run(load_pg(url, plan))}
                info["facts"] = asyncio.run(mailbox_facts(url))
                print(f"[{time.strftime('%H:%M:%S')}] postgres: {info}", flush=True)
                info["load_at_start"] = uptime()
                runs.append({"engine": "postgres", "store": info,
                             "queries": asyncio.run(measure(url, "postgres", args.iterations, args.warmup))})
            finally:
                if not args.keep_pg:
                    asyncio.run(pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    meta["load_after"] = uptime()
    md = report(meta, runs)
    for line in md:
        print(line)
    if not args.no_write:
        write_results("core_read", meta, md, {"runs": runs})


def report(meta: dict[str, Any], runs: list[dict[str, Any]]) -> list[str]:
    md = header("Core messaging — reading at scale", meta)
    plan = argparse.Namespace(**meta["plan"])
    args = argparse.Namespace(iterations=meta.get("iterations", 300), warmup=meta.get("warmup", 20))
    md += [
        f"Store: {plan.n_messages:,} messages between {plan.n_mailboxes:,} mailboxes, {plan.n_target:,} deliveries "
        "in the measured mailbox (90 % received, 10 % sent), 1–3 recipients per message, 30 % linked to one of "
        f"{plan.n_patients:,} patients, PDF attachments on ~ 30 % of letters/results/MSSanté messages.",
        f"Each query: {args.warmup} warm-up calls, then {args.iterations} timed calls of the service function "
        "(`messages.list_messages(limit=50)` / `messages.counts`) on a `Core` with the app's engine settings; "
        "the time includes the authorisation check and the page's recipients/attachments/patients lookups.",
        "Targets: p99 < 20 ms for pages and counts, < 100 ms for search. `CPU` = CPU time of the benchmark "
        "process per call (SQLite runs inside it, in aiosqlite's thread; PostgreSQL's server time is not "
        "included): the machine is shared (2 cores), so wall-time tails include waiting for a core.",
        "",
    ]
    for run in runs:
        s = run["store"]
        f = s.get("facts", {})
        md += [f"## {run['engine']}", "",
               f"Rows: {f.get('messages', 0):,} messages, {f.get('recipients', 0):,} recipients, "
               f"{f.get('deliveries', 0):,} deliveries; measured mailbox {f.get('target_deliveries', 0):,} "
               f"deliveries, {f.get('target_unread', 0):,} unread.",
               f"Load: {s.get('load', 'cached database reused')}. Load average when measuring: "
               f"`{s.get('load_at_start')}`", ""]
        md += ["| query | p50 ms | p99 ms | max ms | target p99 | met | CPU p50 / p99 ms | items | SQL stmts | "
               "traced call: wall / in SQL / slowest stmt ms |",
               "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
        for q in run["queries"]:
            md.append(f"| {q['query']} | {q['p50']:.2f} | **{q['p99']:.2f}** | {q['max']:.2f} | "
                      f"< {q['target_p99_ms']:.0f} | {'yes' if q['met'] else '**NO**'} | "
                      f"{q['cpu_p50']:.1f} / {q['cpu_p99']:.1f} | {q['items']} | "
                      f"{q['statements']} | {q['traced_call_ms']:.1f} / {q['traced_sql_ms']:.1f} / "
                      f"{q['slowest_statement_ms']:.1f} |")
        md.append("")
        md.append("<details><summary>Plans of the slowest statement of each query</summary>")
        md.append("")
        for q in run["queries"]:
            md += [f"**{q['query']}** ({q['slowest_statement_ms']:.2f} ms)", "", "```sql",
                   q["slowest_sql"].strip(), "```", "```", q["plan"], "```", ""]
        md += ["</details>", ""]
    if meta.get("analysis"):  # hand-written reading of this run, kept in the .json beside the figures
        md += ["## Analysis", "", *meta["analysis"], ""]
    return md


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
