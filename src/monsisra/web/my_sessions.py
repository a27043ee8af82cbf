"""« Sessions et appareils »: what the account is logged in with, and revoking any of it."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from monsisra.services import sessions
from monsisra.services.errors import NotFound
from monsisra.web.common import core_of, form_actor, page_actor, render, set_flash

router = APIRouter(include_in_schema=False)
DONE = {"token": "Session fermée : ses connexions temps réel sont coupées.",
        "socket": "Connexion temps réel fermée.",
        "device": "Appareil oublié : il devra se reconnecter comme un inconnu."}


def browser_name(user_agent: str | None) -> str:
    """"Chrome sur Linux", "Firefox sur Windows", "Safari sur iPhone"… from a User-Agent."""
    ua = user_agent or ""
    if not ua:
        return "Inconnu"
    name = next((n for key, n in (("Edg/", "Edge"), ("OPR/", "Opera"), ("Firefox/", "Firefox"),
                                  ("Chromium/", "Chromium"), ("Chrome/", "Chrome"), ("Safari/", "Safari"),
                                  ("python-httpx", "Client httpx"), ("python-requests", "Client Python"),
                                  ("curl/", "curl"), ("Python/", "Client Python")) if key in ua), None)
    system = next((s for key, s in (("iPhone", "iPhone"), ("iPad", "iPad"), ("Android", "Android"),
                                    ("Windows", "Windows"), ("Mac OS X", "macOS"), ("Linux", "Linux"))
                   if key in ua), None)
    if name and system:
        return f"{name} sur {system}"
    return name or system or ua[:60]


@router.get("/parametres/sessions")
async def sessions_page(request: Request) -> Response:
    actor = await page_actor(request)
    listing = await sessions.list_sessions(core_of(request), actor)
    for item in listing["items"]:
        item["browser"] = browser_name(item["user_agent"])
    return render(request, "accounts/sessions.html", items=listing["items"])


@router.post("/parametres/sessions/revoquer")
async def revoke(request: Request) -> Response:
    actor, form = await form_actor(request)
    session_id = str(form.get("id", ""))[:40]
    try:
        kind = await sessions.revoke(core_of(request), actor, session_id)
    except NotFound:
        response = RedirectResponse("/parametres/sessions", status_code=303)
        set_flash(request, response, "Cette session n'existe plus.")
        return response
    if kind == "token" and session_id == f"token-{actor.token_id}":
        return RedirectResponse("/connexion", status_code=303)  # one's own session: logged out
    response = RedirectResponse("/parametres/sessions", status_code=303)
    set_flash(request, response, DONE[kind])
    return response
