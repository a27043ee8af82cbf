"""Writing: new messages by kind, replies and forwards, drafts saved as one types, sending and
coming back where one was.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from monsisra.domain.addresses import PATIENT_DOMAIN
from monsisra.domain.model import Category
from monsisra.services import mailboxes, messages, printer
from monsisra.services.core import Actor
from monsisra.services.errors import NotFound, ServiceError
from monsisra.web.common import (
    CATEGORY_OF_KIND,
    COMPOSE_KINDS,
    MESSAGE_NOT_FOUND,
    came_from,
    core_of,
    error_page,
    form_actor,
    int_param,
    long_date,
    page_actor,
    recipient_names,
    render,
    return_url,
    set_flash,
    short_date,
)
from monsisra.web.patients import linked_patient, patient_from_form, typed_patient

router = APIRouter(include_in_schema=False)


async def _compose_context(request: Request, actor: Actor) -> dict[str, Any]:
    core = core_of(request)
    # « De »: the mailboxes one may write from (not those delegated read-only).
    boxes = [b for b in await mailboxes.list_for(core, actor) if b.may("draft") or b.may("send")]
    qp = request.query_params
    kind = qp.get("type", "courrier")
    if kind not in COMPOSE_KINDS:
        kind = "courrier"
    draft: dict[str, Any] = {"to": [], "cc": [], "subject": "", "body": "", "attachments": [], "draft_id": None,
                             "in_reply_to": None, "from_mailbox": int_param(qp.get("bal"))}
    src: dict[str, Any] = {}
    mode_title = None
    category_override = None
    for param, mode in (("repondre", "reply"), ("repondre_tous", "reply_all"), ("transferer", "forward"),
                        ("brouillon", "draft")):
        ref = qp.get(param)
        if not ref or ":" not in ref:
            continue
        mb, _, mid = ref.partition(":")
        if int_param(mb) is None or int_param(mid) is None:
            continue
        src = await messages.get(core, actor, int(mb), int(mid), mark_read=False)
        kind = CATEGORY_OF_KIND.get(src["category"], "courrier")
        draft["from_mailbox"] = int(mb)
        if mode in ("reply", "reply_all"):
            draft["to"] = [{"address": src["sender"]["address"], "name": src["sender"]["name"]}]
            if mode == "reply_all":
                own = {b.address for b in boxes} | {src["sender"]["address"]}
                draft["to"] += [{"address": r["address"], "name": r["name"]} for r in src["to"]
                                if r["address"] not in own]
                draft["cc"] = [{"address": r["address"], "name": r["name"]} for r in src["cc"]
                               if r["address"] not in own]
            draft["subject"] = src["subject"] if src["subject"].lower().startswith("re:") else f"Re: {src['subject']}"
            draft["body"] = "\n\n" + _quote(src)
            draft["in_reply_to"] = src["id"]
            # A reply keeps what it answers: a support request stays one (a result is answered by a letter).
            category_override = messages.reply_category(src["category"])
            mode_title = "Répondre à tous" if mode == "reply_all" else "Répondre"
        elif mode == "forward":
            mode_title = "Transférer"
            draft["subject"] = f"Tr: {src['subject']}"
            draft["body"] = "\n\n---------- Message transféré ----------\n" + _quote(src, prefix="")
            draft["attachments"] = src["attachments"]
        else:
            draft.update(to=src["to"], cc=src["cc"], subject=src["subject"], body=src["body"],
                         attachments=src["attachments"], draft_id=src["id"],
                         in_reply_to=src["thread"]["in_reply_to"])
    if draft["from_mailbox"] not in {b.id for b in boxes}:
        landing = await mailboxes.landing(core, actor)
        draft["from_mailbox"] = landing if landing in {b.id for b in boxes} else boxes[0].id if boxes else None
    title, category, picker_kind = COMPOSE_KINDS[kind]
    # A printed document: what its text suggested (patient, recipients), for the user to confirm.
    print_job = (await printer.job_for_draft(core, actor, draft["from_mailbox"], draft["draft_id"])
                 if draft["draft_id"] else None)
    title, category = mode_title or title, category_override or category
    return {"boxes": boxes, "kind": kind, "title": title, "category": category, "picker_kind": picker_kind,
            "draft": draft, "patient_domain": PATIENT_DOMAIN, "retour": came_from(request), "print_job": print_job,
            "patient": src.get("patient") if draft["draft_id"] else None}


def _quote(src: dict[str, Any], prefix: str = "> ") -> str:
    head = f"Le {long_date(src['created_at'])}, {src['sender']['name'] or src['sender']['address']} a écrit :"
    lines = (src["body"] or "").splitlines() or [""]
    return head + "\n" + "\n".join(prefix + line for line in lines)


@router.get("/ecrire")
async def compose_page(request: Request) -> Response:
    actor = await page_actor(request)
    try:
        ctx = await _compose_context(request, actor)
    except NotFound:
        return error_page(request, 404, MESSAGE_NOT_FOUND, "il n'existe pas ou n'est pas dans vos boîtes")
    ctx["patient_typed"] = await linked_patient(core_of(request), actor, int_param(request.query_params.get("patient")))
    return render(request, "compose/compose.html", **ctx)


def _compose_from_form(form: Any, draft: bool) -> messages.Compose:
    category = str(form.get("category", Category.LETTER))
    return messages.Compose(
        from_mailbox=int_param(str(form.get("from_mailbox", "")), 0) or 0,
        to=[str(v) for v in form.getlist("to") if str(v).strip()],
        cc=[str(v) for v in form.getlist("cc") if str(v).strip()],
        subject=str(form.get("subject", "")).replace("\r", " ").replace("\n", " ").strip(),
        body=str(form.get("body", "")).replace("\r\n", "\n"),
        category=category,
        attachments=[str(v) for v in form.getlist("attachments") if str(v).strip()],
        draft=draft,
        draft_id=int_param(str(form.get("draft_id") or "") or None),
        in_reply_to=int_param(str(form.get("in_reply_to") or "") or None),
        receipt_requested=form.get("receipt_requested") == "1",
        patient=patient_from_form(form),
    )


@router.post("/ecrire")
async def compose_send(request: Request) -> Response:
    actor, form = await form_actor(request)
    core = core_of(request)
    compose = _compose_from_form(form, draft=False)
    try:
        try:
            sent = await messages.send(core, actor, compose)
        except NotFound as exc:
            if compose.draft_id is None or "brouillon" not in exc.detail:
                raise
            # The draft was saved under another sending mailbox (or is gone): send without it.
            compose.draft_id = None
            sent = await messages.send(core, actor, compose)
    except ServiceError as exc:
        bad = exc.extra.get("invalid_addresses") or []
        return render(request, "compose/compose.html", status=exc.status, error=exc.detail, bad=bad,
                      bad_addresses={b.get("address") for b in bad}, patient_typed=typed_patient(form),
                      patient_errors=exc.extra.get("errors") or {},
                      **await _compose_state_from_form(request, actor, form))
    # Back where the user was (the inbox they answered from, the drafts…), with a confirmation
    # and a way to the sent message; without a known origin, to the sent message itself.
    shown = f"/boite?{urlencode({'bal': compose.from_mailbox, 'dossier': 'sent', 'ouvrir': sent['id']})}"
    retour = return_url(form.get("retour"))
    response = RedirectResponse(retour or shown, status_code=303)
    set_flash(request, response, f"Message envoyé à {recipient_names(sent['to'] + sent['cc'])}.",
              link=shown if retour else None, link_label="Voir le message envoyé")
    return response


@router.post("/ecrire/supprimer")
async def compose_discard(request: Request) -> Response:
    """« Supprimer le brouillon »: the saved draft goes to the bin; back where the user was."""
    actor, form = await form_actor(request)
    mailbox_id = int_param(str(form.get("from_mailbox") or "")) or 0
    draft_id = int_param(str(form.get("draft_id") or "") or None)
    retour = return_url(form.get("retour")) or f"/boite?{urlencode({'bal': mailbox_id, 'dossier': 'drafts'})}"
    response = RedirectResponse(retour, status_code=303)
    if draft_id is None:
        set_flash(request, response, "Message abandonné : aucun brouillon n'avait été enregistré.")
        return response
    try:
        await messages.trash(core_of(request), actor, mailbox_id, draft_id, role="draft")
    except NotFound:
        set_flash(request, response, "Ce brouillon n'existe plus (envoyé ou déjà supprimé).")
        return response
    set_flash(request, response, "Brouillon placé dans la corbeille.",
              link=f"/boite?{urlencode({'bal': mailbox_id, 'dossier': 'trash'})}", link_label="Voir la corbeille")
    return response


async def _compose_state_from_form(request: Request, actor: Actor, form: Any) -> dict[str, Any]:
    """Re-render the form as the user left it (after an error)."""
    core = core_of(request)
    boxes = await mailboxes.list_for(core, actor)
    category = str(form.get("category", Category.LETTER))
    kind = CATEGORY_OF_KIND.get(category, "courrier")
    title, category, picker_kind = COMPOSE_KINDS[kind]
    names = dict(zip(form.getlist("to"), form.getlist("to_name"), strict=False))
    draft = {
        "to": [{"address": a, "name": names.get(a, "")} for a in form.getlist("to")],
        "cc": [{"address": a, "name": ""} for a in form.getlist("cc")],
        "subject": form.get("subject", ""), "body": form.get("body", ""),
        "attachments": [{"id": i, "filename": n, "size": 0, "content_type": ""} for i, n in
                        zip(form.getlist("attachments"), form.getlist("attachment_name"), strict=False)],
        "draft_id": int_param(str(form.get("draft_id") or "") or None),
        "in_reply_to": int_param(str(form.get("in_reply_to") or "") or None),
        "from_mailbox": int_param(str(form.get("from_mailbox", ""))),
    }
    return {"boxes": boxes, "kind": kind, "title": title, "category": category, "picker_kind": picker_kind,
            "draft": draft, "patient_domain": PATIENT_DOMAIN, "retour": return_url(form.get("retour"))}


@router.post("/ecrire/brouillon")
async def compose_draft(request: Request) -> Response:
    """Autosave: replaces the previous draft (``draft_id``) and answers the new id."""
    actor, form = await form_actor(request)
    compose = _compose_from_form(form, draft=True)
    try:
        saved = await messages.send(core_of(request), actor, compose)
    except NotFound:
        # The previous draft is gone (sent or deleted elsewhere): save a new one.
        compose.draft_id = None
        saved = await messages.send(core_of(request), actor, compose)
    except ServiceError as exc:
        return JSONResponse({"error": exc.detail}, status_code=exc.status)
    return JSONResponse({"draft_id": saved["id"], "saved_at": short_date(saved["created_at"])})
