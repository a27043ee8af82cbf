"""How a request reached us: HTTPS (directly, or through a trusted reverse proxy) and HSTS.

``X-Forwarded-Proto`` and ``X-Forwarded-For`` are believed only from the addresses of
``MONSISRA_TRUSTED_PROXIES`` (none by default): from anyone else they would let a client make
a plain-HTTP session cookie look secure, or pick the address its login attempts are counted on.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from monsisra.config import Settings

HSTS = b"max-age=31536000"


class HstsMiddleware:
    """Every response given over HTTPS tells the browser to use nothing else for a year."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("scheme") != "https":
            await self.app(scope, receive, send)
            return

        async def send_with_hsts(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"strict-transport-security"]
                message["headers"] = [*headers, (b"strict-transport-security", HSTS)]
            await send(message)

        await self.app(scope, receive, send_with_hsts)


def install(app: FastAPI, settings: Settings) -> None:
    """Call last: the proxy middleware must be the outermost, so that everything (session
    cookie, HSTS, throttling by address) sees the client's scheme and address."""
    app.add_middleware(HstsMiddleware)
    proxies = settings.trusted_proxy_list
    if proxies:
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=proxies)
    # Outside the proxy middleware: it judges the forwarded certificate by the TCP peer's address.
    from monsisra.api.certificates import ClientCertificateMiddleware

    app.add_middleware(ClientCertificateMiddleware, settings=settings)
