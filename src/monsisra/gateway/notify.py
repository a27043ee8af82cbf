"""Notification e-mail (password reset links…) through the configured relay.

Not MSSanté mail: it leaves by ``MONSISRA_NOTIFY_RELAY`` (else ``MONSISRA_SMTP_RELAY``) to the
person's ordinary address, with STARTTLS whenever the relay offers it (certificate verified
against the system's and ``MONSISRA_TLS_TRUST``'s anchors). Set on the core at start
(``gateway/install.py``): the services that send one only know ``core.mailer``.
"""

from __future__ import annotations

import ssl

import aiosmtplib

from monsisra.config import Settings


class NoRelay(RuntimeError):
    """No relay is configured for notification e-mail."""


def relay_of(settings: Settings) -> tuple[str, int]:
    relay = settings.notify_relay or settings.smtp_relay
    if not relay:
        raise NoRelay("aucun relais de courriel configuré (MONSISRA_NOTIFY_RELAY ou MONSISRA_SMTP_RELAY)")
    host, _, port = relay.rpartition(":")
    return (host or relay), int(port) if port.isdigit() else 25


def mailer_for(settings: Settings):
    """``await mailer(mail_from, rcpts, data)``: one message to the relay; raises on failure."""

    async def send(mail_from: str, rcpts: list[str], data: bytes) -> None:
        host, port = relay_of(settings)
        context = ssl.create_default_context()
        if settings.tls_trust:
            context.load_verify_locations(cafile=str(settings.tls_trust))
        await aiosmtplib.send(data, sender=mail_from, recipients=rcpts, hostname=host, port=port,
                              local_hostname=settings.domain, start_tls=None, tls_context=context,
                              timeout=settings.outbound_timeout_seconds)

    return send
