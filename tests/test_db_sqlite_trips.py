"""SQLite through aiosqlite: a statement is one trip to the connection's thread
(``store.db._OneTripCursor``), and every result SQLAlchemy reads from a cursor is the same as
through SQLAlchemy's own aiosqlite cursor (rows, row counts, last row ids, errors, streams,
transactions)."""

from __future__ import annotations

import asyncio

import aiosqlite
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from monsisra.store.db import _OneTripConnection, make_engine


async def _exercise(engine) -> list:
    """The same work on an engine; what each step gave."""
    seen: list = []
    async with engine.begin() as c:
        await c.execute(sa.text("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT UNIQUE, n INTEGER)"))
        r = await c.execute(sa.text("INSERT INTO t (name, n) VALUES (:name, :n)"),
                            [{"name": f"x{i}", "n": i} for i in range(5)])
        seen.append(("executemany rowcount", r.rowcount))
        r = await c.execute(sa.text("INSERT INTO t (name, n) VALUES ('y', 10)"))
        seen.append(("insert", r.rowcount, r.lastrowid))
        r = await c.execute(sa.text("UPDATE t SET n = n + 1 WHERE n < 3"))
        seen.append(("update rowcount", r.rowcount))
        r = await c.execute(sa.text("SELECT id, name, n FROM t ORDER BY id"))
        seen.append(("keys", list(r.keys())))
        seen.append(("rows", [tuple(x) for x in r.all()]))
        seen.append(("scalar", await c.scalar(sa.text("SELECT count(*) FROM t"))))
        seen.append(("empty", (await c.execute(sa.text("SELECT id FROM t WHERE n > 100"))).all()))
        seen.append(("first", tuple((await c.execute(sa.text("SELECT id, n FROM t ORDER BY id"))).first())))
        stream = await c.stream(sa.text("SELECT id FROM t ORDER BY id"))
        seen.append(("stream", [x.id async for x in stream]))
    with pytest.raises(sa.exc.IntegrityError):
        async with engine.begin() as c:
            await c.execute(sa.text("INSERT INTO t (name, n) VALUES ('y', 1)"))
    with pytest.raises(sa.exc.OperationalError):
        async with engine.begin() as c:
            await c.execute(sa.text("SELECT nothing FROM nowhere"))
    async with engine.connect() as c:  # the failed transactions left nothing behind
        seen.append(("after errors", await c.scalar(sa.text("SELECT count(*) FROM t"))))
    try:
        async with engine.begin() as c:
            await c.execute(sa.text("DELETE FROM t"))
            raise RuntimeError("rolled back")
    except RuntimeError:
        pass
    async with engine.connect() as c:
        seen.append(("after rollback", await c.scalar(sa.text("SELECT count(*) FROM t"))))
    return seen


def test_one_trip_cursor_gives_what_sqlalchemys_own_cursor_gives(tmp_path):
    async def run():
        ours = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'ours.db'}")
        theirs = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'theirs.db'}")
        try:
            async with ours.connect() as c:
                raw = await c.get_raw_connection()
                assert isinstance(raw.dbapi_connection, _OneTripConnection)
            got, expected = await _exercise(ours), await _exercise(theirs)
        finally:
            await ours.dispose()
            await theirs.dispose()
        assert got == expected
        assert ("executemany rowcount", 5) in got and ("insert", 1, 6) in got and ("after errors", 6) in got

    asyncio.run(run())


class Trips:
    """Counts the trips to aiosqlite's connection thread while ``on`` (patched on the class)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.n = 0
        self._monkeypatch = monkeypatch
        self._execute = aiosqlite.Connection._execute

    def on(self) -> None:
        execute, counter = self._execute, self

        async def counted(conn, fn, *args, **kwargs):
            counter.n += 1
            return await execute(conn, fn, *args, **kwargs)

        self.n = 0
        self._monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)

    def off(self) -> None:
        self._monkeypatch.setattr(aiosqlite.Connection, "_execute", self._execute)


def test_a_statement_is_one_trip_to_the_connection_thread(tmp_path, monkeypatch):
    trips = Trips(monkeypatch)

    async def run():
        engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'db.db'}")
        try:
            async with engine.connect() as c:
                await c.execute(sa.text("SELECT 1"))  # connected, pragmas run
                trips.on()
                rows = (await c.execute(sa.text("SELECT :a AS a UNION ALL SELECT :b"), {"a": 1, "b": 2})).all()
                assert [r.a for r in rows] == [1, 2]
                assert trips.n == 1  # SQLAlchemy's cursor: 4 (cursor, execute, fetchall, close)
        finally:
            trips.off()
            await engine.dispose()

    asyncio.run(run())


def test_a_statement_has_no_next_result_set(tmp_path):
    """SQLite answers one result set per statement: ``nextset`` says there is none (PEP 249)."""
    async def run():
        engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'db.db'}")
        try:
            async with engine.connect() as c:
                raw = await c.get_raw_connection()
                cursor = raw.dbapi_connection.cursor()
                return cursor
        finally:
            await engine.dispose()

    cursor = asyncio.run(run())
    cursor._rows.extend([(1,), (2,)])
    assert cursor.nextset() is None
    assert cursor.fetchall() == [] and cursor.description is None


def test_begin_goes_with_the_first_statement_of_a_transaction(tmp_path, monkeypatch):
    """A read transaction of two statements is three trips (each statement, the rollback), not
    four: its BEGIN runs in the first statement's trip. It is a real transaction: a write
    committed by another connection after its first read is not seen by its second."""
    trips = Trips(monkeypatch)

    async def run():
        engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'db.db'}")
        other = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'db.db'}")
        try:
            async with engine.begin() as c:
                await c.execute(sa.text("CREATE TABLE t (id INTEGER PRIMARY KEY)"))
            trips.on()
            async with engine.connect() as c:
                assert await c.scalar(sa.text("SELECT count(*) FROM t")) == 0
                async with other.begin() as w:
                    await w.execute(sa.text("INSERT INTO t (id) VALUES (1)"))
                before = trips.n
                assert await c.scalar(sa.text("SELECT count(*) FROM t")) == 0  # its snapshot
                assert trips.n == before + 1
                raw = await c.get_raw_connection()
                assert raw.dbapi_connection.begin_with is None and raw.dbapi_connection.driver_connection
                assert await c.run_sync(lambda sc: sc.connection.dbapi_connection._connection._conn.in_transaction)
            trips.off()
            async with engine.connect() as c:
                assert await c.scalar(sa.text("SELECT count(*) FROM t")) == 1
            trips.on()
            async with engine.connect() as c:
                await c.scalar(sa.text("SELECT 1"))
                await c.scalar(sa.text("SELECT 2"))
            assert trips.n == 3  # two statements and the rollback; a BEGIN of its own made it four
            trips.n = 0
            async with engine.connect() as c:
                await c.begin()  # ended by the connection's close (a rollback)
            assert trips.n == 0  # begun and ended without a statement: nothing was sent
            stream_rows = []
            async with engine.connect() as c:  # a stream first: its BEGIN before its own cursor
                stream = await c.stream(sa.text("SELECT id FROM t"))
                stream_rows = [r.id async for r in stream]
                assert await c.run_sync(lambda sc: sc.connection.dbapi_connection._connection._conn.in_transaction)
            assert stream_rows == [1]
        finally:
            trips.off()
            await engine.dispose()
            await other.dispose()

    asyncio.run(run())


def test_a_write_transaction_holds_the_write_lock_from_its_first_statement(tmp_path):
    """``Database.write``: BEGIN IMMEDIATE, sent with the first statement; another connection
    cannot write until it ends, and its writes are committed (or rolled back) whole."""
    from monsisra.store.db import Database

    async def run():
        db = Database(f"sqlite+aiosqlite:///{tmp_path / 'db.db'}", busy_timeout=0.2)
        other = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'db.db'}", busy_timeout=0.2)
        try:
            async with db.write() as s:
                await s.execute(sa.text("CREATE TABLE t (id INTEGER PRIMARY KEY)"))
            async with db.write() as s:
                assert await s.scalar(sa.text("SELECT count(*) FROM t")) == 0  # a read, the lock taken
                with pytest.raises(sa.exc.OperationalError, match="locked"):
                    async with other.begin() as w:
                        await w.execute(sa.text("INSERT INTO t (id) VALUES (9)"))
                await s.execute(sa.text("INSERT INTO t (id) VALUES (1)"))
            with pytest.raises(RuntimeError):
                async with db.write() as s:
                    await s.execute(sa.text("INSERT INTO t (id) VALUES (2)"))
                    raise RuntimeError("rolled back")
            async with db.read() as s:
                assert list((await s.execute(sa.text("SELECT id FROM t"))).scalars()) == [1]
        finally:
            await db.dispose()
            await other.dispose()

    asyncio.run(run())
