"""Administration pages of the gateway: the trusted-domain list and the outbox.

They reuse the web application's session, CSRF check and layout (``base.html``); the rules
stay in ``services.trust`` and ``services.outbound``.
"""

from __future__ import annotations

import functools
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from jinja2 import ChoiceLoader, Environment, FileSystemLoader

from monsisra import __version__
from monsisra.services import outbound, trust
from monsisra.services.errors import ServiceError

router = APIRouter(include_in_schema=False)
HERE = Path(__file__).parent


@functools.cache
def _templates() -> Jinja2Templates:
    """Our templates first, then the web application's (its layout, globals and filters)."""
    from monsisra.web import pages as web_pages

    web_env = web_pages.TEMPLATES.env
    env = Environment(loader=ChoiceLoader([FileSystemLoader(HERE / "templates"), web_env.loader]),
                      autoescape=True, trim_blocks=True, lstrip_blocks=True)
    env.globals.update(web_env.globals)
    env.filters.update(web_env.filters)
    return Jinja2Templates(env=env)


async def _page(request: Request, *, ok: str | None = None, error: str | None = None,
                status: int = 200) -> HTMLResponse:
    from monsisra.web.pages import page_actor

    actor = await page_actor(request)
    core = request.app.state.core
    try:
        domains = await trust.list_domains(core, actor)
        queue = await outbound.outbox(core, actor)
    except ServiceError as exc:
        return _templates().TemplateResponse(request, "gateway_admin.html", {
            "csrf": getattr(request.state, "csrf", ""), "version": __version__, "domains": [], "outbox": [],
            "error": exc.detail}, status_code=exc.status)
    return _templates().TemplateResponse(request, "gateway_admin.html", {
        "csrf": getattr(request.state, "csrf", ""), "version": __version__, "domains": domains, "outbox": queue,
        "ok": ok, "error": error}, status_code=status)


@router.get("/admin/mssante", response_class=HTMLResponse)
async def admin_page(request: Request) -> Response:
    ok = {"ajout": "Domaines ajoutés.", "retrait": "Domaine retiré."}.get(request.query_params.get("ok", ""))
    return await _page(request, ok=ok)


@router.post("/admin/mssante/domaines")
async def add_domains(request: Request) -> Response:
    from monsisra.web.pages import form_actor

    actor, form = await form_actor(request)
    raw = str(form.get("domains", ""))
    domains = [d for d in raw.replace(",", "\n").split() if d]
    try:
        await trust.add(request.app.state.core, domains, str(form.get("note", ""))[:200], actor)
    except ServiceError as exc:
        return await _page(request, error=exc.detail, status=exc.status)
    return RedirectResponse("/admin/mssante?ok=ajout", status_code=303)


@router.post("/admin/mssante/domaines/supprimer")
async def remove_domain(request: Request) -> Response:
    from monsisra.web.pages import form_actor

    actor, form = await form_actor(request)
    try:
        await trust.remove(request.app.state.core, str(form.get("domain", "")), actor)
    except ServiceError as exc:
        return await _page(request, error=exc.detail, status=exc.status)
    return RedirectResponse("/admin/mssante?ok=retrait", status_code=303)


def install(app: FastAPI) -> None:
    app.include_router(router)
