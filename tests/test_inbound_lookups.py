"""The lookups repeated on every SMTP command (mailboxes, trust) are cached a few seconds, and a
lookup in flight is shared: when the cache entry expires, the connections that miss it together
make one query, not one each (``services.inbound._Ttl.fetch``). Same answers as without the cache."""

from __future__ import annotations

import asyncio

import sqlalchemy as sa

from monsisra.services import inbound, mailboxes, trust
from monsisra.store.models import Mailbox


def _spy(monkeypatch, module, name: str) -> list:
    calls: list = []
    real = getattr(module, name)

    async def counting(*args, **kwargs):
        calls.append(args[1:])
        await asyncio.sleep(0.05)  # still in flight when the other callers ask
        return await real(*args, **kwargs)

    monkeypatch.setattr(module, name, counting)
    return calls


def test_concurrent_recipient_checks_share_one_lookup(server, monkeypatch):
    calls = _spy(monkeypatch, mailboxes, "by_address")
    domain = server.settings.domain

    async def burst(core):
        async with core.read() as s:
            address = await s.scalar(sa.select(Mailbox.address).where(Mailbox.active.is_(True),
                                                                       Mailbox.address.like(f"%@{domain}"))
                                     .order_by(Mailbox.id).limit(1))
        inbound._mailbox_cache.data.clear()
        unknown = f"personne.inconnue@{domain}"
        replies = await asyncio.gather(*(inbound.check_recipient(core, address) for _ in range(10)),
                                       *(inbound.check_recipient(core, unknown) for _ in range(3)))
        first = list(calls)
        again = await inbound.check_recipient(core, address)  # cached now
        boxes = await inbound._mailbox_ids(core, [unknown, address])
        return address, replies, first, again, boxes, list(calls)

    address, replies, first, again, boxes, after = server.call(burst, server.core)
    assert replies[:10] == [None] * 10
    assert all(r.startswith("550 5.1.1") for r in replies[10:])
    assert len(first) == 2  # one query for the known address, one for the unknown one
    assert again is None
    assert list(boxes) == [address]
    # The unknown address is not cached (a mailbox created now works at once): asked again.
    assert len(after) == 3 and after[-1] == ([f"personne.inconnue@{server.settings.domain}"],)


def test_concurrent_sender_checks_share_one_lookup(server, monkeypatch):
    calls = _spy(monkeypatch, trust, "operator_of")

    async def burst(core):
        listed = "cache-partage.mssante.fr"
        await trust.add(core, [listed])  # a new trust generation: nothing cached for it
        calls.clear()
        replies = await asyncio.gather(*(inbound.check_sender(core, f"secretariat@{listed}") for _ in range(10)),
                                       *(inbound.check_sender(core, "x@hors-espace.example") for _ in range(4)))
        return replies, list(calls)

    replies, calls_made = server.call(burst, server.core)
    assert replies[:10] == [None] * 10
    assert all("hors de l'espace de confiance" in r for r in replies[10:])
    assert len(calls_made) == 2


def test_a_failed_lookup_fails_its_waiters_and_is_not_kept(server, monkeypatch):
    real = mailboxes.by_address
    failures = [RuntimeError("base indisponible")]

    async def flaky(session, addresses):
        await asyncio.sleep(0.05)
        if failures:
            raise failures.pop()
        return await real(session, addresses)

    monkeypatch.setattr(mailboxes, "by_address", flaky)

    async def run(core):
        inbound._mailbox_cache.data.clear()
        address = f"personne.inconnue@{core.settings.domain}"
        outcomes = await asyncio.gather(*(inbound.check_recipient(core, address) for _ in range(3)),
                                        return_exceptions=True)
        retry = await inbound.check_recipient(core, address)
        return outcomes, retry, dict(inbound._mailbox_cache.pending)

    outcomes, retry, pending = server.call(run, server.core)
    assert all(isinstance(o, RuntimeError) for o in outcomes)
    assert retry.startswith("550 5.1.1")
    assert not pending
