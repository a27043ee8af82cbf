"""Engines and transactions for SQLite (embedded) and PostgreSQL."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
    AsyncAdapt_aiosqlite_ss_cursor,
)
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.util import EMPTY_DICT
from sqlalchemy.util.concurrency import await_

from monsisra.domain.text import words_match
from monsisra.store.files import private_dir, private_file

DEFAULT_BUSY_TIMEOUT = 30.0


def prepare_sqlite_file(url: str) -> None:
    """Create the SQLite file owner-only before SQLite does (SQLite gives its ``-wal`` and
    ``-shm`` files the database's mode), and take back modes an older install left open."""
    path = sa.engine.make_url(url).database
    if not url.startswith("sqlite") or not path or path == ":memory:" or path.startswith("file:"):
        return
    db = Path(path)
    if not db.parent.exists():
        private_dir(db.parent)
    if not db.exists():
        os.close(os.open(db, os.O_WRONLY | os.O_CREAT, 0o600))
    for sibling in (db, *(db.with_name(db.name + suffix) for suffix in ("-wal", "-shm", "-journal"))):
        private_file(sibling)


WAL_SIZE_LIMIT = 64 * 1024 * 1024


def _one_trip(conn: sqlite3.Connection, operation: str, parameters: Any, many: bool,
              begin: str | None = None) -> tuple:
    """In aiosqlite's thread: a statement, its rows and its cursor's end, in one call; first
    ``begin`` (the transaction's BEGIN, see :class:`_OneTripConnection`) when given."""
    if begin is not None:
        conn.execute(begin).close()
    cursor = conn.cursor()
    try:
        if many:
            cursor.executemany(operation, parameters)
        elif parameters is None:
            cursor.execute(operation)
        else:
            cursor.execute(operation, parameters)
        description = cursor.description
        rows = cursor.fetchall() if description else []
        return description, rows, cursor.rowcount, cursor.lastrowid
    finally:
        cursor.close()


class _OneTripCursor(AsyncAdapt_aiosqlite_cursor):
    """SQLAlchemy's aiosqlite cursor makes four trips to the connection's thread for one
    statement (open a cursor, execute, fetch the rows, close), each a wake-up of that thread and
    then of the event loop; on a busy 2-core host each costs about as much as a small
    statement, and a directory search runs 6-8 statements (issue 18). This one makes one trip:
    the same statement on the same ``sqlite3`` connection, in the same thread, its rows fetched
    there as SQLAlchemy's cursor does before returning. Server-side cursors (``stream``) keep
    SQLAlchemy's own class."""

    __slots__ = ("_description", "_lastrowid", "_rowcount")

    def __init__(self, adapt_connection: Any) -> None:
        self._adapt_connection = adapt_connection
        self._connection = adapt_connection._connection
        self._cursor = None  # no aiosqlite cursor: each statement opens and closes its own
        self._soft_closed_memoized = EMPTY_DICT
        self._rows = collections.deque()
        self._description = None
        self._rowcount = -1
        self._lastrowid = None

    @property
    def description(self) -> Any:
        return self._description

    @property
    def rowcount(self) -> int:
        return self._rowcount

    @property
    def lastrowid(self) -> Any:
        return self._lastrowid

    @property
    def arraysize(self) -> int:
        return 1

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        pass

    async def _async_soft_close(self) -> None:
        return None  # the rows are already here, the sqlite3 cursor already closed

    def close(self) -> None:
        self._rows.clear()

    def execute(self, operation: Any, parameters: Any = None) -> Any:
        try:
            return await_(self._trip(operation, parameters, False))
        except Exception as error:
            self._adapt_connection._handle_exception(error)

    def executemany(self, operation: Any, seq_of_parameters: Any) -> Any:
        try:
            return await_(self._trip(operation, seq_of_parameters, True))
        except Exception as error:
            self._adapt_connection._handle_exception(error)

    async def _trip(self, operation: Any, parameters: Any, many: bool) -> None:
        connection = self._connection
        adapt = self._adapt_connection
        async with adapt._execute_mutex:
            # The transaction's BEGIN goes with its first statement (taken off before the trip:
            # if it fails, no transaction was begun, and the rollback has nothing to end).
            begin, adapt.begin_with = adapt.begin_with, None
            self._description, rows, self._rowcount, self._lastrowid = await connection._execute(
                _one_trip, connection._conn, operation, parameters, many, begin)
        self._rows = collections.deque(rows)

    def nextset(self) -> None:
        """SQLite gives one result set per statement: there is never a next one (PEP 249: None)."""
        self._rows.clear()
        self._description = None
        return None


class _BeginFirstStreamCursor(AsyncAdapt_aiosqlite_ss_cursor):
    """SQLAlchemy's server-side cursor (``stream``), which first sends the transaction's pending
    BEGIN (:class:`_OneTripConnection`): it is made before the transaction begins, and used after."""

    __slots__ = ()

    def execute(self, operation: Any, parameters: Any = None) -> Any:
        self._adapt_connection.send_begin()
        return super().execute(operation, parameters)

    def executemany(self, operation: Any, seq_of_parameters: Any) -> Any:
        self._adapt_connection.send_begin()
        return super().executemany(operation, seq_of_parameters)


class _OneTripConnection(AsyncAdapt_aiosqlite_connection):
    """:class:`_OneTripCursor`'s connection. A transaction's BEGIN (``begin_with``, set by the
    engine's ``begin`` event) is not a trip of its own to aiosqlite's thread: it runs in the
    same call as the transaction's first statement, just before it (a directory search is a
    read transaction of a few statements: one trip of each search saved). A transaction that
    ends before any statement never began in SQLite: its commit or rollback has nothing to do."""

    __slots__ = ("begin_with",)
    _cursor_cls = _OneTripCursor
    _ss_cursor_cls = _BeginFirstStreamCursor

    def __init__(self, dbapi: Any, connection: Any) -> None:
        super().__init__(dbapi, connection)
        self.begin_with: str | None = None

    def send_begin(self) -> None:
        """The pending BEGIN in a trip of its own (before a server-side cursor's statement)."""
        if self.begin_with is None:
            return
        begin, self.begin_with = self.begin_with, None
        try:
            await_(self._connection._execute(_one_trip, self._connection._conn, begin, None, False))
        except Exception as error:
            self._handle_exception(error)

    def rollback(self) -> None:
        if self.begin_with is not None:
            self.begin_with = None
            return
        super().rollback()

    def commit(self) -> None:
        if self.begin_with is not None:
            self.begin_with = None
            return
        super().commit()


class _OneTripDbapi(AsyncAdapt_aiosqlite_dbapi):
    """aiosqlite for SQLAlchemy with :class:`_OneTripConnection` (``module=`` of the engine)."""

    def connect(self, *arg: Any, **kw: Any) -> Any:
        connection = super().connect(*arg, **kw)
        # The same aiosqlite connection (opened and set up by SQLAlchemy), in our adapter.
        return _OneTripConnection(self, connection._connection)


def _one_trip_dbapi() -> Any:
    """:class:`_OneTripDbapi` when aiosqlite has the thread call it relies on, else None
    (SQLAlchemy's own, four trips a statement)."""
    import aiosqlite

    if not callable(getattr(aiosqlite.Connection, "_execute", None)) \
            or not isinstance(getattr(aiosqlite.Connection, "_conn", None), property):
        return None
    return _OneTripDbapi(aiosqlite, sqlite3)


def make_engine(url: str, *, pool_size: int = 10, busy_timeout: float = DEFAULT_BUSY_TIMEOUT) -> AsyncEngine:
    """An async engine; SQLite gets WAL, foreign keys, a busy timeout and explicit BEGINs.

    ``busy_timeout`` (seconds) bounds how long a statement waits for a lock another process holds:
    SQLite's busy timeout, PostgreSQL's ``lock_timeout``. Past it the statement fails, and the
    HTTP layer answers 503 with ``Retry-After`` (see :func:`is_unavailable`).
    """
    if url.startswith("sqlite"):
        prepare_sqlite_file(url)
        dbapi = _one_trip_dbapi() if url.startswith("sqlite+aiosqlite") else None
        engine = create_async_engine(url, connect_args={"timeout": busy_timeout},
                                     **({"module": dbapi} if dbapi is not None else {}))
        _configure_sqlite(engine, busy_timeout)
        return engine
    lock_timeout = f"{max(1, round(busy_timeout * 1000))}ms"
    engine = create_async_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True,
                                 connect_args={"server_settings": {"lock_timeout": lock_timeout}})
    if engine.dialect.driver == "asyncpg":
        engine.dialect.do_ping = _ping_asyncpg  # type: ignore[method-assign]
    return engine


def _ping_asyncpg(dbapi_connection) -> bool:
    """The pool's check of a connection at checkout in one round trip. SQLAlchemy's asyncpg ping
    wraps its ``;`` in a transaction of its own (for PgBouncer's transaction mode) outside one:
    BEGIN, ``;``, ROLLBACK, three round trips before each request's own BEGIN (seen with py-spy
    on a directory search through HTTP). ``SELECT 1`` by the simple query protocol is one, prepares
    nothing, and is a transaction by itself for PgBouncer. A dead connection still fails here,
    translated as SQLAlchemy's ping does, and the pool replaces it."""
    try:
        await_(dbapi_connection._connection.execute("SELECT 1"))
    except Exception as error:
        dbapi_connection._handle_exception(error)
    return True


def _words_sql(text: str | None, query: str) -> int:
    return 1 if words_match(text, query) else 0


def _configure_sqlite(engine: AsyncEngine, busy_timeout: float = DEFAULT_BUSY_TIMEOUT) -> None:
    @sa.event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        # Let us issue BEGIN ourselves (pysqlite's implicit transactions are unreliable).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk before we acknowledge it, even across a power cut.
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={max(1, round(busy_timeout * 1000))}")
        cursor.execute("PRAGMA cache_size=-65536")
        cursor.execute("PRAGMA temp_store=MEMORY")
        # The windowed mailbox search tests each row of a window against the query words.
        dbapi_connection.create_function("monsisra_words", 2, _words_sql, deterministic=True)
        # ... and chooses between windows and the FTS index from how many messages hold each word:
        # the index's vocabulary, a per-connection view (nothing stored; works before the
        # migrations have created message_fts, fails only when read without it).
        cursor.execute("CREATE VIRTUAL TABLE IF NOT EXISTS temp.message_fts_vocab "
                       "USING fts5vocab(main, message_fts, row)")
        # After a checkpoint, the log file goes back to at most this size (a bulk import grows it
        # to hundreds of megabytes; left at that size, it costs disk and cache for nothing).
        cursor.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
        cursor.close()

    @sa.event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn) -> None:
        # A writer takes the write lock up front: in WAL mode a read transaction that later
        # writes can fail with SQLITE_BUSY without waiting.
        begin = "BEGIN IMMEDIATE" if conn.get_execution_options().get("write") else "BEGIN"
        dbapi_connection = conn.connection.dbapi_connection
        if isinstance(dbapi_connection, _OneTripConnection):
            dbapi_connection.begin_with = begin  # sent with the transaction's first statement
        else:
            conn.exec_driver_sql(begin)


class Database:
    """The engine with a read session factory and a serialised write session factory."""

    def __init__(self, url: str, busy_timeout: float = DEFAULT_BUSY_TIMEOUT) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self.engine = make_engine(url, busy_timeout=busy_timeout)
        self._read = async_sessionmaker(self.engine, expire_on_commit=False)
        self._write = async_sessionmaker(
            self.engine.execution_options(write=True), expire_on_commit=False
        )
        # SQLite has one writer at a time; queueing writers here avoids busy-waiting in threads.
        self._write_lock = asyncio.Lock() if self.is_sqlite else None

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        async with self._read() as session:
            yield session

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncSession]:
        """A write transaction, committed on clean exit, rolled back on error."""
        if self._write_lock is not None:
            async with self._write_lock, self._write() as session, session.begin():
                yield session
        else:
            async with self._write() as session, session.begin():
                yield session

    async def dispose(self) -> None:
        await self.engine.dispose()


def among(column: sa.ColumnElement, values, postgres: bool) -> sa.ColumnElement[bool]:
    """``column IN values`` as one parameter: an array on PostgreSQL, a JSON list on SQLite.

    SQLAlchemy's expanding ``IN`` renders and binds one parameter per value on every execution;
    with thousands of keys per import batch, that cost more than the query itself.
    """
    values = list(values)
    if postgres:
        from sqlalchemy.dialects.postgresql import ARRAY

        return column == sa.any_(sa.bindparam(None, values, type_=ARRAY(column.type)))
    each = sa.func.json_each(sa.bindparam(None, json.dumps(values), type_=sa.String)).table_valued("value")
    return column.in_(sa.select(each.c.value))


# SQLSTATEs of a PostgreSQL that is busy or going away: waiting a little and retrying will do.
_TRANSIENT_SQLSTATES = {
    "55P03",  # lock_not_available (lock_timeout)
    "40P01",  # deadlock_detected
    "40001",  # serialization_failure
    "57014",  # query_canceled (statement_timeout)
    "57P01", "57P02", "57P03",  # admin_shutdown, crash_shutdown, cannot_connect_now
    "53300",  # too_many_connections
}
_SQLITE_BUSY = ("database is locked", "database is busy", "database table is locked", "database schema is locked")


def insert_ignoring_duplicates(table: sa.Table, dialect: str) -> sa.Insert:
    """``INSERT … ON CONFLICT DO NOTHING`` for either engine: a row that several processes may
    create at once (the first of its kind) is made by whichever comes first, without an error."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(table).on_conflict_do_nothing()


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or any(e is s for s in seen) or len(seen) > 20:
            continue
        seen.append(e)
        todo += [getattr(e, "orig", None), e.__cause__, e.__context__]
    return seen


def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the database is locked, busy or unreachable (on either engine), as
    opposed to a fault of the request or of the code. Its transaction was rolled back."""
    for e in _chain(exc):
        if isinstance(e, sa.exc.DBAPIError) and e.connection_invalidated:
            return True
        if isinstance(e, sa.exc.TimeoutError | sa.exc.DisconnectionError | ConnectionError):
            return True  # no connection free in the pool, or the server went away
        state = getattr(e, "sqlstate", None) or getattr(e, "pgcode", None)
        if isinstance(state, str) and (state in _TRANSIENT_SQLSTATES or state.startswith("08")):
            return True
        module = type(e).__module__ or ""
        if module.startswith("asyncpg") and "connection is closed" in str(e).lower():
            return True
        if module.startswith(("sqlite3", "aiosqlite")) or isinstance(e, sa.exc.OperationalError):
            text = str(e).lower()
            if any(words in text for words in _SQLITE_BUSY):
                return True
    return False
