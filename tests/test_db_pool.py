"""The PostgreSQL pool's check at checkout (``store.db._ping_asyncpg``): a pooled connection whose
backend was terminated is replaced before the caller uses it, and a live one is kept."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
import sqlalchemy as sa

from monsisra.store.db import make_engine
from tests.support import POSTGRES_URL

pytestmark = pytest.mark.skipif(not POSTGRES_URL,
                                reason="PostgreSQL only: MONSISRA_TEST_POSTGRES_URL is not set (CI sets it)")


async def _terminate(pid: int) -> None:
    url = sa.make_url(POSTGRES_URL)
    conn = await asyncpg.connect(user=url.username or "postgres", host=url.host or "127.0.0.1",
                                 port=url.port or 5432, database=url.database or "postgres",
                                 password=url.password)
    try:
        assert await conn.fetchval("SELECT pg_terminate_backend($1)", pid)
        for _ in range(100):  # bounded: the backend leaves pg_stat_activity within milliseconds
            if not await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid):
                break
            await asyncio.sleep(0.02)
    finally:
        await conn.close()


def test_terminated_pooled_connection_is_replaced_at_checkout():
    async def run():
        engine = make_engine(POSTGRES_URL, pool_size=1)
        try:
            async with engine.connect() as conn:
                first = (await conn.execute(sa.text("SELECT pg_backend_pid()"))).scalar_one()
            async with engine.connect() as conn:  # a live connection passes the check and is kept
                assert (await conn.execute(sa.text("SELECT pg_backend_pid()"))).scalar_one() == first
            await _terminate(first)
            async with engine.connect() as conn:  # no error reaches the caller: a new backend
                second = (await conn.execute(sa.text("SELECT pg_backend_pid()"))).scalar_one()
            assert second != first
            async with engine.begin() as conn:  # and the new connection works in a transaction
                assert (await conn.execute(sa.text("SELECT 1 + 1"))).scalar_one() == 2
        finally:
            await engine.dispose()

    asyncio.run(run())
