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


def sms_sender_for(settings: Settings):
    """``await send(phone, text)``: one JSON POST ``{to, text}`` to the SMS gateway (bearer token)."""
    import httpx

    async def send(phone: str, text: str) -> None:
        if not settings.sms_gateway_url:
            raise NoRelay("aucune passerelle SMS configurée (MONSISRA_SMS_GATEWAY_URL)")
        headers = {"Authorization": f"Bearer {settings.sms_gateway_token}"} if settings.sms_gateway_token else {}
        async with httpx.AsyncClient(timeout=settings.outbound_timeout_seconds, verify=_verify(settings)) as client:
            r = await client.post(settings.sms_gateway_url, json={"to": phone, "text": text}, headers=headers)
        r.raise_for_status()

    return send


def push_sender_for(settings: Settings):
    """``await send(subscription, payload) -> HTTP status``: one Web Push message (RFC 8030),
    encrypted for the subscription (RFC 8291, aes128gcm) and signed with our VAPID key."""
    import asyncio

    from monsisra.services.notifications import vapid_key_path

    key = str(vapid_key_path(settings))
    subject = settings.vapid_subject or f"mailto:{settings.notify_from or 'ne-pas-repondre@' + settings.domain}"

    def post(subscription: dict, payload: bytes) -> int:
        from pywebpush import WebPushException, webpush

        info = {"endpoint": subscription["endpoint"], "keys": subscription["keys"]}
        try:
            response = webpush(info, data=payload.decode(), vapid_private_key=key, vapid_claims={"sub": subject},
                               ttl=24 * 3600, timeout=settings.outbound_timeout_seconds)
        except WebPushException as exc:
            if exc.response is not None:
                return exc.response.status_code
            raise
        return getattr(response, "status_code", 201)

    async def send(subscription: dict, payload: bytes) -> int:
        return await asyncio.to_thread(post, subscription, payload)

    return send


def _verify(settings: Settings):
    context = ssl.create_default_context()
    if settings.tls_trust:
        context.load_verify_locations(cafile=str(settings.tls_trust))
    return context
