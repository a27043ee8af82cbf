"""Presence: online while a socket is open and the user active, away when idle for 10 minutes,
offline when gone or « Apparaître absent » (to others), told live to conversation contacts; the
Redis store makes a socket held by one process visible to another."""

from __future__ import annotations

import asyncio
import time

import pytest
from websockets.sync.client import connect

from monsisra.services import presence
from tests.support import REDIS_URL, unique
from tests.test_realtime import next_event, token_of, ws_url


def _state(client, address):
    r = client.get("/api/v1/presence", params={"address": address})
    assert r.status_code == 200, r.text
    return r.json()["items"][0]["state"]


def _wait_state(client, address, wanted):
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if _state(client, address) == wanted:
            return
        time.sleep(0.05)
    raise AssertionError(f"{address} never became {wanted}")


def test_online_absent_offline_live(server, make_user):
    a_name, a_addr, _ = make_user("Anne", unique("Pres"))
    b_name, _b_addr, _ = make_user("Bruno", unique("Pres"))
    a, b = server.login(a_name, "secret-pass"), server.login(b_name, "secret-pass")
    assert _state(b, a_addr) == "offline"
    r = b.post("/api/v1/conversations", json={"title": "Présence", "participants": [a_addr]})
    assert r.status_code == 201
    with connect(ws_url(server.base_url) + f"?access_token={token_of(b)}") as bws:
        next_event(bws, "hello")
        with connect(ws_url(server.base_url) + f"?access_token={token_of(a)}") as aws:
            next_event(aws, "hello")
            event = next_event(bws, "presence")
            assert event["state"] == "online" and a_addr in event["addresses"]
            assert _state(b, a_addr) == "online"
            # The directory card says it too.
            b.get("/api/v1/directory/search", params={"q": "Anne"})  # brings new accounts into the directory
            entry_id = a.get("/api/v1/directory/me").json()["entry_id"]
            card = b.get(f"/api/v1/directory/entries/{entry_id}").json()
            assert card["presence"]["state"] == "online" and card["presence"]["label"] == "En ligne"
            # « Apparaître absent »: offline to others at once, still herself to herself.
            a.patch("/api/v1/me", json={"appear_absent": True})
            assert next_event(bws, "presence")["state"] == "offline"
            assert _state(b, a_addr) == "offline"
            assert _state(a, a_addr) == "online"
            a.patch("/api/v1/me", json={"appear_absent": False})
            assert next_event(bws, "presence")["state"] == "online"
            aws.send("active")
        assert next_event(bws, "presence")["state"] == "offline"
    _wait_state(b, a_addr, "offline")
    assert _state(b, "inconnu@monsisra.localhost") == "offline"


def test_idle_rule():
    now = 10_000.0
    assert presence._state(True, now - 5, now) == "online"
    assert presence._state(True, now - presence.IDLE_SECONDS - 1, now) == "away"
    assert presence._state(False, now, now) == "offline"


def test_memory_store_forgets_dead_sockets():
    store = presence._Memory()

    async def run():
        await store.beat(1, "s1", 100.0, True)
        assert (await store.read([1], 110.0))[1] == (True, 100.0)
        assert (await store.read([1], 100.0 + presence.SOCKET_TTL + 1))[1][0] is False
        await store.gone(1, "s1")
        assert (await store.read([1], 101.0))[1][0] is False

    asyncio.run(run())


@pytest.mark.skipif(not REDIS_URL, reason="MONSISRA_TEST_REDIS_URL is not set (CI sets it)")
def test_redis_store_shared_between_processes():
    """Two stores on one Redis stand for two processes: a socket beating in one is seen by the other."""
    account = int(time.time() * 1000) % 1_000_000_000 + 1_000_000_000

    async def run():
        one, two = presence._Redis(REDIS_URL), presence._Redis(REDIS_URL)
        try:
            now = time.time()
            await one.beat(account, f"p1-{unique()}", now, True)
            alive, active = (await two.read([account], now))[account]
            assert alive and abs(active - now) < 1
            await one.redis.delete(f"{presence._PREFIX}:sockets:{account}", f"{presence._PREFIX}:active:{account}")
            assert (await two.read([account], now))[account][0] is False
        finally:
            await one.redis.aclose()
            await two.redis.aclose()

    asyncio.run(run())


@pytest.mark.skipif(not REDIS_URL, reason="MONSISRA_TEST_REDIS_URL is not set (CI sets it)")
def test_redis_store_takes_a_burst_of_sockets():
    """300 sockets beating at once in one process (the sockets of a process that died, reconnecting
    to this one): they wait for a Redis connection instead of failing (redis-py's default pool
    refuses the 101st command in flight, and the socket was answered 500)."""
    base = int(time.time() * 1000) % 1_000_000_000 + 2_000_000_000

    async def run():
        store = presence._Redis(REDIS_URL)
        try:
            now = time.time()
            await asyncio.gather(*(store.beat(base + i, f"p-{unique()}", now, True) for i in range(300)))
            seen = await store.read([base + i for i in range(300)], now)
            assert all(alive for alive, _ in seen.values())
            await store.redis.delete(*(f"{presence._PREFIX}:{kind}:{base + i}" for i in range(300)
                                       for kind in ("sockets", "active")))
        finally:
            await store.redis.aclose()

    asyncio.run(run())
