"""Fan-out of events to the live sessions (WebSockets) of the accounts concerned.

Each process keeps its local subscribers. Without Redis, ``publish`` hands events to them
directly; with Redis, every process publishes to one channel and delivers what it reads from
it, so a message sent through process A reaches a socket held by process B.

One event is not for the client but for the bus itself: ``session.ended`` (published when a
token is revoked, a password changed, an account deactivated) ends the subscriptions bound to
those tokens — every process, Redis included — and is handed to the control listeners (the web
sessions' actor cache). It travels the same channel as the other events, so anything published
after it can never reach a socket it ended.

A subscription also knows the mailboxes its account may use (``set_mailboxes`` once subscribed):
``mailbox.revoked`` and ``mailbox.granted`` (a delegation or membership taken back or given) update
that set before being handed to the client, and an event about a mailbox outside the set is
dropped when it would be sent — even one queued before, or fanned out by a transaction that read
the access rows before the revocation committed. A revoked delegate's open page stops at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)
CHANNEL = "monsisra:events"  # + ":<Redis database number>", see RedisEventBus
SESSION_ENDED = "session.ended"
# data of a SESSION_ENDED event: {"token_ids": [ids] or None (every session of the accounts), "reason": str,
# "socket_ids": [ids] (optional: only those live sockets)}
MAILBOX_REVOKED = "mailbox.revoked"
MAILBOX_GRANTED = "mailbox.granted"
# data of both: {"mailbox_id": id, ...}, sent to the account whose access changed.


class TooManySubscriptions(Exception):
    """The account already holds the maximum number of live subscriptions in this process."""


@dataclass
class Event:
    type: str
    account_ids: list[int]
    data: dict[str, Any] = field(default_factory=dict)

    def payload(self) -> dict[str, Any]:
        return {"type": self.type, **self.data}


# The copies of an event trimmed to what one account may see are shared by that account's sockets
# (the transport encodes each copy once); the original is kept with them so its id stays unique.
_TRIMMED: dict[tuple[int, tuple[int, ...]], tuple[dict[str, Any], dict[str, Any]]] = {}
_TRIMMED_MAX = 1024


def _trimmed(payload: dict[str, Any], kept: list[int]) -> dict[str, Any]:
    key = (id(payload), tuple(kept))
    hit = _TRIMMED.get(key)
    if hit is not None and hit[0] is payload:
        return hit[1]
    copy = {**payload, "mailbox_ids": kept}
    if len(_TRIMMED) >= _TRIMMED_MAX:
        _TRIMMED.pop(next(iter(_TRIMMED)))
    _TRIMMED[key] = (payload, copy)
    return copy


class Subscription:
    """One live socket's feed, bound to the token (``tokens.id``) it authenticated with."""

    def __init__(self, bus: EventBus, account_id: int, token_id: int | None = None) -> None:
        self.bus = bus
        self.account_id = account_id
        self.token_id = token_id
        self.socket_id: int | None = None  # its live_sockets row, when the socket layer keeps one
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=1000)
        self.ended = asyncio.Event()
        self.end_reason = ""
        # Mailboxes the account may use; None until set (nothing is filtered yet), with the
        # grants and revocations seen meanwhile applied when it is.
        self.mailboxes: set[int] | None = None
        self._changes: list[tuple[bool, int]] = []

    def set_mailboxes(self, mailbox_ids) -> None:
        """The account's mailboxes as read after subscribing; changes seen since are applied."""
        current = set(mailbox_ids)
        for granted, mailbox_id in self._changes:
            (current.add if granted else current.discard)(mailbox_id)
        self._changes.clear()
        self.mailboxes = current

    def access_changed(self, granted: bool, mailbox_id: int) -> None:
        if self.mailboxes is None:
            self._changes.append((granted, mailbox_id))
        elif granted:
            self.mailboxes.add(mailbox_id)
        else:
            self.mailboxes.discard(mailbox_id)

    def allows(self, payload: dict[str, Any]) -> dict[str, Any] | None:
        """The payload as this subscription may see it now (None: not at all)."""
        allowed = self.mailboxes
        if allowed is None or payload.get("type") in (MAILBOX_REVOKED, MAILBOX_GRANTED):
            return payload
        mailbox_id = payload.get("mailbox_id")
        if isinstance(mailbox_id, int) and mailbox_id not in allowed:
            return None
        ids = payload.get("mailbox_ids")
        if isinstance(ids, list):
            kept = [i for i in ids if i in allowed]
            if not kept:
                return None
            if len(kept) != len(ids):
                return _trimmed(payload, kept)
        return payload

    def end(self, reason: str) -> None:
        """Stop the feed at once: nothing queued or offered after this is handed out."""
        if self.ended.is_set():
            return
        self.end_reason = reason
        self.ended.set()
        while not self.queue.empty():
            self.queue.get_nowait()

    def offer(self, payload: dict[str, Any]) -> None:
        if self.ended.is_set():
            return
        try:
            self.queue.put_nowait(payload)
        except asyncio.QueueFull:
            # A stuck client must not hold memory forever; it will resync from counts.
            log.warning("event queue full for account %s; dropping", self.account_id)

    async def get(self) -> dict[str, Any]:
        """The next event this subscription may see (the mailbox check is made now, at hand-out)."""
        while True:
            payload = self.allows(await self.queue.get())
            if payload is not None:
                return payload

    def close(self) -> None:
        self.bus._unsubscribe(self)


class EventBus:
    """In-process bus."""

    def __init__(self) -> None:
        self._subs: dict[int, set[Subscription]] = defaultdict(set)
        self._control_listeners: list[Callable[[list[int], list[int] | None], None]] = []

    def subscribe(self, account_id: int, token_id: int | None = None, limit: int | None = None) -> Subscription:
        """A new subscription; :class:`TooManySubscriptions` when the account holds ``limit`` already."""
        if limit is not None and len(self._subs.get(account_id, ())) >= limit:
            raise TooManySubscriptions(account_id)
        sub = Subscription(self, account_id, token_id)
        self._subs[account_id].add(sub)
        return sub

    def count(self, account_id: int) -> int:
        """Live subscriptions of the account in this process."""
        return len(self._subs.get(account_id, ()))

    def on_session_ended(self, listener: Callable[[list[int], list[int] | None], None]) -> None:
        """Call ``listener(account_ids, token_ids)`` on every ``session.ended`` event, from any process."""
        self._control_listeners.append(listener)

    def _unsubscribe(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.account_id)
        if subs:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.account_id]

    def _deliver(self, account_ids: list[int], payload: dict[str, Any]) -> None:
        kind = payload.get("type")
        if kind == SESSION_ENDED:
            self._end_sessions(account_ids, payload.get("token_ids"), str(payload.get("reason") or ""),
                               payload.get("socket_ids"))
            return
        change = kind in (MAILBOX_REVOKED, MAILBOX_GRANTED) and isinstance(payload.get("mailbox_id"), int)
        for account_id in account_ids:
            for sub in list(self._subs.get(account_id, ())):
                if change:
                    sub.access_changed(kind == MAILBOX_GRANTED, payload["mailbox_id"])
                sub.offer(payload)

    def _end_sessions(self, account_ids: list[int], token_ids: list[int] | None, reason: str,
                      socket_ids: list[int] | None = None) -> None:
        if socket_ids is not None:
            # One live socket closed from the sessions page: its session goes on.
            wanted_sockets = set(socket_ids)
            for account_id in account_ids:
                for sub in list(self._subs.get(account_id, ())):
                    if sub.socket_id in wanted_sockets:
                        sub.end(reason)
            return
        wanted = set(token_ids) if token_ids is not None else None
        for account_id in account_ids:
            for sub in list(self._subs.get(account_id, ())):
                if wanted is None or sub.token_id in wanted:
                    sub.end(reason)
        for listener in self._control_listeners:
            try:
                listener(account_ids, token_ids)
            except Exception:
                log.exception("session.ended listener failed")

    async def publish(self, events: list[Event]) -> None:
        for event in events:
            self._deliver(event.account_ids, event.payload())

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


# Commands of one process in flight on Redis at once; more wait (up to REDIS_WAIT seconds) for one
# to come back. redis-py's default pool instead fails at once past 100 (MaxConnectionsError): a
# burst of sockets reconnecting to a process after another one died broke their presence beats.
REDIS_CONNECTIONS = 64
REDIS_WAIT = 10.0


def redis_client(url: str) -> Any:
    """A Redis client of this process whose commands queue for a connection instead of failing."""
    import redis.asyncio as redis

    pool = redis.BlockingConnectionPool.from_url(url, max_connections=REDIS_CONNECTIONS, timeout=REDIS_WAIT)
    return redis.Redis(connection_pool=pool)


def channel_for(url: str) -> str:
    """The pub/sub channel of the deployment using the Redis database of ``url``. Pub/sub ignores
    database numbers: without the number in the name, two deployments (or a deployment and a
    test run) sharing one Redis server on different databases would read each other's events,
    and account ids repeat across databases — message subjects would reach strangers' sockets."""
    from redis.connection import parse_url

    return f"{CHANNEL}:{int(parse_url(url).get('db') or 0)}"


class RedisEventBus(EventBus):
    """Bus spanning processes through one Redis pub/sub channel (one per Redis database)."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self._redis = redis_client(url)
        self.channel = channel_for(url)
        self._task: asyncio.Task | None = None
        self._ready = asyncio.Event()
        self.origin = f"{os.getpid()}-{id(self)}"

    async def publish(self, events: list[Event]) -> None:
        for event in events:
            if event.type == SESSION_ENDED:
                # Here at once (ending twice is harmless when it comes back from Redis): the
                # caller's next request must not find the session alive in this process.
                self._deliver(event.account_ids, event.payload())
            message = json.dumps({"accounts": event.account_ids, "payload": event.payload()})
            try:
                await self._redis.publish(self.channel, message)
            except Exception:
                # Redis down: local sessions still get the event; remote ones resync on reconnect
                # (and remote sockets find an ended session at their next token check).
                log.exception("redis publish failed; delivering locally only")
                if event.type != SESSION_ENDED:
                    self._deliver(event.account_ids, event.payload())

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen())
        await asyncio.wait_for(self._ready.wait(), timeout=10)

    async def _listen(self) -> None:
        while True:
            try:
                pubsub = self._redis.pubsub()
                await pubsub.subscribe(self.channel)
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
