"""The login page's other steps and ways: the one-time code asked on a second step (and the
browser remembered after it), the CPS card, Pro Santé Connect. The rules are in
services/signin.py, totp.py, cps.py and psc.py; these routes carry cookies and pages."""

from __future__ import annotations

import secrets
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from itsdangerous import BadSignature, URLSafeTimedSerializer

from monsisra.api import certificates
from monsisra.services import accounts, cps, psc, signin, totp
from monsisra.services import sessions as sessions_service
from monsisra.services.core import Core
from monsisra.services.errors import AuthFailed, ServiceError
from monsisra.store.models import Account
from monsisra.web.common import CsrfFailed, client_of, core_of, foreign_origin, next_url, render, sessions_of
from monsisra.web.session import is_tls

router = APIRouter(include_in_schema=False)

TRUSTED_COOKIE = "monsisra_trusted"  # browsers remembered after the second factor: {login: secret}
PSC_COOKIE = "monsisra_psc"  # the browser's half of a Pro Santé Connect login under way
TICKET_TTL = 300  # seconds between the password and the code


def _ticket_signer(request: Request) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(request.app.state.settings.effective_secret_key, salt="monsisra.web.second-step")


def _trusted_signer(request: Request) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(request.app.state.settings.effective_secret_key, salt="monsisra.web.trusted")


def _trusted(request: Request) -> dict[str, str]:
    raw = request.cookies.get(TRUSTED_COOKIE)
    if not raw:
        return {}
    try:
        data = _trusted_signer(request).loads(raw, max_age=request.app.state.settings.totp_remember_days * 86400)
    except BadSignature:
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)} if isinstance(data, dict) \
        else {}


def login_options(request: Request) -> dict[str, Any]:
    """What the login page offers besides the password: the card, Pro Santé Connect."""
    st = request.app.state.settings
    card = None
    if st.cps_login and st.tls_trust:
        if is_tls(request) or st.trusted_proxy_list:
            card = "/connexion/carte"
        elif st.https_port:
            card = f"https://{request.url.hostname}:{st.https_port}/connexion/carte"
    return {"card_url": card, "psc": bool(st.psc_issuer and st.psc_client_id)}


def login_page(request: Request, status: int = 200, **ctx: Any) -> Response:
    return render(request, "auth/login.html", status=status, **login_options(request), **ctx)


async def first_factor(request: Request, core: Core, username: str, password: str, device: str | None) -> Account:
    """The password (or what ``app.state.login`` checks instead: LDAP…)."""
    hook = getattr(request.app.state, "login", None)
    if hook is not None:
        return await hook(core, username, password, None, client_of(request), device=device)
    return await accounts.authenticate(core, username, password, client_of(request), device=device)


async def after_password(request: Request, account: Account, otp: str | None, suite: str,
                         device: str | None) -> Response:
    """The password passed: in at once, or the second step that asks for the code."""
    core = core_of(request)
    remembered = _trusted(request).get(account.username.lower())
    try:
        login = await signin.second_step(core, account, otp, client_of(request), device=device, remembered=remembered)
    except AuthFailed as exc:
        if not exc.extra.get("otp_required") or otp:
            raise
        return code_page(request, account, suite)
    return await complete(request, login, suite)


def code_page(request: Request, account: Account, suite: str, status: int = 200, error: str | None = None,
              ticket: str | None = None) -> Response:
    ticket = ticket or _ticket_signer(request).dumps({"a": account.id, "u": account.username,
                                                      "n": secrets.token_urlsafe(8)})
    return render(request, "auth/code.html", status=status, ticket=ticket, suite=suite, error=error,
                  remember_days=request.app.state.settings.totp_remember_days)


async def complete(request: Request, login: signin.Login, suite: str, remember_browser: bool = False) -> Response:
    """Open the web session, give the cookies, go on (to the enrolment page if limited)."""
    core = core_of(request)
    sessions = sessions_of(request)
    token = await signin.open_session(core, login, kind="web", client=client_of(request),
                                      user_agent=request.headers.get("user-agent"))
    target = "/parametres/securite?activer=1" if login.limited else suite
    response = RedirectResponse(target, status_code=303)
    sessions.set_cookie(response, request, token)
    device = sessions.remember_device(response, request, login.account.username)
    # The server keeps the browser's hash (« Sessions et appareils », its own failure counter).
    await sessions_service.remember_device(core, login.account.id, device, client_of(request),
                                           request.headers.get("user-agent"))
    if remember_browser:
        secret = await totp.remember_browser(core, login.account.id, device, client_of(request))
        trusted = _trusted(request)
        trusted.pop(login.account.username.lower(), None)
        trusted[login.account.username.lower()] = secret
        trusted = dict(list(trusted.items())[-8:])
        response.set_cookie(TRUSTED_COOKIE, _trusted_signer(request).dumps(trusted),
                            max_age=core.settings.totp_remember_days * 86400, httponly=True, samesite="lax",
                            secure=is_tls(request), path="/")
    return response


@router.post("/connexion/code")
async def code_step(request: Request) -> Response:
    """Second step: the one-time code (or a recovery code) after the password."""
    if foreign_origin(request):
        raise CsrfFailed
    form = await request.form()
    raw_ticket = str(form.get("ticket", ""))
    suite = next_url(str(form.get("suite", "")))
    otp = str(form.get("otp", "")).strip()
    core = core_of(request)
    try:
        data = _ticket_signer(request).loads(raw_ticket, max_age=TICKET_TTL)
    except BadSignature:
        return login_page(request, status=400, error="étape expirée : saisissez à nouveau votre mot de passe",
                          suite=suite)
    async with core.read() as session:
        account = await session.get(Account, int(data.get("a", 0)))
    if account is None or account.username != data.get("u") or not account.active:
        return login_page(request, status=400, error="étape expirée : saisissez à nouveau votre mot de passe",
                          suite=suite)
    device = sessions_of(request).device_of(request, account.username)
    try:
        login = await signin.second_step(core, account, otp or None, client_of(request), device=device)
    except ServiceError as exc:
        response = code_page(request, account, suite, status=exc.status if exc.status != 401 else 400,
                             error=exc.detail, ticket=raw_ticket)
        if "retry_after" in exc.extra:
            response.headers["Retry-After"] = str(exc.extra["retry_after"])
        return response
    return await complete(request, login, suite, remember_browser=form.get("remember") == "1")


@router.get("/connexion/carte")
async def card_login(request: Request) -> Response:
    """Login with the CPS card presented at the TLS handshake (or forwarded by the proxy)."""
    core = core_of(request)
    suite = next_url(request.query_params.get("suite"))
    try:
        login = await cps.login(core, certificates.presented(request), client_of(request))
    except ServiceError as exc:
        return login_page(request, status=exc.status if exc.status != 401 else 403, error=exc.detail, suite=suite)
    return await complete(request, login, suite)


@router.get("/connexion/psc")
async def psc_login(request: Request) -> Response:
    """To Pro Santé Connect; the browser keeps its half of the login in a cookie."""
    core = core_of(request)
    suite = next_url(request.query_params.get("suite"))
    try:
        started = await psc.start(core, str(request.base_url), suite)
    except ServiceError as exc:
        return login_page(request, status=exc.status, error=exc.detail, suite=suite)
    except Exception:  # the provider is unreachable: say so, keep the other ways open
        return login_page(request, status=503, error="Pro Santé Connect ne répond pas ; réessayez plus tard",
                          suite=suite)
    response = RedirectResponse(started.url, status_code=303)
    # SameSite=Lax: sent on the provider's top-level redirect back to us, not on a cross-site POST.
    response.set_cookie(PSC_COOKIE, started.browser, max_age=int(psc.LOGIN_TTL.total_seconds()), httponly=True,
                        samesite="lax", secure=is_tls(request), path="/connexion/psc")
    return response


@router.get("/connexion/psc/retour")
async def psc_return(request: Request) -> Response:
    core = core_of(request)
    params = {k: v[:4000] for k, v in request.query_params.items()}
    try:
        login, suite = await psc.finish(core, str(request.base_url), params, request.cookies.get(PSC_COOKIE),
                                        client_of(request))
    except ServiceError as exc:
        response = login_page(request, status=exc.status if exc.status != 401 else 403, error=exc.detail)
        response.delete_cookie(PSC_COOKIE, path="/connexion/psc")
        return response
    response = await complete(request, login, next_url(suite))
    response.delete_cookie(PSC_COOKIE, path="/connexion/psc")
    return response
