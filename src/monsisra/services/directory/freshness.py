"""A running server follows the imports made by other processes (issue 18, item 1).

A nightly ``monsisra directory import`` rebuilds the index in another process while ``monsisra
serve`` keeps answering searches. Without help, the serving process keeps what it learnt before:
its SQLite connections keep the statistics they loaded when they opened (``sqlite_stat1``), the
write-ahead log the import filled is never checkpointed while those connections stay open (every
page read then looks through hundreds of megabytes of log), and its PostgreSQL plans rest on word
shares read before the import. Searches slowed down by a factor of seven until a restart.

So every rebuild stamps a new *generation* in ``dir_meta`` (in its own transaction), and the
importing process checkpoints and analyses what it wrote. Every search reads the generation with
the local signature (the same statement); when it changed, this process drops what it cached, opens
new connections (fresh statistics, fresh plans) and truncates the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from monsisra.services.core import Core
from monsisra.services.directory.planner import STATS
from monsisra.store.directory import DirMeta

log = logging.getLogger(__name__)
GENERATION = "index_generation"
_seen: dict[str, str | None] = {}  # database url → the generation this process works with
_refreshing: set[str] = set()


async def stamp(session: AsyncSession) -> str:
    """A new generation, written in the rebuild's transaction."""
    value = uuid.uuid4().hex
    await session.execute(sa.delete(DirMeta).where(DirMeta.name == GENERATION))
    session.add(DirMeta(name=GENERATION, value=value))
    return value


async def follow(core: Core, generation: str | None) -> bool:
    """Called with the generation read before a search: when another process rebuilt the index
    since this one last looked, refresh. Returns whether it did."""
    url = core.settings.database_url
    if url not in _seen:
        _seen[url] = generation
        return False
    if _seen[url] == generation:
        return False
    _seen[url] = generation
    await refresh(core)
    return True


async def refresh(core: Core) -> None:
    """Forget this process's view of the old index: statistics, pooled connections, the log."""
    url = core.settings.database_url
    STATS.clear()  # by database; another database's are simply read again
    # Connections checked out finish their work; the next ones are new (fresh statistics and plans).
    await core.db.engine.dispose()
    if core.db.is_sqlite and url not in _refreshing:
        _refreshing.add(url)
        task = asyncio.get_running_loop().create_task(_checkpoint(core))
        task.add_done_callback(lambda _t: _refreshing.discard(url))


async def _checkpoint(core: Core, attempts: int = 20) -> None:
    """Truncate SQLite's write-ahead log once no reader needs it (readers of the old snapshot
    finish within moments; a busy log is tried again)."""
    for _ in range(attempts):
        with contextlib.suppress(Exception):
            async with core.db.engine.connect() as conn:
                busy, _log, _done = (await conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")).one()
                await conn.exec_driver_sql("ANALYZE sqlite_schema")  # reload statistics in this connection
                if not busy:
                    return
        await asyncio.sleep(0.5)
    log.warning("write-ahead log still in use after an import; it will be truncated at the next idle moment")


async def settle_after_import(core: Core) -> None:
    """In the importing process, once the rebuild committed: statistics for the planner and a
    truncated log on SQLite (PostgreSQL is vacuumed and analysed by the rebuild itself)."""
    if not core.db.is_sqlite:
        return
    async with core.db.engine.connect() as conn:
        await conn.exec_driver_sql("PRAGMA analysis_limit=1000")
        await conn.exec_driver_sql("ANALYZE")
        await conn.commit()
    await _checkpoint(core, attempts=10)
