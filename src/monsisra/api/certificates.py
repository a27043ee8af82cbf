"""Where a request's client certificate comes from: our own HTTPS listener (the ASGI ``tls``
extension ``serving.py`` fills after the handshake verified it) or a reverse proxy among
``MONSISRA_TRUSTED_PROXIES``, which forwards it PEM url-encoded in ``MONSISRA_CPS_PROXY_HEADER``.

The header is believed only from such a proxy, judged by the address of the TCP peer itself:
this middleware runs outside the one that rewrites the client address from ``X-Forwarded-For``.
From anyone else it is dropped, so no route can mistake it for a verified card.
"""

from __future__ import annotations

import ipaddress
import ssl
from urllib.parse import unquote

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from monsisra.config import Settings
from monsisra.services.cps import Presented

SCOPE_KEY = "monsisra.client_certificate"


def _networks(proxies: list[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    out = []
    for p in proxies:
        try:
            out.append(ipaddress.ip_network(p, strict=False))
        except ValueError:
            continue
    return out


class ClientCertificateMiddleware:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.header = settings.cps_proxy_header.lower().encode()
        self.proxies = _networks(settings.trusted_proxy_list)

    def _from_proxy(self, scope: Scope) -> bool:
        client = scope.get("client")
        if not client or not self.proxies:
            return False
        try:
            address = ipaddress.ip_address(client[0])
        except ValueError:
            return False
        return any(address in network for network in self.proxies)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = scope.get("headers") or []
        forwarded = [v for k, v in headers if k.lower() == self.header]
        presented = None
        chain = ((scope.get("extensions") or {}).get("tls") or {}).get("client_cert_chain") or []
        if chain:
            presented = Presented(chain[0], "tls")
        elif forwarded and self._from_proxy(scope):
            value = unquote(forwarded[-1].decode("latin-1")).strip()
            if value and value not in ("(null)", "-"):
                presented = Presented(value, "proxy")
        if forwarded:
            scope = {**scope, "headers": [(k, v) for k, v in headers if k.lower() != self.header]}
        if presented is not None:
            scope = {**scope, "extensions": {**(scope.get("extensions") or {}), SCOPE_KEY: presented}}
        await self.app(scope, receive, send)


def presented(conn: HTTPConnection) -> Presented | None:
    """The client certificate that came with this request, if any."""
    return (conn.scope.get("extensions") or {}).get(SCOPE_KEY)


def tls_extension(ssl_object: ssl.SSLObject | None) -> dict | None:
    """The ASGI TLS extension of a connection (client certificate as PEM, already verified)."""
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    return {"client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)] if der else [],
            "tls_version": ssl_object.version(), "cipher_suite": (ssl_object.cipher() or (None,))[0],
            "server_cert": None, "client_cert_name": None, "client_cert_error": None}
