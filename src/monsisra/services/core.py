"""The shared context every service function receives: database, blobs, event bus, settings.

Services open transactions with :meth:`Core.write`; events they queue on the transaction
are published only once it has committed (DESIGN: events after commit).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from monsisra.config import Settings
from monsisra.events import Event, EventBus, make_bus
from monsisra.services.errors import ServiceError
from monsisra.store.blobs import BlobStore
from monsisra.store.db import Database
from monsisra.store.files import secure_data_dir


@dataclass
class Tx:
    """A write transaction and the events to publish after it commits."""

    session: AsyncSession
    events: list[Event] = field(default_factory=list)
    outbox: bool = False

    def emit(self, type_: str, account_ids, **data) -> None:
        ids = sorted(set(account_ids))
        if ids:
            self.events.append(Event(type_, ids, data))

    def outbox_changed(self) -> None:
        """Something became due for the outbound worker: wake it once this commits."""
        self.outbox = True


@dataclass(frozen=True)
class Actor:
    """Who is acting: an account, where from (for throttling and audit), and through which
    session (the ``tokens`` row it authenticated with, when it came with a token)."""

    account_id: int
    username: str
    is_admin: bool = False
    client: str | None = None
    token_id: int | None = None
    expires_at: datetime | None = None


class Core:
    def __init__(self, settings: Settings, bus: EventBus | None = None) -> None:
        self.settings = settings
        secure_data_dir(settings.data_dir, keys=[settings.tls_key] if settings.tls_key else [])
        self.db = Database(settings.database_url, busy_timeout=settings.database_busy_timeout)
        self.blobs = BlobStore(settings.blob_dir)
        self.bus = bus or make_bus(settings.redis_url)
        # Called after a commit that queued outbound mail (the delivery worker of this process
        # registers its wake-up here; other processes find the work at their next poll).
        self.outbox_listeners: list[Callable[[], None]] = []
        # Sends a notification e-mail (password reset links…) through the configured relay:
        # ``await mailer(mail_from, [rcpt], data)``; set by the gateway at start (a transport).
        self.mailer: Callable[[str, list[str], bytes], Awaitable[None]] | None = None
        # Other notification channels, set by the gateway at start (transports): "sms"
        # ``await send(phone, text)`` and "push" ``await send(subscription, payload) -> status``.
        self.senders: dict[str, Callable[..., Awaitable[Any]]] = {}

    @asynccontextmanager
    async def write(self) -> AsyncIterator[Tx]:
        try:
            async with self.db.write() as session:
                tx = Tx(session)
                yield tx
        except ServiceError as exc:
            await self._record_refusal(exc)
            raise
        # Reached only when the transaction committed.
        if tx.outbox:
            for listener in self.outbox_listeners:
                listener()
        if tx.events:
            await self.bus.publish(tx.events)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        try:
            async with self.db.read() as session:
                yield session
        except ServiceError as exc:
            await self._record_refusal(exc)
            raise

    async def _record_refusal(self, exc: ServiceError) -> None:
        """A refused access is audited although its transaction is rolled back (once)."""
        rows, exc.audit = exc.audit, []
        if rows:
            from monsisra.services import audit

            await audit.record_now(self, rows)

    async def start(self) -> None:
        # Partial uploads a crash left behind: gone at start, whether or not this process runs workers.
        await asyncio.to_thread(self.blobs.sweep_tmp)
        await self.bus.start()

    async def close(self) -> None:
        await self.bus.stop()
        await self.db.dispose()
