"""« Conversations »: the list with unread counts and the chat view (bubbles, composer, photos
from the phone camera, typing, « Vu par … », participants). The chat itself runs in
``static/conversations.js`` against the JSON API with the session cookie and CSRF header; the
pages here render the frame and handle the no-script form to start a conversation."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from monsisra.api.deps import PathId
from monsisra.services import conversations, mailboxes
from monsisra.services.errors import NotFound, ServiceError
from monsisra.web.common import core_of, error_page, form_actor, int_param, page_actor, render

router = APIRouter(include_in_schema=False)


def _addresses(raw: str) -> list[str]:
    return [a.strip() for a in raw.replace(";", ",").replace("\n", ",").split(",") if a.strip()]


async def _list_page(request: Request, actor, status: int = 200, **ctx) -> Response:
    core = core_of(request)
    listing = await conversations.list_conversations(core, actor, limit=100)
    boxes = [b for b in await mailboxes.list_for(core, actor) if b.kind != "APP" and b.may("send")]
    return render(request, "conversations/list.html", status=status, listing=listing, boxes=boxes, **ctx)


@router.get("/conversations")
async def list_page(request: Request) -> Response:
    actor = await page_actor(request)
    return await _list_page(request, actor, form={})


@router.get("/conversations/liste")
async def list_fragment(request: Request) -> Response:
    actor = await page_actor(request)
    listing = await conversations.list_conversations(core_of(request), actor, limit=100)
    return render(request, "conversations/_items.html", listing=listing)


@router.post("/conversations")
async def start(request: Request) -> Response:
    actor, form = await form_actor(request)
    values = {k: str(form.get(k) or "") for k in ("title", "participants", "body", "from_mailbox")}
    try:
        conversation_id = await conversations.start(
            core_of(request), actor, from_mailbox=int(values["from_mailbox"]) if values["from_mailbox"].isdigit()
            else None, title=values["title"], participants=_addresses(values["participants"]), body=values["body"])
    except ServiceError as exc:
        return await _list_page(request, actor, status=exc.status, form=values, error=exc.detail,
                                bad=exc.extra.get("invalid_addresses") or [])
    return RedirectResponse(f"/conversations/{conversation_id}", status_code=303)


@router.get("/conversations/{conversation_id}")
async def chat(request: Request, conversation_id: PathId) -> Response:
    actor = await page_actor(request)
    try:
        conversation = await conversations.get(core_of(request), actor, conversation_id, limit=1)
    except NotFound:
        return error_page(request, 404, "Conversation introuvable",
                          "Elle n'existe pas ou vous n'y participez pas.")
    visio = int_param(request.query_params.get("visio"))
    return render(request, "conversations/chat.html", conversation=conversation, visio=visio)
