"""SMTP submission for mail clients and practice software (RFC 6409): STARTTLS on
``submission_port``, implicit TLS on ``submissions_port``; AUTH PLAIN/LOGIN only inside TLS, with
the account's username and password (throttled like the web login); then the message goes
through ``services.submission`` — the web page's send path."""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session
from fastapi import FastAPI

from monsisra.config import Settings
from monsisra.gateway.draining import DrainingSMTP, Sessions
from monsisra.gateway.smtp import LimitedSMTP, ascii_reply
from monsisra.gateway.tls import user_context
from monsisra.services import mail_access, submission
from monsisra.services.core import Actor, Core
from monsisra.services.errors import AuthFailed, Forbidden, ServiceError, Throttled

log = logging.getLogger("monsisra.submission")


class Handler:
    def __init__(self, core: Core) -> None:
        self.core = core

    async def handle_AUTH(self, server: SMTP, session: Session, envelope: Envelope, args: list[str]) -> str | None:
        mechanism = args[0].upper()
        if mechanism == "PLAIN":
            blob = await _initial(server, args)
            if blob is None:
                return None
            try:
                _, login, password = blob.split(b"\0")
            except ValueError:
                return "501 5.5.2 reponse PLAIN mal formee"
        elif mechanism == "LOGIN":
            login = await _initial(server, args, "Username:")
            if login is None:
                return None
            password = await server.challenge_auth("Password:")
            if not isinstance(password, bytes):
                return None
        else:
            return "504 5.5.4 mecanisme non pris en charge (PLAIN ou LOGIN)"
        client = _client(session)
        try:
            actor = await mail_access.login(self.core, login.decode("utf-8", "replace"),
                                            password.decode("utf-8", "replace"), client, "submission")
        except Throttled as exc:
            return ascii_reply(f"454 4.7.0 {exc.detail}")
        except AuthFailed as exc:
            return ascii_reply("535 5.7.8 " + exc.detail.replace("›", ">"))
        session.authenticated = True
        session.auth_data = actor
        return "235 2.7.0 authentification reussie"

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          mail_options: list[str]) -> str:
        actor = session.auth_data
        assert isinstance(actor, Actor)
        if address:
            try:
                await submission.sending_mailbox(self.core, actor, address)
            except Forbidden as exc:
                return ascii_reply(f"550 5.7.1 {exc.detail}")
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        actor = session.auth_data
        assert isinstance(actor, Actor)
        raw = envelope.original_content or envelope.content or b""
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        try:
            sent = await submission.submit(self.core, actor, envelope.mail_from or "", list(envelope.rcpt_tos), raw)
        except Forbidden as exc:
            return ascii_reply(f"550 5.7.1 {exc.detail}")
        except ServiceError as exc:
            return ascii_reply(f"554 5.6.0 {exc.detail}")
        except Exception:
            log.exception("submission from %s failed", actor.username)
            return "451 4.3.0 erreur temporaire du serveur : reessayez plus tard"
        return f"250 2.0.0 message {sent['id']} envoye"


async def _initial(server: SMTP, args: list[str], prompt: str = "") -> bytes | None:
    if len(args) > 1:
        try:
            return base64.b64decode(args[1], validate=True) if args[1] != "=" else b""
        except (binascii.Error, ValueError):
            await server.push("501 5.5.2 base64 invalide")
            return None
    blob = await server.challenge_auth(prompt)
    return blob if isinstance(blob, bytes) else None


def _client(session: Session) -> str:
    peer = session.peer
    return str(peer[0]) if isinstance(peer, tuple) and peer else str(peer or "-")


class SubmissionSMTP(DrainingSMTP):
    """aiosmtpd with authentication required; on the implicit-TLS port the connection is
    TLS from the first byte, which counts as TLS for AUTH."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self._original_transport is None and self.transport is None
        super().connection_made(transport)
        if first and transport.get_extra_info("ssl_object") is not None:
            self._tls_protocol = transport  # type: ignore[assignment]

    # DATA read in large chunks, as the gateway does (a 100 KB letter is ~1,800 lines).
    smtp_DATA = LimitedSMTP.smtp_DATA

    async def smtp_AUTH(self, arg: str) -> None:
        if self._auth_require_tls and not self._tls_protocol:
            await self.push("538 5.7.11 authentification refusee sans TLS : utilisez STARTTLS")
            return
        await super().smtp_AUTH(arg)


def install(app: FastAPI, settings: Settings) -> None:
    if settings.submission_port or settings.submissions_port:
        app.state.startup_hooks.append(_hook)


async def start(core: Core, settings: Settings) -> tuple[list[asyncio.AbstractServer], Sessions]:
    context = user_context(settings)
    handler = Handler(core)
    loop = asyncio.get_running_loop()
    sessions = Sessions()

    def factory(implicit: bool):
        def make() -> SubmissionSMTP:
            return SubmissionSMTP(handler, sessions=sessions, data_size_limit=settings.max_message_bytes,
                                  hostname=settings.domain, ident="MonSisra soumission",
                                  tls_context=None if implicit else context,
                                  require_starttls=not implicit, auth_required=True, auth_require_tls=True,
                                  authenticator=lambda *a: AuthResult(success=False), timeout=300, loop=loop)
        return make

    servers = []
    if settings.submission_port:
        servers.append(await loop.create_server(factory(False), host=settings.imap_host,
                                                port=settings.submission_port, reuse_address=True,
                                                reuse_port=True))
    if settings.submissions_port:
        servers.append(await loop.create_server(factory(True), host=settings.imap_host,
                                                port=settings.submissions_port, reuse_address=True,
                                                reuse_port=True, ssl=context, ssl_handshake_timeout=30))
    log.info("submission on %s:%s (STARTTLS) and %s (TLS)", settings.imap_host, settings.submission_port,
             settings.submissions_port)
    return servers, sessions


async def _hook(app: FastAPI, core: Core):
    servers, sessions = await start(core, core.settings)

    async def stop() -> None:
        await sessions.drain(servers)  # a message being submitted gets its reply first

    return stop

