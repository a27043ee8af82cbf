"""Build and keep the 10,000,000-message store of the « hospital service mailbox » benchmark.

The rows are those of ``bench.core_read`` (same generator, same bulk loaders: executemany on
SQLite, COPY on PostgreSQL, secondary indexes and triggers dropped during the load and recreated
from the migrated DDL) at ``--scale 10``: 10,000,000 messages between 20,000 mailboxes, of which
500,000 sit in the measured mailbox (id 1). Since the triggers of migration 0007 are not there
during the load, ``delivery_counts`` is filled afterwards by the same GROUP BY the migration runs.

The stores are kept between runs (building 10M on SQLite takes about an hour):
SQLite ``/work/bench-data/mailbox/core_read_v<gen>_<n>.db``, PostgreSQL database
``hmailbox_core_<n>``. A store is complete once its « done » marker exists (a file next to the
SQLite database, a ``bench_store_done`` table in PostgreSQL); an incomplete one is rebuilt.

Run: ``.venv/bin/python -m bench.core_read_store --engine sqlite [--scale 10]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bench import core_read
from bench.common import pg_admin, pg_url

DATA = Path("/work/bench-data/mailbox")
COUNT_KEY = "mailbox_id, deleted, role, category, read, archived, favorite, todo"
REFILL_COUNTS = (f"INSERT INTO delivery_counts ({COUNT_KEY}, n) "
                 f"SELECT {COUNT_KEY}, count(*) FROM deliveries GROUP BY {COUNT_KEY}")


def make_plan(scale: float, target: int | None = None) -> core_read.Plan:
    """``core_read``'s plan at ``scale`` (10: 10M messages, 500k in the mailbox); ``target``
    sets the measured mailbox's size apart from the store's (a smaller store, same mailbox)."""
    plan = core_read.Plan(scale)
    if target:
        plan.n_target = min(target, plan.n_messages)
    return plan


def _suffix(plan: core_read.Plan) -> str:
    default = core_read.Plan(plan.scale).n_target
    return f"{plan.n_messages}" + ("" if plan.n_target == default else f"_{plan.n_target}")


def sqlite_path(plan: core_read.Plan) -> Path:
    return DATA / f"core_read_v{core_read.GENERATOR_VERSION}_{_suffix(plan)}.db"


def pg_name(plan: core_read.Plan) -> str:
    """``hmailbox_core_<n>``; ``MONSISRA_BENCH_PG_PREFIX`` names another set of stores (a helper's own
    copy on a shared server, so that two builds never drop each other's database)."""
    prefix = os.environ.get("MONSISRA_BENCH_PG_PREFIX", "hmailbox_core")
    return f"{prefix}_{_suffix(plan)}"


def _log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def sqlite_store(plan: core_read.Plan, rebuild: bool = False) -> tuple[str, dict[str, Any]]:
    """URL of the SQLite store (built when missing or incomplete) and how it was obtained."""
    DATA.mkdir(parents=True, exist_ok=True)
    path = sqlite_path(plan)
    done = Path(str(path) + ".done")
    info: dict[str, Any] = {"path": str(path)}
    if rebuild or not done.exists():
        for suffix in ("", "-wal", "-shm", ".tmp", ".tmp-wal", ".tmp-shm", ".done"):
            with contextlib.suppress(FileNotFoundError):
                Path(str(path) + suffix).unlink()
        tmp = Path(str(path) + ".tmp")
        _log(f"building {tmp} ({plan.n_messages:,} messages)")
        info["load"] = core_read.load_sqlite(tmp, plan)
        t = time.perf_counter()
        db = sqlite3.connect(tmp, isolation_level=None)
        db.execute("BEGIN")
        db.execute("DELETE FROM delivery_counts")
        db.execute(REFILL_COUNTS)
        db.execute("COMMIT")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.close()
        info["load"]["counts_s"] = time.perf_counter() - t
        tmp.rename(path)
        done.write_text(repr(info["load"]) + "\n")
        info["cached"] = False
        _log(f"sqlite store ready: {info}")
    else:
        from monsisra.store.migrate import upgrade

        upgrade(f"sqlite+aiosqlite:///{path}")
        info["cached"] = True
        info["load"] = done.read_text().strip()
    info["size_mb"] = round(path.stat().st_size / 2**20)
    return f"sqlite+aiosqlite:///{path}", info


async def _pg_done(name: str) -> bool:
    engine = sa.ext.asyncio.create_async_engine(pg_url(name))
    try:
        async with engine.connect() as conn:
            return bool((await conn.exec_driver_sql(
                "SELECT count(*) FROM information_schema.tables WHERE table_name = 'bench_store_done'")).scalar())
    except Exception:  # no such database yet
        return False
    finally:
        await engine.dispose()


async def _pg_signatures(url: str, *, only_if_empty: bool) -> float | None:
    """Fill ``search_signatures`` (migration 0012) as the migration's backfill does: the bulk load
    runs with ``session_replication_role = replica``, so its triggers never fire and a store built
    at head has an empty table (the signature windows would then find nothing: wrong answers).
    ``only_if_empty``: leave a filled table alone (a store built before this fix is repaired)."""
    engine = sa.ext.asyncio.create_async_engine(url)
    try:
        async with engine.begin() as conn:
            if not (await conn.exec_driver_sql("SELECT to_regclass('search_signatures') IS NOT NULL")).scalar():
                return None
            if only_if_empty and (await conn.exec_driver_sql(
                    "SELECT EXISTS (SELECT 1 FROM search_signatures) OR NOT EXISTS (SELECT 1 FROM deliveries)"
            )).scalar():
                return None
            # The table's own signature words: four at 0012 (256 bits), eight from 0013 (512).
            words = (await conn.exec_driver_sql(
                "SELECT count(*) FROM information_schema.columns WHERE table_name = 'search_signatures' "
                "AND table_schema = current_schema() AND column_name LIKE 'sig%'")).scalar()
            columns = ", ".join(f"sig{k}" for k in range(words))
            _log(f"filling search_signatures, {64 * words} bits (the bulk load bypassed its triggers)")
            t = time.perf_counter()
            await conn.exec_driver_sql("SET LOCAL maintenance_work_mem = '256MB'")
            await conn.exec_driver_sql("ALTER TABLE search_signatures DROP CONSTRAINT pk_search_signatures")
            await conn.exec_driver_sql("TRUNCATE search_signatures")
            await conn.exec_driver_sql(
                f"INSERT INTO search_signatures (mailbox_id, message_id, {columns}) "
                "SELECT d.mailbox_id, d.message_id, " + ", ".join(f"g.sig[{k + 1}]" for k in range(words)) + " "
                "FROM (SELECT DISTINCT mailbox_id, message_id FROM deliveries) d "
                "JOIN messages m ON m.id = d.message_id, search_signature(m.search_vector) AS g(sig)")
            await conn.exec_driver_sql("ALTER TABLE search_signatures ADD CONSTRAINT pk_search_signatures "
                                       f"PRIMARY KEY (mailbox_id, message_id) INCLUDE ({columns})")
        async with engine.connect() as conn:
            await (await conn.execution_options(isolation_level="AUTOCOMMIT")).exec_driver_sql(
                "VACUUM ANALYZE search_signatures")
        return time.perf_counter() - t
    finally:
        await engine.dispose()


async def _pg_version(url: str) -> list[str]:
    engine = sa.ext.asyncio.create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return sorted((await conn.exec_driver_sql("SELECT version_num FROM alembic_version")).scalars().all())
    finally:
        await engine.dispose()


async def _pg_vacuum(url: str) -> None:
    engine = sa.ext.asyncio.create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.exec_driver_sql("VACUUM ANALYZE")
    finally:
        await engine.dispose()


async def _pg_finish(url: str, load: dict[str, Any]) -> None:
    engine = sa.ext.asyncio.create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.exec_driver_sql("DELETE FROM delivery_counts")
            await conn.exec_driver_sql(REFILL_COUNTS)
            await conn.exec_driver_sql("CREATE TABLE bench_store_done (load text)")
            await conn.execute(sa.text("INSERT INTO bench_store_done VALUES (:l)"), {"l": repr(load)})
    finally:
        await engine.dispose()


def pg_store(plan: core_read.Plan, rebuild: bool = False) -> tuple[str, dict[str, Any]]:
    import sqlalchemy.ext.asyncio  # noqa: F401

    name = pg_name(plan)
    url = pg_url(name)
    info: dict[str, Any] = {"database": name}
    if rebuild or not asyncio.run(_pg_done(name)):
        asyncio.run(pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        asyncio.run(pg_admin(f'CREATE DATABASE "{name}"'))
        from monsisra.store.migrate import upgrade

        upgrade(url)
        _log(f"loading PostgreSQL {name} ({plan.n_messages:,} messages)")
        info["load"] = asyncio.run(core_read.load_pg(url, plan))
        info["load"]["signatures_s"] = asyncio.run(_pg_signatures(url, only_if_empty=False))
        t = time.perf_counter()
        asyncio.run(_pg_finish(url, info["load"]))
        info["load"]["counts_s"] = time.perf_counter() - t
        info["cached"] = False
        _log(f"postgres store ready: {info}")
    else:
        from monsisra.store.migrate import upgrade

        version = asyncio.run(_pg_version(url))
        upgrade(url)
        info["cached"] = True
        if asyncio.run(_pg_version(url)) != version:
            # What autovacuum does a while after a migration that rebuilt a table (the signature
            # windows are index-only scans: without a visibility map each row reads the heap).
            _log(f"migrated {version} → head: VACUUM ANALYZE")
            asyncio.run(_pg_vacuum(url))
        repaired = asyncio.run(_pg_signatures(url, only_if_empty=True))
        if repaired is not None:
            info["signatures_repaired_s"] = repaired
    return url, info


def main() -> None:
    import sqlalchemy.ext.asyncio  # noqa: F401

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=10.0)
    parser.add_argument("--engine", choices=("sqlite", "postgres"), required=True)
    parser.add_argument("--target", type=int, default=None, help="deliveries in the measured mailbox")
    parser.add_argument("--rebuild", action="store_true")
    args = parser.parse_args()
    plan = make_plan(args.scale, args.target)
    if args.engine == "sqlite":
        print(sqlite_store(plan, args.rebuild))
    else:
        print(pg_store(plan, args.rebuild))


if __name__ == "__main__":
    main()
