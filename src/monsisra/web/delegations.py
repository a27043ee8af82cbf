"""« Délégations » in Paramètres: delegating one's mailbox (secrétariat), seeing and taking back
delegations; the delegations one holds, giving one up, the mailbox one lands in; and the page a
delegate's open inbox goes to when her access is taken back."""

from __future__ import annotations

from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from monsisra.domain import delegation
from monsisra.services import delegations, mailboxes
from monsisra.services.errors import ServiceError
from monsisra.web.common import core_of, form_actor, int_param, page_actor, render, set_flash

router = APIRouter(include_in_schema=False)
PRESET_LABELS = {"complete": "Complète : lire, préparer, envoyer de ma part, classer",
                 "brouillons": "Préparer seulement : lire, préparer des brouillons, classer (sans envoyer)",
                 "lecture": "Lecture seule"}


async def _page(request: Request, status: int = 200, **extra) -> Response:
    actor = await page_actor(request)
    core = core_of(request)
    mine = await delegations.mine(core, actor)
    boxes = await mailboxes.list_for(core, actor)
    return render(request, "accounts/delegations.html", status=status, mine=mine, boxes=boxes,
                  presets=PRESET_LABELS, **extra)


@router.get("/parametres/delegations")
async def delegations_page(request: Request) -> Response:
    return await _page(request)


@router.post("/parametres/delegations/ajouter")
async def add(request: Request) -> Response:
    actor, form = await form_actor(request)
    mailbox_id = int_param(str(form.get("mailbox_id", "")), 0) or 0
    preset = str(form.get("rights", "complete"))
    rights = sorted(delegation.PRESETS.get(preset, delegation.ALL_RIGHTS))
    who = str(form.get("account", "")).strip()
    try:
        view, created = await delegations.delegate(core_of(request), actor, mailbox_id, who, rights)
    except ServiceError as exc:
        return await _page(request, status=exc.status, error=exc.detail[:1].upper() + exc.detail[1:], account=who)
    response = RedirectResponse("/parametres/delegations", status_code=303)
    verb = "Délégation accordée à" if created else "Droits modifiés pour"
    set_flash(request, response, f"{verb} {view['name']} ({view['rights_label']}).")
    return response


@router.post("/parametres/delegations/retirer")
async def remove(request: Request) -> Response:
    actor, form = await form_actor(request)
    mailbox_id = int_param(str(form.get("mailbox_id", "")), 0) or 0
    username = actor.username if form.get("renounce") == "1" else str(form.get("account", ""))[:120]
    try:
        await delegations.revoke_delegation(core_of(request), actor, mailbox_id, username)
    except ServiceError as exc:
        return await _page(request, status=exc.status, error=exc.detail[:1].upper() + exc.detail[1:])
    response = RedirectResponse("/parametres/delegations", status_code=303)
    text = ("Vous avez renoncé à cette délégation." if username == actor.username
            else f"Délégation retirée à {username} : son accès est coupé.")
    set_flash(request, response, text)
    return response


@router.post("/parametres/delegations/arrivee")
async def landing(request: Request) -> Response:
    actor, form = await form_actor(request)
    mailbox_id = int_param(str(form.get("mailbox_id", "")))
    try:
        await mailboxes.set_landing(core_of(request), actor, mailbox_id if mailbox_id and mailbox_id > 0 else None)
    except ServiceError as exc:
        return await _page(request, status=exc.status, error=exc.detail[:1].upper() + exc.detail[1:])
    response = RedirectResponse("/parametres/delegations", status_code=303)
    set_flash(request, response, "Boîte d'arrivée enregistrée.")
    return response


@router.get("/boite/acces-retire")
async def access_taken_back(request: Request) -> Response:
    """Where a delegate's open inbox goes when the mailbox it showed is taken back from her."""
    await page_actor(request)
    address = (request.query_params.get("adresse") or "")[:254]
    response = RedirectResponse(f"/boite?{urlencode({'dossier': 'inbox'})}", status_code=303)
    set_flash(request, response, f"Votre accès à la boîte {address} a été retiré par son titulaire."
              if address else "Votre accès à une boîte a été retiré par son titulaire.")
    return response
