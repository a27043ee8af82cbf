"""The inbound SMTP server (aiosmtpd) run inside ``monsisra serve``'s event loop.

The handler stays thin: every rule (trust, recipients, parsing, storage) lives in
``services.inbound``. Per-client limits (connections, message rate) are enforced here.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import time
import unicodedata
from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Any, AnyStr

from aiosmtpd.proxy_protocol import ProxyData
from aiosmtpd.smtp import SMTP, Envelope, Session

from monsisra.config import Settings
from monsisra.gateway import tls
from monsisra.gateway.draining import DrainingSMTP, Sessions
from monsisra.services import inbound
from monsisra.services.core import Core

log = logging.getLogger(__name__)
# aiosmtpd logs every command line at INFO (4–6 lines per message, a measurable share of the
# CPU under load); ``services.inbound`` logs one line per accepted message instead.
logging.getLogger("mail.log").setLevel(logging.WARNING)


def ascii_reply(text: str) -> str:
    """SMTP replies are ASCII: keep the French wording, drop the accents (« é » → « e »)."""
    flat = unicodedata.normalize("NFKD", text).replace("«", '"').replace("»", '"').replace("’", "'")
    return flat.encode("ascii", "ignore").decode()


RATE_KEY = "monsisra:smtp-rate"
# KEYS[1] += ARGV[1]; a new window (the key just made) expires after ARGV[2] seconds.
_ADD = ("local total = redis.call('INCRBY', KEYS[1], ARGV[1]) "
        "if total == tonumber(ARGV[1]) then redis.call('EXPIRE', KEYS[1], ARGV[2]) end return total")


class Limits:
    """Connections and messages per minute, per client address.

    Connections are counted by each process (they are its sockets). Messages per minute are counted
    in Redis when it is configured, so that several processes behind a balancer share one budget
    per client (a fixed one-minute window: up to twice the rate across a window's edge); without
    Redis, or while it is unreachable, each process counts on its own (a sliding window).

    The MAIL commands of a process that wait for Redis together share one trip: each client's
    messages are added at once (``INCRBY``, and the window's expiry set when it starts, in one
    script), and each message gets its own place in the count, as one ``INCR`` each would give it:
    the budget stays exact across processes. A trip cost the server ~0.4–0.8 ms of CPU per MAIL
    (redis-py's pipeline of ``INCR`` and ``EXPIRE``)."""

    def __init__(self, max_connections: int, max_per_minute: int, redis_url: str | None = None) -> None:
        self.max_connections = max_connections
        self.max_per_minute = max_per_minute
        self.connections: dict[str, int] = defaultdict(int)
        self.recent: dict[str, deque[float]] = defaultdict(deque)
        self._redis: Any = None
        self._waiting: dict[str, list[asyncio.Future[int]]] = {}
        self._trip: asyncio.Task | None = None
        if redis_url:
            from monsisra.events.bus import redis_client

            self._redis = redis_client(redis_url)
            self._add = self._redis.register_script(_ADD)

    async def allow(self, client: str) -> bool:
        """One more message from ``client``: within its budget for this minute?"""
        if self._redis is not None:
            try:
                return await self._count(client) <= self.max_per_minute
            except Exception as exc:
                log.warning("SMTP message rate counted in this process only (Redis: %s)", exc)
        return self.allow_message(client)

    async def _count(self, client: str) -> int:
        """This message's place in ``client``'s count of the minute (shared through Redis)."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(client, []).append(future)
        if self._trip is None or self._trip.done():
            self._trip = asyncio.get_running_loop().create_task(self._trips())
        return await future

    async def _trips(self) -> None:
        """Count the waiting messages, one trip at a time, until none waits."""
        while self._waiting:
            waiting, self._waiting = self._waiting, {}
            minute = int(time.time() // 60)
            clients = list(waiting)
            try:
                totals = await asyncio.gather(*(
                    self._add(keys=[f"{RATE_KEY}:{c}:{minute}"], args=[len(waiting[c]), 120]) for c in clients))
            except Exception as exc:
                for futures in waiting.values():
                    for f in futures:
                        if not f.done():
                            f.set_exception(exc)
                continue
            for c, total in zip(clients, totals, strict=True):
                first = int(total) - len(waiting[c]) + 1
                for place, f in enumerate(waiting[c], first):
                    if not f.done():
                        f.set_result(place)

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()

    def allow_message(self, client: str) -> bool:
        now = time.monotonic()
        window = self.recent[client]
        while window and now - window[0] > 60:
            window.popleft()
        if len(window) >= self.max_per_minute:
            return False
        window.append(now)
        return True


class Handler:
    def __init__(self, core: Core, limits: Limits) -> None:
        self.core = core
        self.limits = limits

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          mail_options: list[str]) -> str:
        client = _client(session)
        if not await self.limits.allow(client):
            return "451 4.7.1 trop de messages de ce client : reessayez dans une minute"
        refusal = await inbound.check_sender(self.core, "" if address == NULL_SENDER else address,
                                             _peer_names(session))
        if refusal:
            return ascii_reply(refusal)
        envelope.mail_from = address  # "<>" stands for the null sender until DATA
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        if len(envelope.rcpt_tos) >= self.core.settings.smtp_max_recipients:
            return "452 4.5.3 trop de destinataires pour ce message"
        refusal = await inbound.check_recipient(self.core, address)
        if refusal:
            return ascii_reply(refusal)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or envelope.content or b""
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        mail_from = envelope.mail_from or ""
        try:
            return ascii_reply(await inbound.receive(self.core, inbound.Envelope(
                peer=_client(session), mail_from="" if mail_from == NULL_SENDER else mail_from,
                rcpt_tos=list(envelope.rcpt_tos), raw=raw, peer_names=_peer_names(session))))
        except Exception:
            log.exception("inbound message from %s failed", _client(session))
            return "451 4.3.0 erreur temporaire du serveur : reessayez plus tard"

    async def handle_PROXY(self, server: SMTP, session: Session, envelope: Envelope, proxy_data: ProxyData) -> bool:
        """With ``smtp_proxy_protocol``: believe the header only from a trusted balancer, and count
        the connection against the client it names (the limits of ``connection_made`` are skipped)."""
        peer = session.peer[0] if isinstance(session.peer, tuple) and session.peer else None
        if not proxied_by_trusted(peer, self.core.settings.trusted_proxy_list):
            log.warning("PROXY header from %s, which is not in MONSISRA_TRUSTED_PROXIES: connection closed", peer)
            return False
        if proxy_data.src_addr is None:  # "PROXY UNKNOWN" / LOCAL: the balancer's own check
            return True
        assert isinstance(server, LimitedSMTP)
        return server.count_client(str(proxy_data.src_addr))

    async def handle_exception(self, error: Exception) -> str:
        log.error("SMTP session error: %r", error)
        return "421 4.3.0 erreur du serveur, fermeture de la connexion"


def proxied_by_trusted(peer: str | None, trusted: list[str]) -> bool:
    """Is ``peer`` one of the trusted proxies (addresses, networks, or ``*`` as for HTTP)?"""
    if peer is None:
        return False
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    for entry in trusted:
        if entry == "*":
            return True
        try:
            if address in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue  # a host name: meaningful to the HTTP middleware only
    return False


def _client(session: Session) -> str:
    proxied = session.proxy_data.src_addr if session.proxy_data is not None else None
    if proxied is not None:
        return str(proxied)
    peer = session.peer
    return str(peer[0]) if isinstance(peer, tuple) and peer else str(peer or "-")


NULL_SENDER = "<>"
# ``<local@domain>`` with a dot-atom local part and a plain domain, then the parameters: what
# MAIL FROM / RCPT TO carry in practice. The library's RFC 5322 grammar (~50 µs a line) reads
# every other form (quoted local parts, source routes, address literals, comments).
_PLAIN_PATH = re.compile(r"<((?:[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+\.)*[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
                         r"@(?:[A-Za-z0-9-]+\.)*[A-Za-z0-9-]+)>(?:[ \t]+(.*))?")


def _peer_names(session: Session) -> list[str] | None:
    """DNS names (else common name) of the client certificate, verified by the TLS layer against
    ``MONSISRA_TLS_TRUST``; None when the peer showed none."""
    extra = session.ssl if isinstance(session.ssl, dict) else None
    cert = extra.get("peercert") if extra else None
    if not cert:
        return None
    names = [v for k, v in cert.get("subjectAltName", ()) if k == "DNS"]
    if not names:
        names = [v for rdn in cert.get("subject", ()) for k, v in rdn if k == "commonName"]
    return [n.lower() for n in names]


def lines_within(content: bytes, longest: int) -> bool:
    """Whether no line of ``content`` (split on CRLF) is longer than ``longest`` bytes.

    Without splitting the message into its ~1,800 lines (a 100 KB letter): a line longer than
    ``longest`` holds a whole window of ``longest // 2 + 1`` bytes starting at a multiple of
    ``longest // 2``, and holds no CRLF; so when every such window holds one, no line is too
    long. Only when a window holds none (lines over half the limit) are the lines measured."""
    step = max(longest // 2, 1)
    find = content.find
    for start in range(0, len(content) - step, step):
        if find(b"\r\n", start, start + step + 1) < 0:
            return max(map(len, content.split(b"\r\n"))) <= longest
    return True


class LimitedSMTP(DrainingSMTP):
    """aiosmtpd's server with a per-client connection cap, the null sender ``<>`` accepted in
    MAIL (reports travel with it) and no AUTH: this port is for other operators' servers, which
    prove who they are by certificate; users submit on the submission ports."""

    def __init__(self, handler: Handler, limits: Limits, **kwargs) -> None:
        super().__init__(handler, **kwargs)
        self._limits = limits
        self._counted: str | None = None
        self._auth_methods = {}

    async def push(self, status: AnyStr) -> None:
        if isinstance(status, str) and status.startswith("250-AUTH"):
            return  # never advertised here, before or after STARTTLS
        await super().push(status)

    async def smtp_AUTH(self, arg: str) -> None:
        await self.push("502 5.5.1 AUTH n'est pas propose sur ce port (passerelle entre operateurs)")

    def _getaddr(self, arg: str):
        text = arg.lstrip()
        if text.startswith(NULL_SENDER):
            return NULL_SENDER, text[len(NULL_SENDER):].strip()
        plain = _PLAIN_PATH.fullmatch(text)
        if plain is not None:
            address = plain.group(1)
            if self.local_part_limit and len(address.rpartition("@")[0]) > self.local_part_limit:
                return None, None
            return address, plain.group(2) or ""
        return super()._getaddr(arg)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self._original_transport is None and self.transport is None
        super().connection_made(transport)
        if not first or self._proxy_timeout is not None:
            return  # the same connection after STARTTLS, or counted once its PROXY header names the client
        peer = transport.get_extra_info("peername")
        self.count_client(str(peer[0]) if peer else "-")

    def count_client(self, client: str) -> bool:
        """Count this connection against ``client``; refused (421, closed) over the limit."""
        assert self.transport is not None
        if self._limits.connections[client] >= self._limits.max_connections:
            self.transport.write(b"421 4.7.0 trop de connexions simultanees depuis votre adresse\r\n")  # type: ignore[attr-defined]
            self.transport.close()
            return False
        self._limits.connections[client] += 1
        self._counted = client
        return True

    async def smtp_DATA(self, arg: str) -> None:
        """DATA read in large chunks instead of aiosmtpd's line-by-line loop (the hot path of
        a 100 KB letter: ~1,800 lines); same replies and limits."""
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        limit = self.data_size_limit
        buf = bytearray(b"\r\n")  # so that an empty message's ".\r\n" is found like the others
        too_much = False
        scanned = 0
        while True:
            chunk = await self._reader.read(1 << 17)
            if not chunk:
                return  # connection closed mid-DATA
            self._reset_timeout()
            buf += chunk
            end = buf.find(b"\r\n.\r\n", max(scanned - 4, 0))
            if end >= 0:
                break
            scanned = len(buf)
            if limit and len(buf) > limit + 2:
                too_much = True
                del buf[: len(buf) - 8]  # keep only what may hold the terminator
                scanned = len(buf)
        with memoryview(buf) as view:  # one copy of the message (a bytearray slice is a copy too)
            leftover = bytes(view[end + 5:])
            content = bytes(view[2:end + 2])
        if leftover:  # a pipelining client's next command: give it back to the command reader
            self._reader._buffer[:0] = leftover  # type: ignore[attr-defined]
        del buf
        if too_much or (limit and len(content) > limit):
            self._set_post_data_state()
            await self.push("552 Error: Too much mail data")
            return
        if not lines_within(content, self.line_length_limit - 2):
            self._set_post_data_state()
            await self.push("500 Line too long (see RFC5321 4.5.3.1.6)")
            return
        if content[:1] == b"." or b"\r\n." in content:  # RFC 5321 §4.5.2 transparency
            content = b"\r\n".join(line[1:] if line[:1] == b"." else line for line in content.split(b"\r\n"))
        self.envelope.content = content
        self.envelope.original_content = content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push(status)

    def connection_lost(self, error: Exception | None) -> None:
        if self._counted is not None:
            self._limits.connections[self._counted] -= 1
            if self._limits.connections[self._counted] <= 0:
                del self._limits.connections[self._counted]
            self._counted = None
        super().connection_lost(error)


@dataclass
class Listening:
    server: asyncio.AbstractServer
    limits: Limits
    sessions: Sessions


async def start_server(core: Core, settings: Settings) -> Listening:
    """Listen on ``smtp_host:smtp_port`` in the running loop."""
    context = tls.server_context(settings)
    limits = Limits(settings.smtp_max_connections_per_client, settings.smtp_max_messages_per_minute,
                    settings.redis_url)
    handler = Handler(core, limits)
    sessions = Sessions()
    loop = asyncio.get_running_loop()

    def factory() -> LimitedSMTP:
        return LimitedSMTP(handler, limits, sessions=sessions, data_size_limit=settings.max_message_bytes,
                           hostname=settings.domain, ident="MonSisra MSSante ESMTP", tls_context=context,
                           require_starttls=settings.smtp_require_tls, timeout=120, loop=loop,
                           proxy_protocol_timeout=10 if settings.smtp_proxy_protocol else None)

    server = await loop.create_server(factory, host=settings.smtp_host, port=settings.smtp_port,
                                      reuse_address=True, reuse_port=settings.reuse_port)
    log.info("SMTP gateway on %s:%s", settings.smtp_host, settings.smtp_port)
    return Listening(server, limits, sessions)
