"""STARTTLS through the event loop's own TLS (``loop.start_tls``) instead of aiosmtpd's hand-made
``asyncio.sslproto.SSLProtocol``.

aiosmtpd 1.4 wraps the connection in asyncio's pure-Python TLS layer by hand, whatever the loop:
on uvloop every TLS record of a 137 KB message would still go through Python code.
``loop.start_tls`` gives uvloop's compiled TLS layer there, and asyncio's own on its default loop
(which ``monsisra serve`` runs today: uvloop broke its HTTPS listener, see bench/results/smtp.md).
The behaviour of aiosmtpd's ``smtp_STARTTLS`` is kept: the same replies, RFC 3207
§4.2 (the session and envelope start again, plaintext pipelined after the command is discarded,
never read as a command inside TLS), ``session.ssl`` holding the TLS facts (``peercert``,
``cipher``, ``ssl_object``…), the ``STARTTLS`` handler hook, ``_original_transport`` (closed with
the connection) and a failed handshake closing the connection."""

from __future__ import annotations

import asyncio
from typing import Any

from aiosmtpd.smtp import SMTP, TLSSetupException, syntax

# What aiosmtpd's ``session.ssl`` held (``SSLProtocol._extra``), read from the TLS transport.
TLS_FACTS = ("sslcontext", "peercert", "cipher", "compression", "ssl_object")


class _Handshake(asyncio.Protocol):
    """The TLS layer's protocol while the handshake ends: what the client sends right after its
    last handshake flight (TLS 1.3: its EHLO with its Finished), its EOF or the end of the
    connection are kept until the session takes the new transport, then handed to it."""

    def __init__(self) -> None:
        self.owner: NativeStartTLS | None = None
        self.early: list[bytes] = []
        self.eof = False
        self.lost: tuple[bool, Exception | None] = (False, None)

    def data_received(self, data: bytes) -> None:
        if self.owner is not None:
            self.owner.data_received(data)
        else:
            self.early.append(data)

    def eof_received(self) -> bool | None:
        if self.owner is not None:
            return self.owner.eof_received()
        self.eof = True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.owner is not None:
            self.owner.connection_lost(exc)
        else:
            self.lost = (True, exc)


class NativeStartTLS(SMTP):
    """aiosmtpd's server whose STARTTLS runs on the loop's TLS layer (``loop.start_tls``)."""

    @syntax("STARTTLS", when="tls_context")
    async def smtp_STARTTLS(self, arg: str) -> None:
        if arg:
            await self.push("501 Syntax: STARTTLS")
            return
        if not self.tls_context:
            await self.push("454 TLS not available")
            return
        await self.push("220 Ready to start TLS")
        raw = self.transport
        assert raw is not None
        # RFC 3207 §4.2 / §5: whatever the client sent after STARTTLS in clear is dropped, before
        # the handshake (nothing yields between here and the TLS layer taking the transport).
        reader: Any = self._reader
        reader._buffer.clear()
        if reader._paused:  # it had paused the raw transport; start_tls resumes that one itself
            reader._paused = False
        waiting = _Handshake()
        self._original_transport = raw
        try:
            tls = await self.loop.start_tls(raw, waiting, self.tls_context, server_side=True)  # type: ignore[arg-type]
        except asyncio.CancelledError:
            raise
        except Exception as error:
            raise TLSSetupException() from error
        if tls is None:  # the connection ended during the handshake
            raise TLSSetupException()
        self._took_tls(tls, waiting)

    def _took_tls(self, tls: asyncio.Transport, waiting: _Handshake) -> None:
        """The session continues on ``tls``: as aiosmtpd's ``connection_made`` after STARTTLS."""
        self._set_rset_state()
        proxy_data = self.session.proxy_data if self.session is not None else None
        self.session = self._create_session()
        self.session.peer = tls.get_extra_info("peername")
        # The balancer's PROXY header is not the client's word: it still names the client.
        self.session.proxy_data = proxy_data
        self._reset_timeout()
        self._tls_protocol = tls  # type: ignore[assignment]  # truthy: "TLS is on" for aiosmtpd
        self.transport = tls
        self._transport = tls  # StreamReaderProtocol's own reference (as StreamWriter.start_tls does)
        self._over_ssl = True
        self._reader._transport = tls  # type: ignore[attr-defined]
        self._writer._transport = tls  # type: ignore[attr-defined]
        self.session.ssl = {key: tls.get_extra_info(key) for key in TLS_FACTS}
        hook = self._handle_hooks.get("STARTTLS")
        self._tls_handshake_okay = True if hook is None else hook(self, self.session, self.envelope)
        tls.set_protocol(self)
        waiting.owner = self
        for chunk in waiting.early:
            self.data_received(chunk)
        waiting.early.clear()
        if waiting.eof:
            self.eof_received()
        lost, exc = waiting.lost
        if lost:
            self.connection_lost(exc)
