"""Administration pages: the MSSanté trust space and the outbox (more come with accounts,
broadcasts and statistics). The rules stay in the services; these pages only ask and show."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from monsisra.services import outbound, trust
from monsisra.services.errors import ServiceError
from monsisra.web.common import core_of, form_actor, page_actor, render

router = APIRouter(include_in_schema=False)


async def _mssante_page(request: Request, *, ok: str | None = None, error: str | None = None,
                        status: int = 200) -> HTMLResponse:
    actor = await page_actor(request)
    core = core_of(request)
    try:
        domains = await trust.list_domains(core, actor)
        queue = await outbound.outbox(core, actor)
    except ServiceError as exc:
        return render(request, "admin/mssante.html", status=exc.status, domains=[], outbox=[], error=exc.detail)
    return render(request, "admin/mssante.html", status=status, domains=domains, outbox=queue, ok=ok, error=error)


@router.get("/admin/mssante", response_class=HTMLResponse)
async def admin_mssante(request: Request) -> Response:
    ok = {"ajout": "Domaines ajoutés.", "retrait": "Domaine retiré."}.get(request.query_params.get("ok", ""))
    return await _mssante_page(request, ok=ok)


@router.post("/admin/mssante/domaines")
async def add_domains(request: Request) -> Response:
    actor, form = await form_actor(request)
    raw = str(form.get("domains", ""))
    domains = [d for d in raw.replace(",", "\n").split() if d]
    try:
        await trust.add(core_of(request), domains, str(form.get("note", ""))[:200], actor)
    except ServiceError as exc:
        return await _mssante_page(request, error=exc.detail, status=exc.status)
    return RedirectResponse("/admin/mssante?ok=ajout", status_code=303)


@router.post("/admin/mssante/domaines/supprimer")
async def remove_domain(request: Request) -> Response:
    actor, form = await form_actor(request)
    try:
        await trust.remove(core_of(request), str(form.get("domain", "")), actor)
    except ServiceError as exc:
        return await _mssante_page(request, error=exc.detail, status=exc.status)
    return RedirectResponse("/admin/mssante?ok=retrait", status_code=303)
