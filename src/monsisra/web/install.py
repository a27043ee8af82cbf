"""Mounts the web application on the FastAPI app: pages, static files, session hook and the
security headers of HTML responses (strict Content-Security-Policy, no inline script)."""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.middleware.gzip import GZipMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from monsisra.config import Settings
from monsisra.web import (
    access_log,
    account,
    admin,
    admin_accounts,
    auth,
    compose,
    conversations,
    delegations,
    inbox,
    my_sessions,
    passwords,
    patients,
    portal,
    reach,
    reading,
    security,
    signin,
    teleexpertise,
    video,
)
from monsisra.web.common import CsrfFailed, LoginRequired, error_page, is_htmx, render
from monsisra.web.session import Sessions

STATIC = Path(__file__).parent / "static"

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
       "connect-src 'self'; font-src 'self'; frame-src 'self'; object-src 'none'; base-uri 'none'; "
       "form-action 'self'; frame-ancestors 'none'")


class HtmlSecurityHeaders:
    """Adds CSP and friends to every HTML response, and ``Server-Timing`` to web responses."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                ctype = next((v for k, v in headers if k.lower() == b"content-type"), b"")
                if ctype.startswith(b"text/html"):
                    have = {k.lower() for k, _ in headers}
                    extra = [(b"content-security-policy", CSP.encode()),
                             (b"x-content-type-options", b"nosniff"),
                             (b"referrer-policy", b"same-origin"),
                             (b"x-frame-options", b"DENY"),
                             (b"cache-control", b"no-store")]
                    headers += [(k, v) for k, v in extra if k not in have]
                    elapsed = (time.perf_counter() - started) * 1000
                    headers.append((b"server-timing", f"app;dur={elapsed:.2f}".encode()))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_wrapper)


async def api_docs(request: Request) -> HTMLResponse:
    """Swagger UI from our own static files (``static/docs/``), under the same CSP as every page."""
    return render(request, "layout/docs.html", openapi_url=request.app.openapi_url or "/openapi.json")


def install(app: FastAPI, settings: Settings) -> None:
    sessions = Sessions(settings)
    app.state.sessions = sessions
    app.state.session_actor = sessions.actor

    async def _follow_session_ends(app_: FastAPI, core) -> None:
        core.bus.on_session_ended(sessions.session_ended)

    app.state.startup_hooks.append(_follow_session_ends)
    # Scripts and styles are compressed on the wire (a phone downloads a third of their size);
    # pages are not, since they carry the CSRF token beside text others wrote (BREACH).
    app.mount("/static", GZipMiddleware(StaticFiles(directory=STATIC), minimum_size=1024), name="static")
    for area in (auth, signin, conversations, video, inbox, reading, compose, account, security, passwords,
                 my_sessions, delegations, access_log, portal, admin, admin_accounts, patients, reach, teleexpertise):
        app.include_router(area.router)
    security.install(app)
    app.state.error_page = error_page

    @app.exception_handler(LoginRequired)
    async def _login_required(request: Request, exc: LoginRequired) -> Response:
        suite = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        target = "/connexion?" + urlencode({"suite": suite if request.method == "GET" else "/boite"})
        if is_htmx(request):
            return Response(status_code=204, headers={"HX-Redirect": target})
        return RedirectResponse(target, status_code=303)

    @app.exception_handler(CsrfFailed)
    async def _csrf(request: Request, exc: CsrfFailed) -> Response:
        return HTMLResponse("<p>Jeton de sécurité invalide : rechargez la page.</p>", status_code=403)

    app.add_api_route("/docs", api_docs, methods=["GET"], include_in_schema=False)
    app.add_middleware(HtmlSecurityHeaders)
