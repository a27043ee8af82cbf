"""« Visio » pages: the call panel (inside the conversation page for a conversation's call,
alone for a teleconsultation), the teleconsultations list (book, waiting patients live, admit),
and the patient's page of a teleconsultation link (no account: camera and microphone test,
waiting room, then the call). The media run in ``static/video.js`` (WebRTC, mesh)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from monsisra.api.deps import PathId
from monsisra.services import video
from monsisra.services.errors import ServiceError
from monsisra.web.common import core_of, error_page, page_actor, render
from monsisra.web.session import is_tls

router = APIRouter(include_in_schema=False)
PATIENT_COOKIE = "monsisra_tc"


@router.get("/visio")
async def teleconsultations(request: Request) -> Response:
    actor = await page_actor(request)
    items = await video.teleconsult.list_mine(core_of(request), actor)
    return render(request, "video/teleconsultations.html", items=items)


@router.get("/visio/{call_id}")
async def call_page(request: Request, call_id: PathId) -> Response:
    actor = await page_actor(request)
    try:
        call = await video.get_call(core_of(request), actor, call_id)
    except ServiceError:
        return error_page(request, 404, "Visio introuvable", "Elle n'existe pas ou vous n'y êtes pas invité.")
    if call["context"] == "conversation":
        query = f"?visio={call_id}" + ("&ice=relay" if request.query_params.get("ice") == "relay" else "")
        return RedirectResponse(f"/conversations/{call['context_id']}{query}", status_code=303)
    back = f"/teleexpertises/{call['context_id']}" if call["context"] == "teleexpertise" else "/visio"
    return render(request, "video/call.html", call=call, back_url=back)


@router.get("/teleconsultation/{secret}")
async def patient_page(request: Request, secret: str) -> Response:
    try:
        view, cookie = await video.teleconsult.open_link(core_of(request), secret[:200],
                                                         request.cookies.get(PATIENT_COOKIE))
    except ServiceError as exc:
        title = "Téléconsultation introuvable" if exc.status == 404 else "Téléconsultation"
        return error_page(request, exc.status, title, exc.detail)
    response = render(request, "video/patient.html", tc=view, secret=secret)
    if cookie:
        response.set_cookie(PATIENT_COOKIE, cookie, max_age=7 * 24 * 3600, httponly=True, samesite="strict",
                            secure=is_tls(request), path="/")
    return response
