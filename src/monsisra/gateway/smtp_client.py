"""The SMTP client of the outbox: STARTTLS with a verified peer to the relay or the domain's MX.

:func:`smtp_send` is the transport the delivery worker of ``services/outbound.py`` is given at
start (``gateway/install.py``); it answers an :class:`~monsisra.services.outbound.Outcome` per
recipient and never raises for a network, TLS or SMTP failure.
"""

from __future__ import annotations

import contextlib
import ssl

import aiosmtplib

from monsisra.config import Settings
from monsisra.gateway import tls
from monsisra.services.outbound import Outcome


async def routes(settings: Settings, domain: str) -> list[tuple[str, int]]:
    """Where to deliver mail for ``domain``: the configured relay, else its MX hosts."""
    if settings.smtp_relay:
        host, _, port = settings.smtp_relay.rpartition(":")
        return [(host or settings.smtp_relay, int(port) if port.isdigit() else 25)]
    import dns.asyncresolver
    import dns.exception
    import dns.resolver

    try:
        answer = await dns.asyncresolver.resolve(domain, "MX", lifetime=15)
    except dns.resolver.NXDOMAIN:
        raise _Permanent(f"domaine {domain} inexistant") from None
    except dns.resolver.NoAnswer:
        return [(domain, 25)]
    except dns.exception.DNSException as exc:
        raise _Temporary(f"résolution DNS de {domain} impossible ({type(exc).__name__})") from None
    hosts = sorted(answer, key=lambda r: r.preference)
    return [(str(r.exchange).rstrip("."), 25) for r in hosts if str(r.exchange) != "."] or [(domain, 25)]


class _Permanent(Exception):
    pass


class _Temporary(Exception):
    pass


async def smtp_send(settings: Settings, domain: str, mail_from: str, rcpts: list[str],
                    data: bytes) -> dict[str, Outcome]:
    """Deliver to the first reachable host of the domain; STARTTLS with a verified peer is required."""
    try:
        hosts = await routes(settings, domain)
    except _Permanent as exc:
        return {r: Outcome(None, str(exc), permanent=True) for r in rcpts}
    except _Temporary as exc:
        return {r: Outcome(None, str(exc)) for r in rcpts}
    last: dict[str, Outcome] = {}
    for host, port in hosts:
        last = await _send_to_host(settings, host, port, mail_from, rcpts, data)
        if any(o.code is not None for o in last.values()):
            return last  # the host answered: its verdict stands
    return last


async def _send_to_host(settings: Settings, host: str, port: int, mail_from: str, rcpts: list[str],
                        data: bytes) -> dict[str, Outcome]:
    where = f"{host}:{port}"
    ctx = tls.client_context(settings)
    client = aiosmtplib.SMTP(hostname=host, port=port, local_hostname=settings.domain, start_tls=False,
                             timeout=settings.outbound_timeout_seconds, tls_context=ctx)
    try:
        await client.connect()
        await client.ehlo()
        if not client.supports_extension("starttls"):
            return {r: Outcome(None, f"{where} ne propose pas STARTTLS (chiffrement exigé)", where) for r in rcpts}
        await client.starttls(tls_context=ctx, server_hostname=host)
        errors, response = await client.sendmail(mail_from, rcpts, data)
        out = {}
        for r in rcpts:
            err = errors.get(r)
            out[r] = Outcome(err.code, err.message, where) if err else Outcome(250, str(response), where)
        return out
    except aiosmtplib.SMTPRecipientsRefused as exc:
        refused = {e.recipient: Outcome(e.code, e.message, where) for e in exc.recipients}
        return {r: refused.get(r, Outcome(None, "refusé", where)) for r in rcpts}
    except aiosmtplib.SMTPResponseException as exc:
        return {r: Outcome(exc.code, exc.message, where) for r in rcpts}
    except (ssl.SSLError, ssl.CertificateError) as exc:
        return {r: Outcome(None, f"{where} : échec TLS ({exc})", where) for r in rcpts}
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        reason = str(exc) or type(exc).__name__
        return {r: Outcome(None, f"{where} injoignable ({reason})", where) for r in rcpts}
    finally:
        with contextlib.suppress(Exception):
            if client.is_connected:
                await client.quit()
        with contextlib.suppress(Exception):
            client.close()


