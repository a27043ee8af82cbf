"""« Paramètres › Sécurité »: the second factor (enrolment with a QR code drawn here, recovery
codes shown once, confirmation, new codes, turning it off) and the browsers remembered after it.
A session limited to enrolling its factor lands here, and may use nothing else."""

from __future__ import annotations

from typing import Any

import segno
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import RedirectResponse, Response

from monsisra.services import accounts, totp
from monsisra.services.core import Actor
from monsisra.services.errors import AuthFailed, SecondFactorRequired, ServiceError
from monsisra.web.common import (
    CsrfFailed,
    LoginRequired,
    client_of,
    core_of,
    foreign_origin,
    is_htmx,
    render,
    sessions_of,
)
from monsisra.web.session import CSRF_FIELD, CSRF_HEADER

router = APIRouter(include_in_schema=False)
PAGE = "/parametres/securite"
OK_TEXT = {"active": "Validation en deux étapes activée.", "desactive": "Validation en deux étapes désactivée.",
           "oublie": "Les navigateurs de confiance devront de nouveau saisir un code."}


def qr_data_uri(uri: str) -> str:
    """The QR code of an ``otpauth://`` URI as an SVG data URI (CSP allows ``img-src data:``)."""
    return segno.make(uri, error="m").svg_data_uri(scale=5, border=2)


async def _actor(request: Request) -> Actor:
    """The session's actor, a limited one included (it is here to enrol its factor)."""
    sessions = sessions_of(request)
    token = sessions.token_of(request)
    if token is None:
        raise LoginRequired
    try:
        actor = await accounts.actor_for_token(core_of(request), token, client_of(request), allow_limited=True)
    except AuthFailed:
        raise LoginRequired from None
    request.state.csrf = sessions.csrf_for(token)
    request.state.token = token
    return actor


async def _form_actor(request: Request) -> tuple[Actor, Any]:
    if foreign_origin(request):
        raise CsrfFailed
    actor = await _actor(request)
    form = await request.form()
    presented = request.headers.get(CSRF_HEADER) or form.get(CSRF_FIELD)
    if not sessions_of(request).csrf_ok(request.state.token, presented if isinstance(presented, str) else None):
        raise CsrfFailed
    return actor, form


async def _page(request: Request, actor: Actor, status: int = 200, **ctx: Any) -> Response:
    state = await totp.status(core_of(request), actor)
    return render(request, "account/security.html", status=status, totp=state, limited=await _limited(request, actor),
                  **ctx)


async def _limited(request: Request, actor: Actor) -> bool:
    try:
        await accounts.actor_for_token(core_of(request), request.state.token, client_of(request))
    except SecondFactorRequired:
        return True
    except AuthFailed:
        return False
    return False


@router.get(PAGE)
async def security_page(request: Request) -> Response:
    actor = await _actor(request)
    ok = OK_TEXT.get(request.query_params.get("ok", ""))
    return await _page(request, actor, ok=ok)


@router.post(PAGE + "/activer")
async def begin(request: Request) -> Response:
    actor, _ = await _form_actor(request)
    enrolment = await totp.begin_enrolment(core_of(request), actor)
    return await _page(request, actor, enrolment=enrolment, qr=qr_data_uri(enrolment.otpauth_uri))


@router.post(PAGE + "/confirmer")
async def confirm(request: Request) -> Response:
    actor, form = await _form_actor(request)
    core = core_of(request)
    try:
        await totp.confirm_enrolment(core, actor, str(form.get("otp", "")))
    except ServiceError as exc:
        pending = await totp.pending_enrolment(core, actor)
        ctx: dict[str, Any] = {"error": exc.detail}
        if pending is not None:
            ctx.update(pending_secret=pending[0], qr=qr_data_uri(pending[1]))
        response = await _page(request, actor, status=exc.status if exc.status != 401 else 400, **ctx)
        if "retry_after" in exc.extra:
            response.headers["Retry-After"] = str(exc.extra["retry_after"])
        return response
    sessions_of(request).forget(request.state.token)
    return RedirectResponse(PAGE + "?ok=active", status_code=303)


@router.post(PAGE + "/codes")
async def new_codes(request: Request) -> Response:
    actor, form = await _form_actor(request)
    try:
        codes = await totp.new_recovery_codes(core_of(request), actor, str(form.get("otp", "")))
    except ServiceError as exc:
        return await _page(request, actor, status=exc.status if exc.status != 401 else 400, error=exc.detail)
    return await _page(request, actor, new_codes=codes)


@router.post(PAGE + "/desactiver")
async def turn_off(request: Request) -> Response:
    actor, form = await _form_actor(request)
    try:
        await totp.disable(core_of(request), actor, str(form.get("otp", "")))
    except ServiceError as exc:
        return await _page(request, actor, status=exc.status if exc.status != 401 else 400, error=exc.detail)
    return RedirectResponse(PAGE + "?ok=desactive", status_code=303)


@router.post(PAGE + "/oublier")
async def forget(request: Request) -> Response:
    actor, _ = await _form_actor(request)
    await totp.forget_browsers(core_of(request), actor)
    return RedirectResponse(PAGE + "?ok=oublie", status_code=303)


def install(app: FastAPI) -> None:
    """A page met with a session limited to enrolling its second factor leads here."""

    @app.exception_handler(SecondFactorRequired)
    async def _second_factor(request: Request, exc: SecondFactorRequired) -> Response:
        if request.url.path.startswith(("/api/", "/fhir/")):
            from monsisra.api.problems import problem

            return problem(exc.status, exc.detail, exc.title, **exc.extra)
        target = PAGE + "?activer=1"
        if is_htmx(request):
            return Response(status_code=204, headers={"HX-Redirect": target})
        return RedirectResponse(target, status_code=303)
