"""Passwords in the web application: « Mot de passe oublié ? » and its link, and the change from
« Paramètres ». The link's token never stays in an address: it is moved at once into a short-lived
HttpOnly cookie scoped to the page that uses it, and the browser is sent to an address without it.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from monsisra.services import passwords
from monsisra.services.errors import ServiceError
from monsisra.web.common import (
    CsrfFailed,
    client_of,
    core_of,
    foreign_origin,
    form_actor,
    page_actor,
    render,
    set_flash,
)
from monsisra.web.session import is_tls

router = APIRouter(include_in_schema=False)
RESET_COOKIE = "monsisra_reset"
RESET_PATH = "/mot-de-passe/nouveau"


@router.get("/mot-de-passe-oublie")
async def forgot_page(request: Request) -> Response:
    return render(request, "accounts/forgot.html")


@router.post("/mot-de-passe-oublie")
async def forgot(request: Request) -> Response:
    if foreign_origin(request):
        raise CsrfFailed
    form = await request.form()
    login = str(form.get("login", "")).strip()
    core = core_of(request)
    try:
        await passwords.request_reset(core, login, client_of(request))
    except ServiceError as exc:
        response = render(request, "accounts/forgot.html", status=exc.status, error=exc.detail, login=login)
        if "retry_after" in exc.extra:
            response.headers["Retry-After"] = str(exc.extra["retry_after"])
        return response
    return render(request, "accounts/forgot.html", sent=True, minutes=core.settings.password_reset_minutes)


@router.get(RESET_PATH)
async def reset_page(request: Request) -> Response:
    core = core_of(request)
    token = request.query_params.get("token")
    if token is not None:
        # From the e-mail: checked, then kept in a cookie; the address loses the token.
        try:
            await passwords.check_link(core, token, client_of(request))
        except ServiceError as exc:
            return render(request, "accounts/reset.html", status=410, refused=exc.detail)
        response = RedirectResponse(RESET_PATH, status_code=303)
        response.set_cookie(RESET_COOKIE, token, max_age=core.settings.password_reset_minutes * 60, httponly=True,
                            samesite="strict", secure=is_tls(request), path=RESET_PATH)
        response.headers["Referrer-Policy"] = "no-referrer"
        return response
    token = request.cookies.get(RESET_COOKIE)
    if not token:
        return render(request, "accounts/reset.html", status=410, refused=passwords.LINK_REFUSED[:1].upper()
                      + passwords.LINK_REFUSED[1:])
    try:
        who = await passwords.check_link(core, token, client_of(request))
    except ServiceError as exc:
        return _refused(request, exc.detail)
    return render(request, "accounts/reset.html", who=who, rule=passwords.rule())


def _refused(request: Request, detail: str) -> Response:
    response = render(request, "accounts/reset.html", status=410, refused=detail[:1].upper() + detail[1:])
    response.delete_cookie(RESET_COOKIE, path=RESET_PATH, httponly=True, samesite="strict", secure=is_tls(request))
    return response


@router.post(RESET_PATH)
async def reset(request: Request) -> Response:
    if foreign_origin(request):
        raise CsrfFailed
    core = core_of(request)
    token = request.cookies.get(RESET_COOKIE) or ""
    form = await request.form()
    new, again = str(form.get("new", "")), str(form.get("confirm", ""))
    try:
        who = await passwords.check_link(core, token, client_of(request))
    except ServiceError as exc:
        return _refused(request, exc.detail)
    if new != again:
        return render(request, "accounts/reset.html", status=422, who=who, rule=passwords.rule(),
                      error="les deux mots de passe ne sont pas identiques")
    try:
        await passwords.complete_reset(core, token, new, client_of(request))
    except ServiceError as exc:
        if exc.detail == passwords.LINK_REFUSED:
            return _refused(request, exc.detail)
        return render(request, "accounts/reset.html", status=exc.status, who=who, rule=passwords.rule(),
                      error=exc.detail)
    response = RedirectResponse("/connexion", status_code=303)
    response.delete_cookie(RESET_COOKIE, path=RESET_PATH, httponly=True, samesite="strict", secure=is_tls(request))
    set_flash(request, response, "Mot de passe changé : connectez-vous avec le nouveau. Vos autres sessions "
                                 "ont été fermées.")
    return response


@router.get("/parametres/mot-de-passe")
async def change_page(request: Request) -> Response:
    actor = await page_actor(request)
    from monsisra.services import accounts

    account = await accounts.get_account(core_of(request), actor)
    return render(request, "accounts/password.html", rule=passwords.rule(), local=account.auth_source == "local",
                  saved=request.query_params.get("ok"))


@router.post("/parametres/mot-de-passe")
async def change(request: Request) -> Response:
    actor, form = await form_actor(request)
    current, new, again = (str(form.get(k, "")) for k in ("current", "new", "confirm"))
    error = "les deux nouveaux mots de passe ne sont pas identiques" if new != again else None
    ended = 0
    if error is None:
        try:
            ended = await passwords.change(core_of(request), actor, current, new)
        except ServiceError as exc:
            error = exc.detail
    if error is not None:
        return render(request, "accounts/password.html", status=422 if "trop de tentatives" not in error else 429,
                      rule=passwords.rule(), local=True, error=error[:1].upper() + error[1:])
    return RedirectResponse(f"/parametres/mot-de-passe?ok={ended}", status_code=303)
