"""Fan-out of events to the live sessions (WebSockets) of the accounts concerned.

Each process keeps its local subscribers. Without Redis, ``publish`` hands events to them
directly; with Redis, every process publishes to one channel and delivers what it reads from
it, so a message sent through process A reaches a socket held by process B.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)
CHANNEL = "monsisra:events"


@dataclass
class Event:
    type: str
    account_ids: list[int]
    data: dict[str, Any] = field(default_factory=dict)

    def payload(self) -> dict[str, Any]:
        return {"type": self.type, **self.data}


class Subscription:
    def __init__(self, bus: EventBus, account_id: int) -> None:
        self.bus = bus
        self.account_id = account_id
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=1000)

    def offer(self, payload: dict[str, Any]) -> None:
        try:
            self.queue.put_nowait(payload)
        except asyncio.QueueFull:
            # A stuck client must not hold memory forever; it will resync from counts.
            log.warning("event queue full for account %s; dropping", self.account_id)

    async def get(self) -> dict[str, Any]:
        return await self.queue.get()

    def close(self) -> None:
        self.bus._unsubscribe(self)


class EventBus:
    """In-process bus."""

    def __init__(self) -> None:
        self._subs: dict[int, set[Subscription]] = defaultdict(set)

    def subscribe(self, account_id: int) -> Subscription:
        sub = Subscription(self, account_id)
        self._subs[account_id].add(sub)
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.account_id)
        if subs:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.account_id]

    def _deliver(self, account_ids: list[int], payload: dict[str, Any]) -> None:
        for account_id in account_ids:
            for sub in list(self._subs.get(account_id, ())):
                sub.offer(payload)

    async def publish(self, events: list[Event]) -> None:
        for event in events:
            self._deliver(event.account_ids, event.payload())

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


class RedisEventBus(EventBus):
    """Bus spanning processes through one Redis pub/sub channel."""

    def __init__(self, url: str) -> None:
        super().__init__()
        import redis.asyncio as redis

        self._redis = redis.from_url(url)
        self._task: asyncio.Task | None = None
        self._ready = asyncio.Event()
        self.origin = f"{os.getpid()}-{id(self)}"

    async def publish(self, events: list[Event]) -> None:
        for event in events:
            message = json.dumps({"accounts": event.account_ids, "payload": event.payload()})
            try:
                await self._redis.publish(CHANNEL, message)
            except Exception:
                # Redis down: local sessions still get the event; remote ones resync on reconnect.
                log.exception("redis publish failed; delivering locally only")
                self._deliver(event.account_ids, event.payload())

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen())
        await asyncio.wait_for(self._ready.wait(), timeout=10)

    async def _listen(self) -> None:
        while True:
            try:
                pubsub = self._redis.pubsub()
                await pubsub.subscribe(CHANNEL)
                self._ready.set()
                async for message in pubsub.listen():
                    if message.get("type") != "message":
                        continue
                    data = json.loads(message["data"])
                    self._deliver(data["accounts"], data["payload"])
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("redis subscription lost; reconnecting")
                await asyncio.sleep(1)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self._redis.aclose()


def make_bus(redis_url: str | None) -> EventBus:
    return RedisEventBus(redis_url) if redis_url else EventBus()
