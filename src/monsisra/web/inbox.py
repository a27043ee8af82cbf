"""The inbox: mailboxes in scope, folders with their counts, the message list with its paging and
search, live refreshes of both.
"""

from __future__ import annotations

import asyncio
import heapq
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from starlette.background import BackgroundTask

from monsisra.services import accounts, mailboxes, messages, patients
from monsisra.services.core import Actor, Core
from monsisra.services.errors import NotFound
from monsisra.web import reach
from monsisra.web.common import (
    ALL,
    FOLDER_BY_KEY,
    FOLDERS,
    MESSAGE_NOT_FOUND,
    core_of,
    form_actor,
    int_param,
    is_htmx,
    page_actor,
    render,
)
from monsisra.web.reading import load_message

router = APIRouter(include_in_schema=False)


PAGE = 50


@dataclass
class Scope:
    """What the inbox shows: which mailbox(es), folder, search."""

    boxes: list[mailboxes.MailboxView]
    selected: str  # mailbox id as text, or ALL
    folder: str
    q: str

    @property
    def ids(self) -> list[int]:
        return [b.id for b in self.boxes] if self.selected == ALL else [int(self.selected)]

    @property
    def view(self) -> str:
        return FOLDER_BY_KEY[self.folder][2]

    @property
    def category(self) -> str | None:
        return FOLDER_BY_KEY[self.folder][3]

    @property
    def folder_label(self) -> str:
        return FOLDER_BY_KEY[self.folder][1]

    @property
    def current(self) -> mailboxes.MailboxView | None:
        return None if self.selected == ALL else next(b for b in self.boxes if str(b.id) == self.selected)

    @property
    def label(self) -> str:
        return "Toutes les boîtes" if self.selected == ALL else (self.current.display_name if self.current else "")

    def params(self, **extra: Any) -> str:
        values = {"bal": self.selected, "dossier": self.folder}
        if self.q:
            values["q"] = self.q
        values.update({k: v for k, v in extra.items() if v is not None})
        return urlencode(values)

    def box_name(self, mailbox_id: int) -> str:
        return next((b.display_name for b in self.boxes if b.id == mailbox_id), "")


async def make_scope(request: Request, actor: Actor, *, light: bool = False) -> Scope:
    """``light``: a fragment about one named mailbox needs no mailbox list (the service called
    next checks the access itself)."""
    qp = request.query_params
    folder = qp.get("dossier", "inbox")
    if folder not in FOLDER_BY_KEY:
        folder = "inbox"
    q = (qp.get("q") or "").strip()[:200]
    named = int_param(qp.get("bal"))
    if light and named is not None and named > 0:
        return Scope([], str(named), folder, q)
    boxes = await mailboxes.list_for(core_of(request), actor)
    selected = qp.get("bal")
    if not selected:
        # Where the account lands: its choice (a secretary: the doctor's mailbox), else the first.
        landing = await mailboxes.landing(core_of(request), actor)
        selected = str(landing) if landing is not None else (str(boxes[0].id) if boxes else ALL)
    if selected != ALL and selected not in {str(b.id) for b in boxes}:
        selected = str(boxes[0].id) if boxes else ALL
    return Scope(boxes, selected, folder, q)


async def load_counts(core: Core, actor: Actor, scope: Scope) -> dict[str, dict[str, int]]:
    """Per folder: unread and total, summed over the mailboxes in scope."""
    per_box = await asyncio.gather(*(messages.counts(core, actor, i) for i in scope.ids)) if scope.ids else []
    out = {key: {"unread": 0, "total": 0} for key in FOLDER_BY_KEY}
    for c in per_box:
        for key, _, view, category in FOLDERS:
            src = c["categories"][category] if category else c["views"][view]
            out[key]["unread"] += src["unread"]
            out[key]["total"] += src["total"]
    return out


async def load_list(core: Core, actor: Actor, scope: Scope, cursor: str | None, limit: int
                    ) -> tuple[list[dict[str, Any]], str | None, int | None]:
    """(items, next cursor for one mailbox, larger limit for "all mailboxes"); each row's patient
    carries ``care_team_me`` (the green/grey icon), read for the whole page in one query."""
    items, next_cursor, more = await _load_list(core, actor, scope, cursor, limit)
    linked = [m["patient"] for m in items if m.get("patient")]
    marks = await patients.care_team_marks(core, actor, sorted({p["id"] for p in linked}))
    for p in linked:
        p["care_team_me"] = marks.get(p["id"], False)
    return items, next_cursor, more


async def _load_list(core: Core, actor: Actor, scope: Scope, cursor: str | None, limit: int
                     ) -> tuple[list[dict[str, Any]], str | None, int | None]:
    if not scope.ids:
        return [], None, None
    if len(scope.ids) == 1:
        page = await messages.list_messages(core, actor, scope.ids[0], view=scope.view, category=scope.category,
                                            q=scope.q or None, cursor=cursor, limit=limit)
        for item in page["items"]:
            item["mailbox_id"] = scope.ids[0]
        return page["items"], page["next_cursor"], None
    # Several mailboxes: the newest of each, merged; "more" asks for a longer merge.
    pages = await asyncio.gather(*(messages.list_messages(core, actor, i, view=scope.view, category=scope.category,
                                                          q=scope.q or None, limit=limit) for i in scope.ids))
    merged: list[dict[str, Any]] = []
    more = False
    for mailbox_id, page in zip(scope.ids, pages, strict=True):
        for item in page["items"]:
            item["mailbox_id"] = mailbox_id
        merged.append(page["items"])
        more = more or page["next_cursor"] is not None
    items = list(heapq.merge(*merged, key=lambda m: m["created_at"] or "", reverse=True))
    more = more or len(items) > limit
    return items[:limit], None, (min(limit + PAGE, messages.PAGE_MAX) if more and limit < messages.PAGE_MAX else None)


@router.get("/boite")
async def inbox(request: Request) -> Response:
    actor = await page_actor(request)
    core = core_of(request)
    scope = await make_scope(request, actor)
    limit = min(int_param(request.query_params.get("n"), PAGE) or PAGE, messages.PAGE_MAX)
    account, counts, (items, cursor, more) = await asyncio.gather(
        accounts.get_account(core, actor), load_counts(core, actor, scope),
        load_list(core, actor, scope, None, limit))
    opened = None
    missing = False
    open_id = int_param(request.query_params.get("ouvrir"))
    open_box = int_param(request.query_params.get("ouvrir_bal")) or (scope.ids[0] if len(scope.ids) == 1 else None)
    if open_id and open_box:
        try:
            opened = await load_message(core, actor, open_box, open_id, from_trash=scope.folder == "trash")
        except NotFound:
            missing = True
    alerts = await reach.dgs_alerts(request, actor)  # after the message: opening an alert reads it
    response = render(request, "inbox/inbox.html", scope=scope, account=account, counts=counts, items=items,
                      cursor=cursor, more=more, msg=opened, unread=counts["inbox"]["unread"], missing=missing,
                      missing_title=MESSAGE_NOT_FOUND, dgs_alerts=alerts, alert_url=reach.opened_alert_url)
    # The directory's "active" dot: noted after the response, the user does not wait for it.
    response.background = BackgroundTask(_mark_opened, core, actor, scope.ids)
    return response


async def _mark_opened(core: Core, actor: Actor, mailbox_ids: list[int]) -> None:
    for mailbox_id in mailbox_ids:
        await mailboxes.mark_opened(core, actor, mailbox_id)


@router.get("/boite/liste")
async def inbox_list(request: Request) -> Response:
    actor = await page_actor(request)
    core = core_of(request)
    scope = await make_scope(request, actor, light=True)
    limit = min(int_param(request.query_params.get("n"), PAGE) or PAGE, messages.PAGE_MAX)
    cursor = request.query_params.get("apres")
    items, next_cursor, more = await load_list(core, actor, scope, cursor, limit)
    return render(request, "inbox/_list_items.html" if cursor else "inbox/_list.html", scope=scope, items=items,
                  cursor=next_cursor, more=more)


@router.get("/boite/compteurs")
async def inbox_counts(request: Request) -> Response:
    actor = await page_actor(request)
    core = core_of(request)
    scope = await make_scope(request, actor, light=True)
    counts = await load_counts(core, actor, scope)
    return render(request, "inbox/_nav.html", scope=scope, counts=counts, unread=counts["inbox"]["unread"])


@router.post("/absent")
async def toggle_absent(request: Request) -> Response:
    actor, form = await form_actor(request)
    account = await accounts.update_preferences(core_of(request), actor, appear_absent=form.get("absent") == "1")
    if is_htmx(request):
        return render(request, "inbox/_absent.html", account=account)
    return RedirectResponse(request.headers.get("referer") or "/boite", status_code=303)
