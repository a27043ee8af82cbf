"""Reading a message in the pane or full page: its thread, receipts and delivery states, attached
messages, the read receipt asked by a remote sender, flags and the bin.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from monsisra.api.deps import PathId
from monsisra.domain.model import Category
from monsisra.services import attachments, mailboxes, mdn, messages, patients
from monsisra.services.core import Actor, Core
from monsisra.services.errors import NotFound, ServiceError
from monsisra.web.common import MESSAGE_NOT_FOUND, core_of, error_page, form_actor, is_htmx, page_actor, render

router = APIRouter(include_in_schema=False)


async def load_message(core: Core, actor: Actor, mailbox_id: int, message_id: int, *,
                       from_trash: bool = False) -> dict[str, Any]:
    # A message in the bin opens too (read-only), so that one can see what to restore.
    msg = await messages.get(core, actor, mailbox_id, message_id, include_deleted=True, prefer_deleted=from_trash)
    msg["mailbox_id"] = mailbox_id
    if msg.get("patient"):
        # The care-team icon (green: the reader follows this patient).
        msg["patient"]["care_team_me"] = await patients.in_care_team(core, actor, msg["patient"]["id"])
    msg["receipts"] = await _receipts(core, actor, msg)
    # The thread is shown where exchanges happen: a reply, or a conversation, expertise or
    # support request (a plain letter or result usually stands alone: no extra queries for it).
    thread = msg.get("thread") or {}
    threaded = thread.get("in_reply_to") or msg["category"] in THREADED
    others = await messages.thread(core, actor, mailbox_id, thread["id"]) if threaded and thread.get("id") else []
    msg["thread_items"] = [m for m in others if m["id"] != msg["id"]]
    # An attached message (a forwarded e-mail) is shown as a message: sender, date, subject, text,
    # its own attachments; its .eml stays downloadable as the attachment it is.
    msg["embedded"] = {}
    for a in msg["attachments"]:
        if a["content_type"] in attachments.EML_TYPES:
            try:
                msg["embedded"][a["id"]] = await attachments.embedded_message(core, actor, a["id"])
            except ServiceError:
                msg["embedded"][a["id"]] = None
    return msg


THREADED = {Category.CONVERSATION, Category.TELEEXPERTISE, Category.SUPPORT, Category.PATIENT}


async def _receipts(core: Core, actor: Actor, msg: dict[str, Any]) -> list[dict[str, Any]] | None:
    if msg["state"]["role"] != "sent":
        return None
    try:
        return await messages.receipts(core, actor, msg["id"])
    except NotFound:
        return None


@router.get("/message/{mailbox_id}/{message_id}")
async def read_message(request: Request, mailbox_id: PathId, message_id: PathId) -> Response:
    actor = await page_actor(request)
    core = core_of(request)
    full = request.query_params.get("plein") == "1"
    if not is_htmx(request) and not full:
        return RedirectResponse(f"/boite?{urlencode({'bal': mailbox_id, 'ouvrir': message_id})}", status_code=303)
    try:
        msg = await load_message(core, actor, mailbox_id, message_id,
                                 from_trash=request.query_params.get("corbeille") == "1")
    except NotFound:
        # Someone else's mailbox, someone else's message or no message: one answer for all.
        return error_page(request, 404, MESSAGE_NOT_FOUND, "il n'existe pas ou n'est pas dans vos boîtes")
    if full:
        boxes = await mailboxes.list_for(core, actor)
        return render(request, "reading/message_full.html", msg=msg, box_name=next(
            (b.display_name for b in boxes if b.id == mailbox_id), ""))
    return render(request, "reading/_message.html", msg=msg)


@router.get("/message/{mailbox_id}/{message_id}/accuses")
async def message_receipts(request: Request, mailbox_id: PathId, message_id: PathId) -> Response:
    actor = await page_actor(request)
    core = core_of(request)
    await messages.access_kind(core, actor, mailbox_id)
    try:
        items = await messages.receipts(core, actor, message_id)
    except NotFound:
        items = []
    return render(request, "reading/_receipts.html",
                  msg={"id": message_id, "mailbox_id": mailbox_id, "receipts": items})


@router.post("/message/{mailbox_id}/{message_id}/accuse")
async def message_mdn(request: Request, mailbox_id: PathId, message_id: PathId) -> Response:
    """The user's answer to "send a read receipt to that other address?" (RFC 8098)."""
    actor, form = await form_actor(request)
    state = await mdn.respond(core_of(request), actor, mailbox_id, message_id, send=form.get("send") == "1")
    return render(request, "reading/_mdn.html", msg={"id": message_id, "mailbox_id": mailbox_id, "mdn": state})


@router.post("/message/{mailbox_id}/{message_id}/etat")
async def message_state(request: Request, mailbox_id: PathId, message_id: PathId) -> Response:
    actor, form = await form_actor(request)
    changes = {k: form.get(k) == "1" for k in ("read", "favorite", "todo", "archived", "deleted") if k in form}
    # The role names the copy shown (a message sent to oneself is both in Envoyés and received).
    state = await messages.update_state(core_of(request), actor, mailbox_id, message_id, changes,
                                        role=str(form.get("role") or "") or None)
    if "deleted" in changes:
        # To the bin or back: the whole pane changes (banner, actions, reply bar).
        msg = await load_message(core_of(request), actor, mailbox_id, message_id, from_trash=changes["deleted"])
        response = render(request, "reading/_message.html", msg=msg)
    else:
        response = render(request, "reading/_actions.html", msg={"id": message_id, "mailbox_id": mailbox_id,
                                                          "state": {**state, "role": form.get("role", "in")}})
    response.headers["HX-Trigger"] = "monsisra:refresh"
    return response
