"""Stopping an SMTP listener without cutting what is in progress.

``monsisra serve`` asked to stop (SIGTERM from systemd, a rolling restart behind a balancer)
stops accepting connections, then lets each open transaction finish: a message being sent gets
its reply (``250`` once stored, as always), then ``421`` and the connection is closed. A session
with no transaction in progress gets ``421`` at once (RFC 5321 §3.8: the other server retries
later, or elsewhere). Whatever is still open after ``DRAIN_SECONDS`` is closed: nothing
acknowledged is ever lost that way, the other side just retries."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, AnyStr

from monsisra.gateway.starttls import NativeStartTLS

log = logging.getLogger(__name__)

DRAIN_SECONDS = 20.0
GOODBYE = b"421 4.3.2 service en cours d'arret, reessayez plus tard\r\n"


class Sessions:
    """The open sessions of one or more listeners of the same kind."""

    def __init__(self) -> None:
        self.open: set[DrainingSMTP] = set()
        self.draining = False
        self._empty = asyncio.Event()
        self._empty.set()

    def add(self, session: DrainingSMTP) -> None:
        self.open.add(session)
        self._empty.clear()

    def discard(self, session: DrainingSMTP) -> None:
        self.open.discard(session)
        if not self.open:
            self._empty.set()

    async def drain(self, servers: list[asyncio.AbstractServer], seconds: float = DRAIN_SECONDS) -> int:
        """Stop listening, let transactions in progress end, say goodbye to the rest; the
        number of sessions that had to be cut at the deadline is returned (and logged)."""
        for server in servers:
            server.close()
        self.draining = True
        for session in list(self.open):
            if not session.in_transaction:
                session.goodbye()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._empty.wait(), seconds)
        cut = len(self.open)
        if cut:
            log.warning("%d SMTP session(s) still in a transaction after %.0f s: closed", cut, seconds)
        for session in list(self.open):
            session.goodbye()
        return cut


class DrainingSMTP(NativeStartTLS):
    """aiosmtpd's server (STARTTLS on the loop's TLS layer), registered in ``sessions`` while
    connected (the subclass passes ``sessions=``)."""

    def __init__(self, *args: Any, sessions: Sessions, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sessions = sessions
        self._in_data = False

    @property
    def in_transaction(self) -> bool:
        """From an accepted MAIL to the reply to its DATA."""
        return self._in_data or bool(self.envelope is not None and self.envelope.mail_from)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self._original_transport is None and self.transport is None
        super().connection_made(transport)
        if first:
            self._sessions.add(self)
            if self._sessions.draining:  # accepted just before the listener closed
                self.goodbye()

    def connection_lost(self, error: Exception | None) -> None:
        self._sessions.discard(self)
        super().connection_lost(error)

    async def push(self, status: AnyStr) -> None:
        await super().push(status)
        code = status[:3] if isinstance(status, str) else status[:3].decode("ascii", "replace")
        if code == "354":
            self._in_data = True
            return
        self._in_data = False  # any other reply ends DATA (aiosmtpd renewed the envelope before it)
        if self._sessions.draining and not self.in_transaction:
            self.goodbye()

    def goodbye(self) -> None:
        """421 and close (the transport may already be gone)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        with contextlib.suppress(Exception):
            transport.write(GOODBYE)  # type: ignore[attr-defined]
        transport.close()
