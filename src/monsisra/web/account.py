"""« Paramètres » (inbox categories, absence) and « Ma fiche » (the directory card).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from monsisra.services import accounts
from monsisra.services.errors import ServiceError
from monsisra.web.common import core_of, form_actor, page_actor, render

router = APIRouter(include_in_schema=False)


@router.get("/parametres")
async def settings_page(request: Request) -> Response:
    actor = await page_actor(request)
    account = await accounts.get_account(core_of(request), actor)
    return render(request, "account/settings.html", account=accounts.account_dict(account),
                  saved=request.query_params.get("ok") == "1")


@router.post("/parametres")
async def settings_save(request: Request) -> Response:
    actor, form = await form_actor(request)
    chosen = [str(c) for c in form.getlist("categories")]
    try:
        await accounts.update_preferences(core_of(request), actor, inbox_categories=chosen,
                                          appear_absent=form.get("appear_absent") == "1")
    except ServiceError as exc:
        account = await accounts.get_account(core_of(request), actor)
        return render(request, "account/settings.html", status=exc.status, account=accounts.account_dict(account),
                      error=exc.detail)
    return RedirectResponse("/parametres?ok=1", status_code=303)


MODALITY_LABELS = {
    "new_patients": "Accepte de nouveaux patients", "unscheduled_care": "Soins non programmés",
    "home_visits": "Visites à domicile", "teleconsultation": "Téléconsultation", "telecare": "Télésoin",
    "teleexpertise": "Téléexpertise", "weekends_holidays": "Week-ends et jours fériés",
    "night_on_call": "Gardes de nuit",
}


def _directory():
    """The directory service (issue 3), or None on an installation without it."""
    try:
        from monsisra.services import directory
    except ImportError:
        return None
    return directory


@router.get("/profil")
async def profile_page(request: Request) -> Response:
    actor = await page_actor(request)
    directory = _directory()
    card = await directory.get_my_profile(core_of(request), actor) if directory else None
    return render(request, "account/profile.html", card=card, MODALITY_LABELS=MODALITY_LABELS,
                  saved=request.query_params.get("ok") == "1")


@router.post("/profil")
async def profile_save(request: Request) -> Response:
    actor, form = await form_actor(request)
    directory = _directory()
    if directory is None:
        return RedirectResponse("/profil", status_code=303)
    core = core_of(request)
    card = await directory.get_my_profile(core, actor)
    chosen = set(form.getlist("modalities"))
    changes: dict[str, Any] = {
        "modalities": {k: k in chosen for k in card["modalities"]},
        **{k: str(form.get(k, "")) for k in ("competences", "activities", "equipment", "notification_email",
                                              "notification_phone")},
    }
    if form.get("expert_on") == "1":
        changes["expert"] = {
            "description": str(form.get("expert_description", "")), "documents": str(form.get("expert_documents", "")),
            "urgent_contact": str(form.get("expert_urgent_contact", "")),
            "specialties": [x.strip() for x in str(form.get("expert_specialties", "")).splitlines() if x.strip()],
            "answer_days": str(form.get("expert_answer_days", "") or "7")}
    elif card.get("expert"):
        changes["expert"] = None
    postcode, commune = str(form.get("postcode", "")).strip(), str(form.get("commune", "")).strip()
    current = card.get("commune") or {}
    if postcode != (card.get("postcode") or "") or commune != (current.get("name") or ""):
        changes.update(postcode=postcode, commune=commune)
    try:
        await directory.update_my_profile(core, actor, changes)
    except ServiceError as exc:
        card.update({k: v for k, v in changes.items() if k not in ("modalities", "commune", "expert")})
        return render(request, "account/profile.html", status=exc.status, card=card, MODALITY_LABELS=MODALITY_LABELS,
                      error=exc.detail)
    return RedirectResponse("/profil?ok=1", status_code=303)
