"""Presence (issue 13 item 4): online, away (no activity for 10 minutes) or offline.

An account is online while one of its live sockets beats (the page's pings) and it was active
(typing, clicking) in the last 10 minutes; away while a socket beats but nobody touched it;
offline otherwise — and always offline to others while « Apparaître absent » is on. The sockets
and the last activity are kept in Redis when configured (every process sees every socket), in
this process's memory otherwise. A change of state is told to the people who share a
conversation with the account (``presence`` event); pickers and cards ask for states.
"""

from __future__ import annotations

import time
import weakref
from typing import Any

import sqlalchemy as sa

from monsisra.domain.model import MailboxKind
from monsisra.services.core import Actor, Core
from monsisra.store.conversations import ConversationParticipant
from monsisra.store.models import Account, Mailbox, MailboxAccess

IDLE_SECONDS = 600  # away after 10 minutes without activity
SOCKET_TTL = 90  # a socket that has not beaten for this long is gone (the page pings every 30 s)
ONLINE, AWAY, OFFLINE = "online", "away", "offline"
LABELS = {ONLINE: "En ligne", AWAY: "Absent depuis un moment", OFFLINE: "Hors ligne"}
_PREFIX = "monsisra:presence"


class _Memory:
    def __init__(self) -> None:
        self.sockets: dict[int, dict[str, float]] = {}
        self.active: dict[int, float] = {}

    async def beat(self, account_id: int, socket: str, now: float, active: bool) -> None:
        self.sockets.setdefault(account_id, {})[socket] = now
        if active:
            self.active[account_id] = now

    async def gone(self, account_id: int, socket: str) -> None:
        self.sockets.get(account_id, {}).pop(socket, None)

    async def read(self, account_ids: list[int], now: float) -> dict[int, tuple[bool, float]]:
        return {a: (any(t > now - SOCKET_TTL for t in self.sockets.get(a, {}).values()), self.active.get(a, 0.0))
                for a in account_ids}


class _Redis:
    def __init__(self, url: str) -> None:
        from monsisra.events.bus import redis_client

        self.redis = redis_client(url)

    async def beat(self, account_id: int, socket: str, now: float, active: bool) -> None:
        pipe = self.redis.pipeline()
        key = f"{_PREFIX}:sockets:{account_id}"
        pipe.zadd(key, {socket: now})
        pipe.zremrangebyscore(key, 0, now - SOCKET_TTL)
        pipe.expire(key, SOCKET_TTL * 2)
        if active:
            pipe.set(f"{_PREFIX}:active:{account_id}", now, ex=IDLE_SECONDS * 2)
        await pipe.execute()

    async def gone(self, account_id: int, socket: str) -> None:
        await self.redis.zrem(f"{_PREFIX}:sockets:{account_id}", socket)

    async def read(self, account_ids: list[int], now: float) -> dict[int, tuple[bool, float]]:
        pipe = self.redis.pipeline()
        for a in account_ids:
            pipe.zcount(f"{_PREFIX}:sockets:{a}", now - SOCKET_TTL, "+inf")
            pipe.get(f"{_PREFIX}:active:{a}")
        values = await pipe.execute()
        return {a: (bool(values[2 * i]), float(values[2 * i + 1] or 0)) for i, a in enumerate(account_ids)}


_stores: weakref.WeakKeyDictionary[Core, Any] = weakref.WeakKeyDictionary()


def _store(core: Core):
    store = _stores.get(core)
    if store is None:
        store = _Redis(core.settings.redis_url) if core.settings.redis_url else _Memory()
        _stores[core] = store
    return store


def _state(alive: bool, active_at: float, now: float) -> str:
    if not alive:
        return OFFLINE
    return ONLINE if now - active_at < IDLE_SECONDS else AWAY


async def _raw(core: Core, account_ids: list[int]) -> dict[int, str]:
    now = time.time()
    found = await _store(core).read(account_ids, now) if account_ids else {}
    return {a: _state(alive, active, now) for a, (alive, active) in found.items()}


async def beat(core: Core, account_id: int, socket: str, *, active: bool = False) -> None:
    """A live socket of the account is there (``active``: the user did something); tells the
    account's contacts when this changes its state."""
    before = (await _raw(core, [account_id]))[account_id]
    await _store(core).beat(account_id, socket, time.time(), active)
    after = (await _raw(core, [account_id]))[account_id]
    if after != before:
        await announce(core, account_id)


async def gone(core: Core, account_id: int, socket: str) -> None:
    """A socket of the account closed."""
    await _store(core).gone(account_id, socket)
    if (await _raw(core, [account_id]))[account_id] == OFFLINE:
        await announce(core, account_id)


async def announce(core: Core, account_id: int) -> None:
    """Tell the people who share a conversation with the account its state as they see it."""
    async with core.read() as s:
        absent = await s.scalar(sa.select(Account.appear_absent).where(Account.id == account_id))
        mine = sa.select(ConversationParticipant.conversation_id).join(
            MailboxAccess, MailboxAccess.mailbox_id == ConversationParticipant.mailbox_id).where(
            MailboxAccess.account_id == account_id, ConversationParticipant.left_at.is_(None))
        contacts = set(await s.scalars(
            sa.select(MailboxAccess.account_id).join(
                ConversationParticipant, ConversationParticipant.mailbox_id == MailboxAccess.mailbox_id)
            .where(ConversationParticipant.conversation_id.in_(mine), ConversationParticipant.left_at.is_(None))))
        addresses = list(await s.scalars(sa.select(Mailbox.address).where(
            Mailbox.owner_account_id == account_id, Mailbox.kind == MailboxKind.PER)))
    contacts.discard(account_id)
    state = OFFLINE if absent else (await _raw(core, [account_id]))[account_id]
    if contacts:
        from monsisra.events import Event

        await core.bus.publish([Event("presence", sorted(contacts), {
            "account_id": account_id, "addresses": addresses, "state": state, "label": LABELS[state]})])


async def of_addresses(core: Core, actor: Actor, addresses: list[str]) -> list[dict[str, Any]]:
    """The state of the professionals behind these addresses (personal mailboxes); a service
    mailbox is online when one of its members is. « Apparaître absent » reads as offline, except
    to oneself."""
    wanted = [a.strip().lower() for a in addresses[:200] if a and a.strip()]
    async with core.read() as s:
        rows = (await s.execute(
            sa.select(Mailbox.address, Mailbox.kind, MailboxAccess.account_id, MailboxAccess.access,
                      Account.appear_absent)
            .join(MailboxAccess, MailboxAccess.mailbox_id == Mailbox.id)
            .join(Account, Account.id == MailboxAccess.account_id)
            .where(Mailbox.address.in_(wanted)))).all()
    people: dict[str, list[tuple[int, bool]]] = {}
    for address, kind, account_id, access, absent in rows:
        if (kind == MailboxKind.PER and access == "owner") or (kind != MailboxKind.PER and access == "member"):
            people.setdefault(address, []).append((account_id, bool(absent) and account_id != actor.account_id))
    states = await _raw(core, sorted({a for v in people.values() for a, _ in v}))
    order = {ONLINE: 0, AWAY: 1, OFFLINE: 2}
    out = []
    for address in wanted:
        seen = [OFFLINE if absent else states.get(a, OFFLINE) for a, absent in people.get(address, [])]
        state = min(seen, key=order.__getitem__) if seen else OFFLINE
        out.append({"address": address, "state": state, "label": LABELS[state]})
    return out
