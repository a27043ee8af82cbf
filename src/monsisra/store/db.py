"""Engines and transactions for SQLite (embedded) and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine


def make_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    """An async engine; SQLite gets WAL, foreign keys, a busy timeout and explicit BEGINs."""
    if url.startswith("sqlite"):
        path = sa.engine.make_url(url).database
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": 30})
        _configure_sqlite(engine)
        return engine
    return create_async_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)


def _configure_sqlite(engine: AsyncEngine) -> None:
    @sa.event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        # Let us issue BEGIN ourselves (pysqlite's implicit transactions are unreliable).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk before we acknowledge it, even across a power cut.
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA cache_size=-65536")
        cursor.execute("PRAGMA temp_store=MEMORY")
        cursor.close()

    @sa.event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn) -> None:
        # A writer takes the write lock up front: in WAL mode a read transaction that later
        # writes can fail with SQLITE_BUSY without waiting.
        if conn.get_execution_options().get("write"):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")


class Database:
    """The engine with a read session factory and a serialised write session factory."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self.engine = make_engine(url)
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
