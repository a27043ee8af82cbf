"""The Redis event bus keeps deployments on different Redis databases apart (pub/sub ignores the
database number, so the channel carries it)."""

from __future__ import annotations

import asyncio

import pytest
from redis.connection import parse_url

from monsisra.events.bus import Event, RedisEventBus
from tests.support import REDIS_URL

pytestmark = pytest.mark.skipif(not REDIS_URL, reason="MONSISRA_TEST_REDIS_URL is not set (CI sets it)")


def _on_db(url: str, db: int) -> str:
    base = url.split("?", 1)[0]
    if parse_url(url).get("db") is not None and base.rsplit("/", 1)[-1].isdigit():
        base = base.rsplit("/", 1)[0]
    return f"{base.rstrip('/')}/{db}"


def test_events_stay_within_their_redis_database() -> None:
    """A bus on database 14 never hands out what a bus on database 15 published, even for the same
    account id; buses on the same database share events across processes as before."""

    async def scenario() -> None:
        ours, ours_too, theirs = (RedisEventBus(_on_db(REDIS_URL, 14)), RedisEventBus(_on_db(REDIS_URL, 14)),
                                  RedisEventBus(_on_db(REDIS_URL, 15)))
        for bus in (ours, ours_too, theirs):
            await bus.start()
        try:
            sub = ours.subscribe(7)
            # PUBLISH returns once the message is in every subscriber's buffer, and one
            # connection reads in order: had "theirs" reached us, it would come first.
            await theirs.publish([Event("message.new", [7], {"subject": "secret d'un autre déploiement"})])
            await ours_too.publish([Event("message.new", [7], {"subject": "le nôtre"})])
            got = await asyncio.wait_for(sub.get(), timeout=10)
            assert got["subject"] == "le nôtre"
            assert sub.queue.empty()
        finally:
            for bus in (ours, ours_too, theirs):
                await bus.stop()

    asyncio.run(scenario())
