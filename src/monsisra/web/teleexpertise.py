"""Pages of tele-expertise (« Téléexpertises »): the request form from an expert's card, both
sides' lists with the state and who is awaited, the detail with the exchange and its actions,
« Facturation » and the expert service's statistics. Every rule is the service's."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from monsisra.api.deps import PathId
from monsisra.domain import teleexpertise as rules
from monsisra.services import attachments, mailboxes, teleexpertise
from monsisra.services.errors import ServiceError
from monsisra.web.common import core_of, error_page, form_actor, page_actor, render, set_flash
from monsisra.web.patients import OIDS, patient_from_form, typed_patient

router = APIRouter(include_in_schema=False)
ACTIONS = {"prendre": "assign", "demander-elements": "request_elements", "fournir-elements": "provide_elements",
           "repondre": "answer", "cloturer": "close", "refuser": "decline", "annuler": "cancel"}
DONE = {"assign": "Téléexpertise prise en charge.", "request_elements": "Éléments demandés au requérant.",
        "provide_elements": "Éléments envoyés à l'expert.", "answer": "Réponse envoyée, compte rendu transmis.",
        "close": "Téléexpertise clôturée.", "decline": "Téléexpertise refusée.", "cancel": "Demande annulée."}


async def _uploads(core: Any, actor: Any, form: Any) -> list[str]:
    ids = []
    for f in form.getlist("documents"):
        if getattr(f, "filename", None):
            async def chunks(f=f):
                while chunk := await f.read(1 << 16):
                    yield chunk

            ids.append((await attachments.upload(core, actor, f.filename, chunks())).id)
    return ids


@router.get("/teleexpertises")
async def list_page(request: Request) -> Response:
    actor = await page_actor(request)
    role = "expert" if request.query_params.get("vue") == "recues" else "requester"
    state = request.query_params.get("etat") or None
    state = state if state in rules.STATES else None
    page = await teleexpertise.list_requests(core_of(request), actor, role=role, state=state)
    services = [m for m in await mailboxes.list_for(core_of(request), actor) if m.access == "member"]
    return render(request, "teleexpertise/list.html", items=page["items"], role=role, state=state,
                  states=rules.STATE_LABELS, services=services)


@router.get("/teleexpertises/nouvelle")
async def form_page(request: Request) -> Response:
    await page_actor(request)
    values = {"expert": request.query_params.get("expert", ""), "question": "", "billing_number": "",
              "consent_by": "patient"}
    return render(request, "teleexpertise/form.html", values=values, typed={}, errors={}, oids=OIDS)


@router.post("/teleexpertises/nouvelle")
async def form_send(request: Request) -> Response:
    actor, form = await form_actor(request)
    core = core_of(request)
    values = {k: str(form.get(k) or "") for k in ("expert", "question", "billing_number", "consent_by")}
    consent = None
    if form.get("consent") == "1":
        consent = {"given": True, "by": values["consent_by"] or "patient", "at": datetime.now(UTC).isoformat()}
    try:
        created = await teleexpertise.create(core, actor, teleexpertise.NewTeleexpertise(
            expert=values["expert"], patient=patient_from_form(form), consent=consent, question=values["question"],
            billing_number=values["billing_number"], attachments=await _uploads(core, actor, form)))
    except ServiceError as exc:
        return render(request, "teleexpertise/form.html", status=exc.status, values=values,
                      typed=typed_patient(form), errors=exc.extra.get("errors") or {}, error=exc.detail, oids=OIDS)
    response = RedirectResponse(f"/teleexpertises/{created['id']}", status_code=303)
    set_flash(request, response, f"Demande de téléexpertise envoyée à {created['expert']['name']}.")
    return response


@router.get("/teleexpertises/expert")
async def expert_page(request: Request) -> Response:
    actor = await page_actor(request)
    try:
        card = await teleexpertise.expert_card(core_of(request), actor, request.query_params.get("adresse", ""))
    except ServiceError as exc:
        return error_page(request, exc.status, "Expert introuvable", exc.detail)
    return render(request, "teleexpertise/expert.html", card=card)


@router.get("/teleexpertises/experts")
async def experts_page(request: Request) -> Response:
    actor = await page_actor(request)
    q = (request.query_params.get("q") or "")[:200]
    data = await teleexpertise.experts_near(core_of(request), actor, q=q, limit=50)
    return render(request, "teleexpertise/experts.html", data=data, q=q)


@router.get("/teleexpertises/statistiques")
async def stats_page(request: Request) -> Response:
    actor = await page_actor(request)
    data = await teleexpertise.stats(core_of(request), actor)
    return render(request, "teleexpertise/stats.html", items=data["items"])


@router.get("/teleexpertises/{te_id}")
async def detail_page(request: Request, te_id: PathId) -> Response:
    actor = await page_actor(request)
    try:
        te = await teleexpertise.get(core_of(request), actor, te_id)
    except ServiceError as exc:
        return error_page(request, exc.status, "Téléexpertise introuvable", exc.detail)
    return render(request, "teleexpertise/detail.html", te=te, labels=rules.ACTION_LABELS)


@router.post("/teleexpertises/{te_id}/{action}")
async def action(request: Request, te_id: PathId, action: str) -> Response:
    actor, form = await form_actor(request)
    if action not in ACTIONS:
        return error_page(request, 404, "Page introuvable", "action inconnue")
    verb = ACTIONS[action]
    core = core_of(request)
    response = RedirectResponse(f"/teleexpertises/{te_id}", status_code=303)
    try:
        await teleexpertise.act(core, actor, te_id, verb, body=str(form.get("body") or ""),
                                attachments=await _uploads(core, actor, form),
                                billing_number=str(form.get("billing_number") or "") or None)
    except ServiceError as exc:
        set_flash(request, response, exc.detail[:1].upper() + exc.detail[1:] + ".")
        return response
    set_flash(request, response, DONE[verb])
    return response


def _declaration_from_form(form: Any) -> dict[str, Any] | None:
    """The expert fields of a card form (the same as « Ma fiche »); None when the switch is off."""
    if form.get("expert_on") != "1":
        return None
    return {"description": str(form.get("expert_description", "")), "documents": str(form.get("expert_documents", "")),
            "urgent_contact": str(form.get("expert_urgent_contact", "")),
            "specialties": [x.strip() for x in str(form.get("expert_specialties", "")).splitlines() if x.strip()],
            "answer_days": str(form.get("expert_answer_days", "") or "7")}


@router.get("/boites/{mailbox_id}/fiche")
async def service_card_page(request: Request, mailbox_id: PathId) -> Response:
    actor = await page_actor(request)
    try:
        card = await teleexpertise.service_card(core_of(request), actor, mailbox_id)
    except ServiceError as exc:
        return error_page(request, exc.status, "Boîte de service introuvable", exc.detail)
    return render(request, "teleexpertise/service_card.html", card=card, ex=card["expert"] or {},
                  saved=request.query_params.get("ok") == "1")


@router.post("/boites/{mailbox_id}/fiche")
async def service_card_save(request: Request, mailbox_id: PathId) -> Response:
    actor, form = await form_actor(request)
    core = core_of(request)
    decl = _declaration_from_form(form)
    try:
        await teleexpertise.declare_expert(core, actor, mailbox_id, decl)
    except ServiceError as exc:
        try:
            card = await teleexpertise.service_card(core, actor, mailbox_id)
        except ServiceError:
            return error_page(request, exc.status, "Boîte de service introuvable", exc.detail)
        return render(request, "teleexpertise/service_card.html", status=exc.status, card=card,
                      ex=decl or card["expert"] or {}, expert_on=decl is not None, error=exc.detail)
    return RedirectResponse(f"/boites/{mailbox_id}/fiche?ok=1", status_code=303)


@router.get("/facturation")
async def billing_page(request: Request) -> Response:
    actor = await page_actor(request)
    month = request.query_params.get("mois") or datetime.now(UTC).strftime("%Y-%m")
    try:
        data = await teleexpertise.lines(core_of(request), actor, month)
    except ServiceError as exc:
        return error_page(request, exc.status, "Facturation", exc.detail)
    return render(request, "teleexpertise/billing.html", data=data, month=data["month"])
