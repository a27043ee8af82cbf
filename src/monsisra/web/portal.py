"""« Mon portail »: the page of tiles (each registered service, opened already logged in), the
provider's browser-facing endpoints (authorisation, end of session) and the administrators'
page of registered services and signing keys. Rules: services/portal.py."""

from __future__ import annotations

from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from monsisra.services import accounts, portal
from monsisra.services.errors import AuthFailed, ServiceError
from monsisra.web.common import client_of, core_of, error_page, form_actor, page_actor, render, sessions_of

router = APIRouter(include_in_schema=False)


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/")


@router.get("/portail")
async def portal_page(request: Request) -> Response:
    actor = await page_actor(request)
    core = core_of(request)
    issuer = portal.issuer_of(core, _base(request))
    tiles = await portal.tiles(core, actor)
    for tile in tiles:  # OpenID third-party initiated login: the service starts its login with us
        sep = "&" if "?" in tile["login_url"] else "?"
        tile["href"] = tile["login_url"] + sep + urlencode({"iss": issuer})
    return render(request, "portal/portal.html", tiles=tiles)


@router.get("/portail/oidc/authorize")
async def authorize(request: Request) -> Response:
    """The authorisation endpoint: a browser with a MonSisra session gets its code at once;
    without one it logs in first and comes back here."""
    core = core_of(request)
    sessions = sessions_of(request)
    actor = None
    token = sessions.token_of(request)
    if token is not None:
        try:
            actor = await sessions.resolve(core, token, client_of(request))
        except AuthFailed:
            actor = None
    http = portal.HttpRequest("GET", str(request.url), request.headers, list(request.query_params.multi_items()))
    reply = await portal.authorize(core, http, actor, _base(request))
    if reply.error:
        return error_page(request, reply.status, "Connexion au service impossible", reply.error)
    if reply.status == 401:
        suite = request.url.path + "?" + request.url.query
        return RedirectResponse("/connexion?" + urlencode({"suite": suite}), status_code=303)
    return RedirectResponse(reply.location or "/portail", status_code=303)


@router.api_route("/portail/oidc/logout", methods=["GET", "POST"])
async def end_session(request: Request) -> Response:
    """RP-initiated logout: the MonSisra session of this browser ends, and with it every portal
    session it opened (their services are told on their back channel)."""
    core = core_of(request)
    params = dict(request.query_params)
    if request.method == "POST":
        params.update({k: str(v) for k, v in (await request.form()).items()})
    client = await portal.logout_hint(core, params.get("id_token_hint"), params.get("client_id"))
    sessions = sessions_of(request)
    token = sessions.token_of(request)
    if token is not None:
        await accounts.revoke_token(core, token, "session terminée : déconnexion depuis un service du portail")
        sessions.forget(token)
    target = portal.post_logout_target(client, params.get("post_logout_redirect_uri"))
    if target and params.get("state"):
        target += ("&" if "?" in target else "?") + urlencode({"state": params["state"][:500]})
    response = RedirectResponse(target or "/connexion", status_code=303)
    sessions.clear_cookie(response, request)
    return response


async def _admin_page(request: Request, *, status: int = 200, **ctx) -> HTMLResponse:
    actor = await page_actor(request)
    try:
        clients = await portal.list_clients(core_of(request), actor)
        keys = (await portal.jwks(core_of(request)))["keys"]
    except ServiceError as exc:
        return render(request, "portal/admin.html", status=exc.status, clients=[], keys=[], error=exc.detail)
    return render(request, "portal/admin.html", status=status, clients=clients, keys=keys,
                  issuer=portal.issuer_of(core_of(request), _base(request)), **ctx)


@router.get("/admin/portail", response_class=HTMLResponse)
async def admin_portal(request: Request) -> Response:
    ok = {"retrait": "Service retiré du portail.", "retour": "Service remis dans le portail.",
          "cles": "Nouvelle clé de signature en service."}.get(request.query_params.get("ok", ""))
    return await _admin_page(request, ok=ok)


@router.post("/admin/portail/services")
async def admin_add(request: Request) -> Response:
    actor, form = await form_actor(request)
    try:
        client, secret = await portal.add_client(
            core_of(request), name=str(form.get("name", "")), description=str(form.get("description", "")),
            redirect_uris=str(form.get("redirect_uris", "")).split(), login_url=str(form.get("login_url", "")),
            backchannel_logout_uri=str(form.get("backchannel_logout_uri", "")).strip() or None,
            client_id=str(form.get("client_id", "")).strip() or None, actor=actor)
    except ServiceError as exc:
        return await _admin_page(request, status=exc.status, error=exc.detail)
    # The secret is shown this once, on this answer (never in a URL or a cookie).
    return await _admin_page(request, created=client, secret=secret)


@router.post("/admin/portail/services/etat")
async def admin_state(request: Request) -> Response:
    actor, form = await form_actor(request)
    active = form.get("active") == "1"
    try:
        await portal.set_client_active(core_of(request), str(form.get("client_id", "")), active, actor)
    except ServiceError as exc:
        return await _admin_page(request, status=exc.status, error=exc.detail)
    return RedirectResponse("/admin/portail?ok=" + ("retour" if active else "retrait"), status_code=303)


@router.post("/admin/portail/cles")
async def admin_rotate(request: Request) -> Response:
    actor, _ = await form_actor(request)
    try:
        await portal.rotate_keys(core_of(request), actor)
    except ServiceError as exc:
        return await _admin_page(request, status=exc.status, error=exc.detail)
    return RedirectResponse("/admin/portail?ok=cles", status_code=303)

