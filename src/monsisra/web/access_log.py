"""« Journal d'accès »: who read, sent or acted in the account's mailboxes, and its own logins."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from monsisra.services import audit
from monsisra.services.errors import Invalid
from monsisra.web.common import core_of, page_actor, render

router = APIRouter(include_in_schema=False)


@router.get("/journal")
async def access_log_page(request: Request) -> Response:
    actor = await page_actor(request)
    others = request.query_params.get("autres") == "1"
    cursor = (request.query_params.get("avant") or "")[:64] or None
    try:
        page = await audit.access_log(core_of(request), actor, cursor=cursor, limit=50, others_only=others)
    except Invalid:
        page = await audit.access_log(core_of(request), actor, limit=50, others_only=others)
    return render(request, "accounts/access_log.html", items=page["items"], next_cursor=page["next_cursor"],
                  others=others)
