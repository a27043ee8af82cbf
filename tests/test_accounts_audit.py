"""Issue 15, item 8: the tamper-evident audit log, on SQLite and PostgreSQL.

The chain is checked by ``monsisra audit verify`` (a real process) after tampering with the table
directly: an altered, removed, inserted entry, a cut tail, a rewritten head; concurrent writers
never fork it; entries written before the chain existed are chained by the migration; accounts read
their access log and administrators search the whole log over HTTP.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from monsisra.config import Settings
from monsisra.services import audit
from monsisra.services.core import Core
from monsisra.store.audit import AuditHead
from monsisra.store.migrate import upgrade
from monsisra.store.models import AuditEvent
from tests.support import POSTGRES_URL, _run_alone, fresh_database

pytestmark = pytest.mark.postgres


def settings_for(url: str, data: Path) -> Settings:
    return Settings(database_url=url, data_dir=data, secret_key="audit-test-" + "k" * 40, smtp_enabled=False,
                    run_workers=False)


def with_core(settings: Settings, fn):
    """Run ``await fn(core)`` on a fresh core in a loop of its own."""

    async def go():
        core = Core(settings)
        try:
            return await fn(core)
        finally:
            await core.close()

    return _run_alone(go())


def cli_verify(settings: Settings) -> subprocess.CompletedProcess:
    env = {**os.environ, "MONSISRA_DATABASE_URL": settings.database_url, "MONSISRA_DATA_DIR": str(settings.data_dir),
           "MONSISRA_SECRET_KEY": settings.secret_key}
    return subprocess.run([sys.executable, "-m", "monsisra.cli", "audit", "verify"], env=env, capture_output=True,
                          text=True, timeout=120)


def cli_verify_json(settings: Settings) -> dict:
    env = {**os.environ, "MONSISRA_DATABASE_URL": settings.database_url, "MONSISRA_DATA_DIR": str(settings.data_dir)}
    done = subprocess.run([sys.executable, "-m", "monsisra.cli", "audit", "verify", "--json"], env=env,
                          capture_output=True, text=True, timeout=120)
    return {"code": done.returncode, **json.loads(done.stdout)}


async def write_entries(core: Core, n: int, tag: str) -> None:
    for i in range(n):
        async with core.write() as tx:
            audit.record(tx.session, None, "login.failure", client="127.0.0.1",
                         detail={"username": f"{tag}-{i}", "note": "accentué é"})


@pytest.fixture(scope="module")
def chain_db(backend, tmp_path_factory):
    """A fresh database holding a chain of 12 entries, and its settings."""
    with fresh_database(backend, tmp_path_factory.mktemp(f"audit-{backend}")) as url:
        settings = settings_for(url, tmp_path_factory.mktemp(f"audit-data-{backend}"))
        with_core(settings, lambda core: write_entries(core, 12, "base"))
        yield settings


def sql(settings: Settings, statement: str, **params):
    """One statement straight on the table, as someone with database access would."""

    async def go(core):
        async with core.db.write() as s:
            result = await s.execute(sa.text(statement), params)
            return result.all() if result.returns_rows else None

    return with_core(settings, go)


def entry(settings: Settings, seq: int) -> dict:
    async def go(core):
        async with core.read() as s:
            row = (await s.execute(sa.select(AuditEvent.__table__).where(AuditEvent.seq == seq))).mappings().one()
            return dict(row)

    return with_core(settings, go)


def put_back(settings: Settings, row: dict) -> None:
    async def go(core):
        async with core.db.write() as s:
            await s.execute(sa.insert(AuditEvent.__table__).values(**row))

    with_core(settings, go)


def test_an_intact_chain_verifies(chain_db):
    done = cli_verify(chain_db)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Journal intact" in done.stderr and "12 entrées" in done.stderr
    report = cli_verify_json(chain_db)
    assert report["ok"] is True and report["entries"] == 12 and report["head"]["seq"] == 12


def test_an_altered_entry_is_caught(chain_db):
    before = entry(chain_db, 5)
    sql(chain_db, "UPDATE audit_log SET client = '10.6.6.6' WHERE seq = 5")
    try:
        done = cli_verify(chain_db)
        assert done.returncode == 1
        assert "Journal altéré" in done.stderr and "n° 5" in done.stderr and "modifiée" in done.stderr
    finally:
        sql(chain_db, "UPDATE audit_log SET client = :c WHERE seq = 5", c=before["client"])
    assert cli_verify(chain_db).returncode == 0


def test_an_altered_detail_with_its_hash_recomputed_is_caught_by_the_next_link(chain_db):
    from monsisra.domain import audit_chain

    before = entry(chain_db, 7)
    forged = {**before, "detail": {"username": "quelqu'un d'autre"}}
    forged_hash = audit_chain.entry_hash(forged)
    sql(chain_db, "UPDATE audit_log SET detail = :d, hash = :h WHERE seq = 7",
        d=json.dumps(forged["detail"]), h=forged_hash)
    try:
        report = cli_verify_json(chain_db)
        assert report["code"] == 1 and not report["ok"]
        assert [(p["kind"], p["seq"]) for p in report["problems"]] == [("link", 8)]
    finally:
        sql(chain_db, "UPDATE audit_log SET detail = :d, hash = :h WHERE seq = 7",
            d=json.dumps(before["detail"]), h=before["hash"])
    assert cli_verify(chain_db).returncode == 0


def test_a_removed_entry_is_caught(chain_db):
    row = entry(chain_db, 3)
    sql(chain_db, "DELETE FROM audit_log WHERE seq = 3")
    try:
        done = cli_verify(chain_db)
        assert done.returncode == 1 and "n° 3 a été supprimée" in done.stderr
    finally:
        put_back(chain_db, row)
    assert cli_verify(chain_db).returncode == 0


def test_an_inserted_entry_is_caught(chain_db):
    sql(chain_db, "INSERT INTO audit_log (at, action, object_type, object_id, client) "
                  "VALUES (CURRENT_TIMESTAMP, 'login.success', '', '', '10.6.6.6')")
    try:
        done = cli_verify(chain_db)
        assert done.returncode == 1 and "ajoutée hors de la chaîne" in done.stderr
    finally:
        sql(chain_db, "DELETE FROM audit_log WHERE seq IS NULL")
    # Slipped in the middle with a number of its own and a made-up hash: caught as well.
    row = entry(chain_db, 12)
    sql(chain_db, "UPDATE audit_log SET seq = 13 WHERE seq = 12")
    sql(chain_db, "INSERT INTO audit_log (at, action, object_type, object_id, seq, prev_hash, hash) "
                  "VALUES (CURRENT_TIMESTAMP, 'logout', '', '', 12, :p, :h)", p=row["prev_hash"], h="0" * 64)
    try:
        report = cli_verify_json(chain_db)
        assert report["code"] == 1 and {p["kind"] for p in report["problems"]} >= {"altered", "link"}
    finally:
        sql(chain_db, "DELETE FROM audit_log WHERE seq = 12")
        sql(chain_db, "UPDATE audit_log SET seq = 12 WHERE seq = 13")
    assert cli_verify(chain_db).returncode == 0


def test_a_cut_tail_and_a_rewritten_head_are_caught(chain_db):
    last = entry(chain_db, 12)
    sql(chain_db, "DELETE FROM audit_log WHERE seq = 12")
    try:
        done = cli_verify(chain_db)
        assert done.returncode == 1 and "dernières entrées" in done.stderr
    finally:
        put_back(chain_db, last)
    sql(chain_db, "UPDATE audit_head SET hash = :h WHERE id = 1", h="f" * 64)
    try:
        report = cli_verify_json(chain_db)
        assert report["code"] == 1 and report["problems"][0]["kind"] == "head"
    finally:
        sql(chain_db, "UPDATE audit_head SET hash = :h WHERE id = 1", h=last["hash"])
    assert cli_verify(chain_db).returncode == 0


def test_concurrent_writers_do_not_fork_the_chain(chain_db):
    async def go(core):
        async with core.read() as s:
            before = await s.scalar(sa.select(AuditHead.seq))
        await asyncio.gather(*(write_entries(core, 6, f"w{i}") for i in range(8)))
        async with core.read() as s:
            seqs = list(await s.scalars(sa.select(AuditEvent.seq).where(AuditEvent.seq > before)
                                        .order_by(AuditEvent.seq)))
        return before, seqs, await audit.verify(core)

    before, seqs, verdict = with_core(chain_db, go)
    assert seqs == list(range(before + 1, before + 49))
    assert verdict.ok, verdict.problems
    assert cli_verify(chain_db).returncode == 0


def test_entries_written_before_the_chain_are_chained_by_the_migration(backend, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"audit-legacy-{backend}")
    if backend == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp / 'old.db'}"
        _run_alone(asyncio.to_thread(upgrade, url, "0006_web_trash"))
        _legacy_then_upgrade(url, tmp)
    else:
        assert POSTGRES_URL
        import uuid

        import asyncpg

        admin = sa.make_url(POSTGRES_URL)
        name = f"monsisra_legacy_{uuid.uuid4().hex[:10]}"

        async def ddl(statement: str) -> None:
            conn = await asyncpg.connect(user=admin.username or "postgres", host=admin.host or "127.0.0.1",
                                         port=admin.port or 5432, database=admin.database or "postgres",
                                         password=admin.password)
            try:
                await conn.execute(statement)
            finally:
                await conn.close()

        _run_alone(ddl(f'CREATE DATABASE "{name}"'))
        try:
            url = admin.set(database=name).render_as_string(hide_password=False)
            _run_alone(asyncio.to_thread(upgrade, url, "0006_web_trash"))
            _legacy_then_upgrade(url, tmp)
        finally:
            _run_alone(ddl(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _legacy_then_upgrade(url: str, tmp: Path) -> None:
    async def old_rows():
        engine = sa.ext.asyncio.create_async_engine(url)
        async with engine.begin() as conn:
            for i in range(5):
                await conn.execute(sa.text("INSERT INTO audit_log (at, action, object_type, object_id, client) "
                                           "VALUES (CURRENT_TIMESTAMP, 'login.success', 'token', :i, '127.0.0.1')"),
                                   {"i": str(i)})
        await engine.dispose()

    _run_alone(old_rows())
    _run_alone(asyncio.to_thread(upgrade, url))
    settings = settings_for(url, tmp / "data")
    with_core(settings, lambda core: write_entries(core, 2, "after"))
    report = cli_verify_json(settings)
    assert report["code"] == 0 and report["ok"] and report["entries"] == 7 and report["head"]["seq"] == 7


# --- over HTTP: the access log of an account, the administrators' search --------------------------------


def test_access_log_and_admin_search_over_http(server, make_user):
    user, address, _ = make_user("Jules")
    with server.client() as anon:
        assert anon.post("/api/v1/auth/token", data={"username": user, "password": "faux"}).status_code == 401
        token = anon.post("/api/v1/auth/token", data={"username": user, "password": "secret-pass"}).json()
    me = server.client(token["access_token"])
    log = me.get("/api/v1/me/access-log").json()["items"]
    assert [e["action"] for e in log[:2]] == ["login.success", "login.failure"]
    assert all(e["self"] for e in log[:2]) and log[0]["label"] == "Connexion"
    assert me.get("/api/v1/me/access-log", params={"cursor": "pas-un-curseur"}).status_code == 422
    page = me.get("/api/v1/me/access-log", params={"limit": 1}).json()
    assert len(page["items"]) == 1 and page["next_cursor"]
    older = me.get("/api/v1/me/access-log", params={"limit": 1, "cursor": page["next_cursor"]}).json()
    assert older["items"][0]["id"] < page["items"][0]["id"]
    # Someone else's mailbox events never show in mine.
    assert all(e["mailbox"] in (None, address) for e in log)

    admin = server.login("admin")
    found = admin.get("/api/v1/admin/audit", params={"account": user, "action": "login."}).json()["items"]
    assert {e["action"] for e in found} == {"login.success", "login.failure"}
    assert all(e["seq"] and len(e["hash"]) == 64 for e in found)
    assert admin.get("/api/v1/admin/audit", params={"since": "pas une date"}).status_code == 422
    verdict = admin.get("/api/v1/admin/audit/verify").json()
    assert verdict["ok"] is True and verdict["entries"] == verdict["head"]["seq"]
    # Not an administrator: 403, whatever is asked.
    assert me.get("/api/v1/admin/audit").status_code == 403
    assert me.get("/api/v1/admin/audit/verify").status_code == 403
    me.close()
