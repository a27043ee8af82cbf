"""What every page shares: the templates and their filters (French dates, sizes), the session and
CSRF checks of a request, one-time confirmations, the return address after an action, error pages.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from fastapi import Request
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates
from itsdangerous import BadSignature, URLSafeTimedSerializer
from jinja2 import Environment, FileSystemLoader
from markupsafe import Markup

from monsisra import __version__
from monsisra.api.deps import MAX_ID
from monsisra.domain.model import CATEGORY_LABELS, Category, View
from monsisra.services import messages
from monsisra.services.core import Actor, Core
from monsisra.services.errors import AuthFailed
from monsisra.web.session import CSRF_FIELD, CSRF_HEADER, Sessions, is_tls

TEMPLATES = Jinja2Templates(env=Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"),
                                           autoescape=True, trim_blocks=True, lstrip_blocks=True))


PARIS = ZoneInfo("Europe/Paris")


MONTHS = ["janv.", "févr.", "mars", "avr.", "mai", "juin", "juil.", "août", "sept.", "oct.", "nov.", "déc."]


ALL = "toutes"


# The left list: (key, label, view, category).
FOLDERS: list[tuple[str, str, str, str | None]] = [
    ("inbox", "Boîte de réception", View.INBOX, None),
    ("unread", "Non lus", View.UNREAD, None),
    ("all", "Tous les messages", View.ALL, None),
    ("conversation", "Conversations", View.ALL, Category.CONVERSATION),
    ("letter", "Courriers", View.ALL, Category.LETTER),
    ("mssante", "MSSanté", View.ALL, Category.MSSANTE),
    ("patient", "Échanges patient", View.ALL, Category.PATIENT),
    ("teleexpertise", "Téléexpertises", View.ALL, Category.TELEEXPERTISE),
    ("support", "Demandes d'appui", View.ALL, Category.SUPPORT),
    ("result", "Résultats", View.ALL, Category.RESULT),
    ("event", "Évènements", View.ALL, Category.EVENT),
    ("drafts", "Brouillons", View.DRAFTS, None),
    ("dgs_urgent", "DGS Urgent", View.ALL, Category.DGS_URGENT),
    ("favorites", "Favoris", View.FAVORITES, None),
    ("todo", "À traiter", View.TODO, None),
    ("sent", "Envoyés", View.SENT, None),
    ("archived", "Archivés", View.ARCHIVED, None),
    ("trash", "Corbeille", View.TRASH, None),
]


FOLDER_BY_KEY = {f[0]: f for f in FOLDERS}


COMPOSE_KINDS = {
    "courrier": ("Envoyer un courrier", Category.LETTER, "all"),
    "conversation": ("Démarrer une conversation", Category.CONVERSATION, "all"),
    "expertise": ("Demander une expertise", Category.TELEEXPERTISE, "experts"),
    "patient": ("Échanges avec un patient", Category.PATIENT, "all"),
}


CATEGORY_OF_KIND = {v[1]: k for k, v in COMPOSE_KINDS.items()}


class LoginRequired(Exception):
    """No valid session: send the browser to the login page."""


def core_of(request: Request) -> Core:
    return request.app.state.core


def sessions_of(request: Request) -> Sessions:
    return request.app.state.sessions


def client_of(request: Request) -> str:
    return request.client.host if request.client else "-"


async def page_actor(request: Request) -> Actor:
    sessions = sessions_of(request)
    token = sessions.token_of(request)
    if token is None:
        raise LoginRequired
    try:
        actor = await sessions.resolve(core_of(request), token, client_of(request))
    except AuthFailed:
        raise LoginRequired from None
    request.state.csrf = sessions.csrf_for(token)
    request.state.token = token
    return actor


def foreign_origin(request: Request) -> bool:
    """A browser names the page that sent a POST in ``Origin``; it must be this site."""
    origin = request.headers.get("origin")
    return bool(origin) and origin != "null" and urlsplit(origin).netloc != request.headers.get("host", "")


async def form_actor(request: Request) -> tuple[Actor, Any]:
    """The actor of an unsafe (POST) request, after checking its origin and CSRF token."""
    if foreign_origin(request):
        raise CsrfFailed
    actor = await page_actor(request)
    form = await request.form()
    presented = request.headers.get(CSRF_HEADER) or form.get(CSRF_FIELD)
    if not sessions_of(request).csrf_ok(request.state.token, presented if isinstance(presented, str) else None):
        raise CsrfFailed
    return actor, form


class CsrfFailed(Exception):
    pass


def is_htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


def render(request: Request, name: str, status: int = 200, **ctx: Any) -> HTMLResponse:
    ctx.setdefault("csrf", getattr(request.state, "csrf", ""))
    ctx.setdefault("version", __version__)
    flash = None if is_htmx(request) else take_flash(request)
    if flash:
        ctx["flash"] = flash
    response = TEMPLATES.TemplateResponse(request, name, ctx, status_code=status)
    if flash is not None:
        response.delete_cookie(FLASH_COOKIE, path="/", httponly=True, samesite="lax", secure=is_tls(request))
    return response


FLASH_COOKIE = "monsisra_flash"


FLASH_TTL = 300


def _flash_signer(request: Request) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(request.app.state.settings.effective_secret_key, salt="monsisra.web.flash")


def set_flash(request: Request, response: Response, text: str, link: str | None = None,
              link_label: str | None = None) -> None:
    """A confirmation for the page the browser goes to next (signed: only we write it)."""
    value = _flash_signer(request).dumps({"m": text[:500], "l": link, "ll": link_label})
    response.set_cookie(FLASH_COOKIE, value, max_age=FLASH_TTL, httponly=True, samesite="lax",
                        secure=is_tls(request), path="/")


def take_flash(request: Request) -> dict[str, str | None] | None:
    """The pending confirmation ({} when the cookie is there but unusable: it is cleared too)."""
    raw = request.cookies.get(FLASH_COOKIE)
    if not raw:
        return None
    try:
        data = _flash_signer(request).loads(raw, max_age=FLASH_TTL)
    except BadSignature:
        return {}
    if not isinstance(data, dict) or not isinstance(data.get("m"), str):
        return {}
    link = data.get("l")
    return {"text": data["m"], "link": link if isinstance(link, str) and return_url(link) else None,
            "link_label": str(data.get("ll") or "Voir")}


def return_url(value: Any) -> str | None:
    """A local page to go back to (``retour``), validated like ``next_url``: never an open redirect,
    never the writing page itself; None when unusable."""
    if not isinstance(value, str) or not value or len(value) > 2000:
        return None
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in value) or next_url(value) != value:
        return None
    if urlsplit(value).path.startswith(("/ecrire", "/connexion", "/deconnexion", "/api/", "/static/")):
        return None
    return value


def came_from(request: Request) -> str | None:
    """``retour`` of the query, else the page of our own site that linked here (no-JS fallback)."""
    explicit = return_url(request.query_params.get("retour"))
    if explicit:
        return explicit
    referer = urlsplit(request.headers.get("referer") or "")
    if referer.netloc and referer.netloc == request.headers.get("host"):
        return return_url(referer.path + (f"?{referer.query}" if referer.query else ""))
    return None


def recipient_names(recipients: list[dict[str, Any]]) -> str:
    """"Dr Bruno PETIT", "A et B", "A, B, C et 2 autres destinataires"."""
    names = [r.get("name") or r.get("address") or "" for r in recipients]
    if len(names) <= 1:
        return "".join(names)
    if len(names) <= 3:
        return f"{', '.join(names[:-1])} et {names[-1]}"
    rest, s = len(names) - 3, "s" if len(names) > 4 else ""
    return f"{', '.join(names[:3])} et {rest} autre{s} destinataire{s}"


def error_page(request: Request, status: int, title: str, detail: str) -> HTMLResponse:
    """A French error page (a fragment for htmx), the same for every failure a browser meets:
    unknown address, missing message, busy database, internal error. It reads no database."""
    detail = detail[:1].upper() + detail[1:]
    name = "layout/_pane_error.html" if is_htmx(request) else "layout/error_page.html"
    return render(request, name, status=status, title=title, detail=detail if detail != title else "")


MESSAGE_NOT_FOUND = "Message introuvable"


def short_date(value: str | None) -> str:
    """"14:20" today, "02 nov." this year, "02/11/2025" before."""
    if not value:
        return ""
    when = datetime.fromisoformat(value).astimezone(PARIS)
    now = datetime.now(PARIS)
    if when.date() == now.date():
        return when.strftime("%H:%M")
    if when.year == now.year:
        return f"{when.day:02d} {MONTHS[when.month - 1]}"
    return when.strftime("%d/%m/%Y")


def at_time(value: str | None) -> str:
    """"à 14:20" today (Paris), "le 3 nov. à 14:20" another day."""
    if not value:
        return ""
    when = datetime.fromisoformat(value).astimezone(PARIS)
    if when.date() == datetime.now(PARIS).date():
        return f"à {when.strftime('%H:%M')}"
    return f"le {when.day} {MONTHS[when.month - 1]} à {when.strftime('%H:%M')}"


def delivery_label(r: dict[str, Any]) -> str:
    """What the sender reads about one recipient (``messages.receipts`` row)."""
    state = r.get("state")
    if state == "read":
        return f"lu {at_time(r.get('read_at'))}".strip()
    if state == "retrying":
        return f"nouvel essai {at_time(r['next_attempt_at'])}" if r.get("next_attempt_at") else "nouvel essai prévu"
    if state == "failed":
        return f"échec : {r.get('detail') or 'raison inconnue'}"
    return {"delivered": "remis", "queued": "en attente", "draft": "brouillon"}.get(state or "", state or "")


def long_date(value: str | None) -> str:
    if not value:
        return ""
    when = datetime.fromisoformat(value).astimezone(PARIS)
    return f"{when.day} {MONTHS[when.month - 1]} {when.year} à {when.strftime('%H:%M')}"


def file_size(n: int) -> str:
    if n < 1024:
        return f"{n} o"
    if n < 1024 * 1024:
        return f"{n / 1024:.0f} Ko"
    return f"{n / (1024 * 1024):.1f} Mo".replace(".", ",")


def attachment_kind(content_type: str) -> str:
    if content_type == "application/pdf":
        return "pdf"
    if content_type in ("image/png", "image/jpeg", "image/gif", "image/webp"):
        return "image"
    return "file"


def safe_body(html: str | None) -> Markup:
    # Sanitised again at display: whatever path stored it, no script reaches the page.
    return Markup(messages.sanitize_html(html or ""))  # noqa: S704 - sanitised by nh3 just above


TEMPLATES.env.filters.update(short_date=short_date, long_date=long_date, file_size=file_size,
                             attachment_kind=attachment_kind, delivery_label=delivery_label, at_time=at_time)


TEMPLATES.env.globals.update(safe_body=safe_body, FOLDERS=FOLDERS, COMPOSE_KINDS=COMPOSE_KINDS, ALL=ALL,
                             CATEGORY_LABELS={str(k): v for k, v in CATEGORY_LABELS.items()})


def int_param(value: str | None, default: int | None = None) -> int | None:
    """A number from a form or query string; ``default`` unless it fits an id column."""
    try:
        number = int(value) if value is not None and len(value) <= 20 else None
    except ValueError:
        return default
    return number if number is not None and -MAX_ID <= number <= MAX_ID else default




def next_url(value: str | None) -> str:
    # Only local paths: never an open redirect.
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/boite"
