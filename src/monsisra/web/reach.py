"""Web pages of issue 16: the installable app (manifest, service worker, offline page), the
notification preferences and the app passwords of mail clients in Paramètres, the confirmation
of a printed document's suggestions, and the page where an administrator (or the national
address) writes a DGS-Urgent alert."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlencode, urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from monsisra import __version__
from monsisra.api.deps import PathId
from monsisra.services import app_passwords, broadcasts, notifications, printer, totp
from monsisra.services.errors import Forbidden, ServiceError
from monsisra.web.common import core_of, error_page, form_actor, page_actor, render, set_flash

router = APIRouter(include_in_schema=False)
STATIC = Path(__file__).parent / "static"

MANIFEST = {
    "name": "MonSisra — messagerie sécurisée de santé",
    "short_name": "MonSisra",
    "description": "Messagerie sécurisée MSSanté, conversations et télémédecine des professionnels de santé.",
    "lang": "fr",
    "id": "/boite",
    "start_url": "/boite",
    "scope": "/",
    "display": "standalone",
    "background_color": "#ffffff",
    "theme_color": "#1d4f91",
    "icons": [
        {"src": "/static/icons/icon-192.png", "sizes": "192x192", "type": "image/png", "purpose": "any"},
        {"src": "/static/icons/icon-512.png", "sizes": "512x512", "type": "image/png", "purpose": "any"},
        {"src": "/static/icons/maskable-512.png", "sizes": "512x512", "type": "image/png", "purpose": "maskable"},
    ],
}


@router.get("/manifest.webmanifest")
async def manifest() -> Response:
    return Response(json.dumps(MANIFEST, ensure_ascii=False), media_type="application/manifest+json",
                    headers={"Cache-Control": "no-cache"})


@router.get("/sw.js")
async def service_worker() -> Response:
    """The service worker, at the root so that it controls every page; its caches are named
    after the version, so that an upgrade drops the old shell."""
    source = (STATIC / "sw.js").read_text().replace("__VERSION__", __version__)
    return Response(source, media_type="text/javascript",
                    headers={"Cache-Control": "no-cache", "Service-Worker-Allowed": "/"})


@router.get("/hors-ligne")
async def offline_page(request: Request) -> Response:
    return render(request, "reach/offline.html")


# --- Paramètres → Notifications --------------------------------------------------------------


@router.get("/parametres/notifications")
async def notifications_page(request: Request) -> Response:
    actor = await page_actor(request)
    prefs = await notifications.get_prefs(core_of(request), actor)
    return render(request, "reach/notifications.html", prefs=prefs, saved=request.query_params.get("ok") == "1")


@router.post("/parametres/notifications")
async def notifications_save(request: Request) -> Response:
    actor, form = await form_actor(request)
    core = core_of(request)
    changes = {c: form.get(c) == "1" for c in notifications.CHANNELS}
    changes.update(quiet_start=str(form.get("quiet_start") or ""), quiet_end=str(form.get("quiet_end") or ""))
    try:
        await notifications.set_prefs(core, actor, changes)
    except ServiceError as exc:
        prefs = await notifications.get_prefs(core, actor)
        return render(request, "reach/notifications.html", status=exc.status, prefs=prefs, error=exc.detail)
    return RedirectResponse("/parametres/notifications?ok=1", status_code=303)


# --- Paramètres → Mots de passe d'application -------------------------------------------------

APP_PASSWORDS = "/parametres/mots-de-passe-application"


def _mail_settings(request: Request) -> dict:
    """What to type in a mail client: the server name people reach us by, ports, login."""
    settings = request.app.state.settings
    host = (urlsplit(settings.public_url).hostname if settings.public_url else None) or request.url.hostname
    return {"host": host, "imaps_port": settings.imaps_port, "imap_port": settings.imap_port,
            "submissions_port": settings.submissions_port, "submission_port": settings.submission_port}


async def _app_passwords_page(request: Request, actor, status: int = 200, **ctx) -> Response:
    core = core_of(request)
    response = render(request, "reach/app_passwords.html", status=status,
                      items=await app_passwords.list_mine(core, actor), mail=_mail_settings(request),
                      username=actor.username, second_factor=await totp.is_enrolled(core, actor.account_id), **ctx)
    if "created" in ctx:
        response.headers["Cache-Control"] = "no-store"  # the secret is in this page and nowhere else
    return response


@router.get(APP_PASSWORDS)
async def app_passwords_page(request: Request) -> Response:
    actor = await page_actor(request)
    return await _app_passwords_page(request, actor, revoked=request.query_params.get("revoque") == "1")


@router.post(APP_PASSWORDS)
async def app_password_create(request: Request) -> Response:
    actor, form = await form_actor(request)
    label = str(form.get("label") or "")
    try:
        created = await app_passwords.create(core_of(request), actor, label)
    except ServiceError as exc:
        return await _app_passwords_page(request, actor, status=exc.status, error=exc.detail, label=label)
    return await _app_passwords_page(request, actor, created=created)


@router.post(APP_PASSWORDS + "/{app_password_id}/revoquer")
async def app_password_revoke(request: Request, app_password_id: PathId) -> Response:
    actor, _ = await form_actor(request)
    try:
        await app_passwords.revoke(core_of(request), actor, app_password_id)
    except ServiceError as exc:
        return await _app_passwords_page(request, actor, status=exc.status, error=exc.detail)
    return RedirectResponse(APP_PASSWORDS + "?revoque=1", status_code=303)


# --- the printer's suggestions ---------------------------------------------------------------


@router.post("/impressions/{job_id}/confirmer")
async def confirm_print(request: Request, job_id: PathId) -> Response:
    """« Utiliser ces suggestions » on the compose page of a printed document."""
    actor, form = await form_actor(request)
    try:
        done = await printer.confirm(core_of(request), actor, job_id, [str(a) for a in form.getlist("recipients")],
                                     form.get("patient") == "1")
    except ServiceError as exc:
        return error_page(request, exc.status, "Suggestions non appliquées", exc.detail)
    draft = f"{done['mailbox_id']}:{done['draft_id']}"
    response = RedirectResponse("/ecrire?" + urlencode({"brouillon": draft}), status_code=303)
    set_flash(request, response, "Suggestions ajoutées au brouillon.")
    return response


# --- DGS-Urgent ------------------------------------------------------------------------------


@router.get("/admin/dgs-urgent")
async def broadcast_page(request: Request) -> Response:
    actor = await page_actor(request)
    if not await broadcasts.may_broadcast(core_of(request), actor):
        return error_page(request, 403, "Accès refusé", "réservé aux administrateurs et à l'adresse nationale")
    return render(request, "reach/broadcast.html", form={}, sent=None)


@router.post("/admin/dgs-urgent")
async def broadcast_send(request: Request) -> Response:
    actor, form = await form_actor(request)
    values = {k: str(form.get(k) or "") for k in ("subject", "body", "professions", "departments")}
    req = broadcasts.Broadcast(values["subject"], values["body"],
                               [p for p in (x.strip() for x in values["professions"].split(",")) if p],
                               [d for d in values["departments"].replace(",", " ").split() if d])
    try:
        sent = await broadcasts.send(core_of(request), actor, req)
    except Forbidden as exc:
        return error_page(request, 403, "Accès refusé", exc.detail)
    except ServiceError as exc:
        return render(request, "reach/broadcast.html", status=exc.status, form=values, error=exc.detail, sent=None)
    return render(request, "reach/broadcast.html", form={}, sent=sent)


async def dgs_alerts(request: Request, actor) -> list[dict]:
    """The unread DGS-Urgent alerts of the banner."""
    return await broadcasts.unread_alerts(core_of(request), actor)


def opened_alert_url(alert: dict) -> str:
    return "/boite?" + urlencode({"bal": alert["mailbox_id"], "dossier": "dgs_urgent", "ouvrir": alert["message_id"],
                                  "ouvrir_bal": alert["mailbox_id"]})

