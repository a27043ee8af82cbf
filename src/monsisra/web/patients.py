"""Pages of patients (« Mes patients », the patient page with its care team, the « Dossier
partagé ») and of support requests (« Demandes d'appui »: the form, both sides' lists, take and
close). Each page calls the same service functions as the API.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from monsisra.api.deps import PathId
from monsisra.domain.ins import OID_DEMO, OID_NIA, OID_NIR, OID_TEST, PatientIdentity
from monsisra.services import (
    attachments,
    care_team,
    conversations,
    mailboxes,
    patient_record,
    patients,
    support_requests,
)
from monsisra.services.core import Actor
from monsisra.services.errors import Forbidden, NotFound, ServiceError
from monsisra.store.models import Mailbox
from monsisra.web.common import (
    TEMPLATES,
    core_of,
    error_page,
    form_actor,
    int_param,
    long_date,
    page_actor,
    render,
    set_flash,
)

router = APIRouter(include_in_schema=False)
FIELDS = ("ins", "oid", "family_name", "given_names", "birth_date", "sex", "birthplace")
PATIENT_NOT_FOUND = "Patient introuvable"


def patient_from_form(form: Any, prefix: str = "patient_") -> PatientIdentity | None:
    """The patient typed in a form (``patient_ins``…), or None when no INS was typed."""
    values = {f: str(form.get(prefix + f) or "").strip() for f in FIELDS}
    if not values["ins"]:
        return None
    return PatientIdentity(ins=values["ins"], oid=values["oid"] or OID_NIR, family_name=values["family_name"],
                           given_names=values["given_names"], birth_date=values["birth_date"] or None,
                           sex=values["sex"] or None, birthplace=values["birthplace"] or None)


def typed_patient(form: Any, prefix: str = "patient_") -> dict[str, str]:
    """What was typed, to show the form again as the user left it."""
    return {f: str(form.get(prefix + f) or "") for f in FIELDS} if form is not None else {}


OIDS = [(OID_NIR, "NIR (numéro de sécurité sociale)"), (OID_NIA, "NIA (numéro d'attente)"),
        (OID_TEST, "INS de test"), (OID_DEMO, "INS de démonstration")]
TEMPLATES.env.globals["PATIENT_OIDS"] = OIDS


async def linked_patient(core: Any, actor: Actor, patient_id: int | None) -> dict[str, str]:
    """The identity fields of a patient the actor may see (to write about them), else empty."""
    if patient_id is None:
        return {}
    try:
        p = await patients.get(core, actor, patient_id)
    except NotFound:
        return {}
    return {f: str((p.get(f) if f != "oid" else p["oid"]) or "") for f in FIELDS}


# --- « Mes patients » and registering one ---------------------------------------------------------


@router.get("/patients")
async def patients_page(request: Request) -> Response:
    actor = await page_actor(request)
    core = core_of(request)
    q = (request.query_params.get("q") or "").strip()[:200]
    items = (await patients.search(core, actor, q=q, limit=50))["items"] if q else await patients.mine(core, actor)
    return render(request, "patients/patients.html", items=items, q=q, typed={}, errors={}, oids=OIDS)


@router.post("/patients")
async def register_patient(request: Request) -> Response:
    actor, form = await form_actor(request)
    ref = patient_from_form(form) or PatientIdentity(ins="")
    try:
        item, created = await patients.register(core_of(request), actor, ref)
    except ServiceError as exc:
        errors = exc.extra.get("errors") or {"ins": exc.detail}
        items = await patients.mine(core_of(request), actor)
        return render(request, "patients/patients.html", status=exc.status, items=items, q="",
                      typed=typed_patient(form), errors=errors, oids=OIDS, error=exc.detail)
    response = RedirectResponse(f"/patients/{item['id']}", status_code=303)
    set_flash(request, response, "Patient enregistré." if created else "Ce patient était déjà connu : voici sa fiche.")
    return response


# --- the patient page, the care team, the record --------------------------------------------------


@router.get("/patients/{patient_id}")
async def patient_page(request: Request, patient_id: PathId) -> Response:
    actor = await page_actor(request)
    core = core_of(request)
    try:
        patient = await patients.get(core, actor, patient_id)
        team = await care_team.team(core, actor, patient_id, audited=False)
    except NotFound:
        return error_page(request, 404, PATIENT_NOT_FOUND, "il n'existe pas ou vous n'avez aucun lien avec lui")
    sent = await support_requests.list_requests(core, actor, role="sent")
    requests_ = [r for r in sent["items"] if (r["patient"] or {}).get("id") == patient_id]
    return render(request, "patients/patient.html", patient=patient, team=team, requests=requests_)


@router.post("/patients/{patient_id}/equipe")
async def toggle_care_team(request: Request, patient_id: PathId) -> Response:
    actor, form = await form_actor(request)
    core = core_of(request)
    join = form.get("action") == "rejoindre"
    try:
        await (care_team.join if join else care_team.leave)(core, actor, patient_id)
    except NotFound:
        return error_page(request, 404, PATIENT_NOT_FOUND, "il n'existe pas ou vous n'avez aucun lien avec lui")
    response = RedirectResponse(f"/patients/{patient_id}", status_code=303)
    set_flash(request, response, "Vous êtes déclaré(e) acteur de la prise en charge." if join
              else "Vous n'êtes plus dans l'équipe de soins de ce patient.")
    return response


@router.get("/patients/{patient_id}/dossier")
async def record_page(request: Request, patient_id: PathId) -> Response:
    actor = await page_actor(request)
    kind = request.query_params.get("type") or None
    try:
        record = await patient_record.record(core_of(request), actor, patient_id,
                                             kind=kind if kind in patient_record.KIND_LABELS else None)
    except NotFound:
        return error_page(request, 404, PATIENT_NOT_FOUND, "il n'existe pas")
    except Forbidden as exc:
        return render(request, "patients/record_refused.html", status=403, patient_id=patient_id, detail=exc.detail)
    return render(request, "patients/record.html", record=record, patient=record["patient"], kind=kind,
                  kinds=patient_record.KIND_LABELS)


@router.get("/patients/{patient_id}/dossier/conversations/{conversation_id}")
async def record_conversation(request: Request, patient_id: PathId, conversation_id: PathId) -> Response:
    """A conversation of the record, read-only, for a care-team member who does not take part."""
    actor = await page_actor(request)
    try:
        conversation = await conversations.consult(core_of(request), actor, patient_id, conversation_id,
                                                   cursor=request.query_params.get("avant") or None, limit=100)
    except NotFound:
        return error_page(request, 404, "Conversation introuvable",
                          "Elle n'existe pas, ne concerne pas ce patient, ou vous n'êtes pas acteur de sa prise en "
                          "charge.")
    for m in conversation["messages"]["items"]:
        m["day"], _, m["time"] = long_date(m["created_at"]).rpartition(" à ")
    return render(request, "patients/record_conversation.html", conversation=conversation,
                  patient=conversation["patient"])


@router.get("/patients/{patient_id}/dossier/documents/{attachment_id}")
async def record_document(request: Request, patient_id: PathId, attachment_id: str) -> Response:
    actor = await page_actor(request)
    core = core_of(request)
    from fastapi.responses import StreamingResponse

    from monsisra.api.routes import file_headers

    try:
        meta = await patient_record.document(core, actor, patient_id, attachment_id[:64])
    except (NotFound, Forbidden) as exc:
        return error_page(request, exc.status, "Document inaccessible", exc.detail)
    return StreamingResponse(core.blobs.iter_file(meta.sha256), media_type=meta.content_type,
                             headers=file_headers(meta.filename, meta.content_type, meta.size, "inline"))


# --- « Demandes d'appui » ------------------------------------------------------------------------


@router.get("/appui")
async def support_page(request: Request) -> Response:
    actor = await page_actor(request)
    role = "sent" if request.query_params.get("vue") == "envoyees" else "received"
    state = request.query_params.get("etat") or None
    state = state if state in support_requests.STATES else None
    page = await support_requests.list_requests(core_of(request), actor, role=role, state=state)
    return render(request, "patients/support_list.html", items=page["items"], role=role, state=state,
                  states=support_requests.STATE_LABELS)


async def _teams(request: Request) -> list[dict[str, str]]:
    """The resource teams of the platform (DAC, CPTS…), for the form's « Équipe » list."""
    import sqlalchemy as sa

    async with core_of(request).read() as s:
        rows = (await s.execute(sa.select(Mailbox.address, Mailbox.display_name)
                                .where(Mailbox.is_resource_team.is_(True), Mailbox.active.is_(True))
                                .order_by(Mailbox.display_name))).all()
    return [{"address": a, "name": n} for a, n in rows]


async def _form_context(request: Request, actor: Actor, **extra: Any) -> dict[str, Any]:
    core = core_of(request)
    boxes = [b for b in await mailboxes.list_for(core, actor) if b.may("send")]
    return {"teams": await _teams(request), "my_patients": await patients.mine(core, actor), "boxes": boxes,
            "oids": OIDS, "urgencies": support_requests.URGENCIES, **extra}


@router.get("/appui/nouvelle")
async def support_form(request: Request) -> Response:
    actor = await page_actor(request)
    qp = request.query_params
    ctx = await _form_context(request, actor, values={"to": qp.get("equipe", ""), "reason": "", "urgency": "normal",
                                                      "patient_id": qp.get("patient", "")},
                              typed={}, errors={})
    return render(request, "patients/support_form.html", **ctx)


@router.post("/appui/nouvelle")
async def support_send(request: Request) -> Response:
    actor, form = await form_actor(request)
    core = core_of(request)
    values = {"to": str(form.get("to") or ""), "reason": str(form.get("reason") or ""),
              "urgency": str(form.get("urgency") or "normal"), "patient_id": str(form.get("patient_id") or ""),
              "from_mailbox": str(form.get("from_mailbox") or "")}
    try:
        uploaded = []
        for f in form.getlist("documents"):
            if getattr(f, "filename", None):
                async def chunks(f=f):
                    while chunk := await f.read(1 << 16):
                        yield chunk

                uploaded.append((await attachments.upload(core, actor, f.filename, chunks())).id)
        created = await support_requests.create(core, actor, support_requests.NewRequest(
            to=values["to"], reason=values["reason"], urgency=values["urgency"],
            patient=patient_from_form(form), patient_id=int_param(values["patient_id"] or None),
            attachments=uploaded, from_mailbox=int_param(values["from_mailbox"] or None)))
    except ServiceError as exc:
        ctx = await _form_context(request, actor, values=values, typed=typed_patient(form),
                                  errors=exc.extra.get("errors") or {}, error=exc.detail)
        return render(request, "patients/support_form.html", status=exc.status, **ctx)
    response = RedirectResponse("/appui?" + urlencode({"vue": "envoyees"}), status_code=303)
    set_flash(request, response, f"Demande d'appui envoyée à {created['to']['name']}.")
    return response


@router.post("/appui/{request_id}/{action}")
async def support_action(request: Request, request_id: PathId, action: str) -> Response:
    actor, form = await form_actor(request)
    verbs = {"prendre": support_requests.take, "clore": support_requests.close}
    if action not in verbs:
        return error_page(request, 404, "Page introuvable", "action inconnue")
    back = "/appui" + ("?vue=envoyees" if form.get("vue") == "envoyees" else "")
    response = RedirectResponse(back, status_code=303)
    try:
        done = await verbs[action](core_of(request), actor, request_id)
    except ServiceError as exc:
        set_flash(request, response, exc.detail[:1].upper() + exc.detail[1:] + ".")
        return response
    set_flash(request, response, "Demande prise en charge." if done["state"] == "taken" else "Demande clôturée.")
    return response
