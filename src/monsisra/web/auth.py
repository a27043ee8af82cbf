"""Logging in and out of the web application.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from monsisra.services import accounts, mailboxes
from monsisra.services import sessions as sessions_service
from monsisra.services.core import Core
from monsisra.services.errors import ServiceError
from monsisra.web import signin
from monsisra.web.common import CsrfFailed, core_of, foreign_origin, next_url, sessions_of

router = APIRouter(include_in_schema=False)


@router.get("/")
async def home(request: Request) -> Response:
    return RedirectResponse("/boite" if sessions_of(request).token_of(request) else "/connexion", status_code=303)


DEV_DOMAIN = "monsisra.localhost"


async def demo_hint(core: Core) -> bool:
    """On a development install with the demo data, the login page names the demo logins."""
    if core.settings.domain != DEV_DOMAIN:
        return False
    async with core.read() as session:
        return bool(await mailboxes.by_address(session, [f"alice.martin@{DEV_DOMAIN}"]))


@router.get("/connexion")
async def login_page(request: Request) -> Response:
    return signin.login_page(request, suite=next_url(request.query_params.get("suite")),
                             demo=await demo_hint(core_of(request)))


@router.post("/connexion")
async def login(request: Request) -> Response:
    if foreign_origin(request):  # no login CSRF: another site cannot log the browser in
        raise CsrfFailed
    form = await request.form()
    username = str(form.get("username", "")).strip()
    password = str(form.get("password", ""))
    otp = str(form.get("otp", "")).strip() or None
    suite = next_url(str(form.get("suite", "")))
    core = core_of(request)
    sessions = sessions_of(request)
    # A browser this login used before has its own failure counter (see web/session.py), unless
    # the account forgot it (« Sessions et appareils ») or it expired.
    device = sessions.device_of(request, username)
    if device is not None and not await sessions_service.device_trusted(core, username, device):
        device = None
    try:
        account = await signin.first_factor(request, core, username, password, device)
        # The code, when the account has a second factor, is asked on a step of its own.
        return await signin.after_password(request, account, otp, suite, device)
    except ServiceError as exc:
        response = signin.login_page(request, status=exc.status if exc.status != 401 else 400, error=exc.detail,
                                     username=username, suite=suite, demo=await demo_hint(core))
        if "retry_after" in exc.extra:
            response.headers["Retry-After"] = str(exc.extra["retry_after"])
        return response


@router.post("/deconnexion")
async def logout(request: Request) -> Response:
    """Always ends the session this browser holds, even without the CSRF token (a stale page)
    or from elsewhere: logging out is harmless, and leaving a session alive is not."""
    sessions = sessions_of(request)
    token = sessions.token_of(request)
    if token is not None:
        await accounts.revoke_token(core_of(request), token, "session terminée : déconnexion")
        sessions.forget(token)
    response = RedirectResponse("/connexion", status_code=303)
    sessions.clear_cookie(response, request)
    return response
