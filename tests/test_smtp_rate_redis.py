"""The SMTP message rate shared through Redis (``gateway.smtp.Limits``): the MAIL commands that
wait together share one trip, and the budget stays exact across processes, as one ``INCR`` per
message kept it. Two ``Limits`` stand for two ``serve`` processes on one Redis."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from monsisra.gateway.smtp import RATE_KEY, Limits
from tests.support import REDIS_URL


async def _away_from_a_minute_edge() -> None:
    """The window is the clock's minute: a test across its edge would see two budgets."""
    while time.time() % 60 > 55:
        await asyncio.sleep(0.5)


@pytest.mark.skipif(not REDIS_URL, reason="MONSISRA_TEST_REDIS_URL is not set (CI sets it)")
def test_concurrent_messages_from_two_processes_share_one_exact_budget():
    client = f"192.0.2.{uuid.uuid4().int % 200}-{uuid.uuid4().hex[:6]}"

    async def run():
        await _away_from_a_minute_edge()
        one, two = Limits(10, 25, REDIS_URL), Limits(10, 25, REDIS_URL)
        try:
            answers = await asyncio.gather(*(lim.allow(client) for _ in range(30) for lim in (one, two)))
            later = [await one.allow(client), await two.allow(client)]
            key = f"{RATE_KEY}:{client}:{int(time.time() // 60)}"
            count, ttl = int(await one._redis.get(key)), await one._redis.ttl(key)
            await one._redis.delete(key)
            return answers, later, count, ttl
        finally:
            await one.close()
            await two.close()

    answers, later, count, ttl = asyncio.run(run())
    assert answers.count(True) == 25 and later == [False, False]
    assert count == 62 and 0 < ttl <= 120


def test_without_redis_each_process_counts_alone():
    async def run():
        # Nothing listens on port 1: every trip fails, and the process counts on its own.
        lim = Limits(10, 2, "redis://127.0.0.1:1/0")
        try:
            return [await lim.allow("198.51.100.7") for _ in range(3)]
        finally:
            await lim.close()

    assert asyncio.run(run()) == [True, True, False]
