"""The pages of the web application (French). Each route reads the session, calls the same
service functions as the API, and renders a Jinja2 template (whole page, or a fragment for htmx).
"""

from __future__ import annotations

import asyncio
import heapq
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit
from zoneinfo import ZoneInfo

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from itsdangerous import BadSignature, URLSafeTimedSerializer
from jinja2 import Environment, FileSystemLoader
from markupsafe import Markup
from starlette.background import BackgroundTask

from monsisra import __version__
from monsisra.api.deps import MAX_ID, PathId
from monsisra.domain.addresses import PATIENT_DOMAIN
from monsisra.domain.model import CATEGORY_LABELS, Category, View
from monsisra.services import accounts, attachments, mailboxes, mdn, messages
from monsisra.services.core import Actor, Core
from monsisra.services.errors import AuthFailed, NotFound, ServiceError
from monsisra.web.session import CSRF_FIELD, CSRF_HEADER, Sessions, is_tls

TEMPLATES = Jinja2Templates(env=Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"),
                                           autoescape=True, trim_blocks=True, lstrip_blocks=True))
PARIS = ZoneInfo("Europe/Paris")
MONTHS = ["janv.", "févr.", "mars", "avr.", "mai", "juin", "juil.", "août", "sept.", "oct.", "nov.", "déc."]
ALL = "toutes"
PAGE = 50

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


# --- helpers ------------------------------------------------------------------------------


def _core(request: Request) -> Core:
    return request.app.state.core


def _sessions(request: Request) -> Sessions:
    return request.app.state.sessions


def _client(request: Request) -> str:
    return request.client.host if request.client else "-"


async def page_actor(request: Request) -> Actor:
    sessions = _sessions(request)
    token = sessions.token_of(request)
    if token is None:
        raise LoginRequired
    try:
        actor = await sessions.resolve(_core(request), token, _client(request))
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
    if not _sessions(request).csrf_ok(request.state.token, presented if isinstance(presented, str) else None):
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


# --- confirmations ("Message envoyé à …") shown once on the next page ----------------------

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
    return {"text": data["m"], "link": link if isinstance(link, str) and _return_url(link) else None,
            "link_label": str(data.get("ll") or "Voir")}


def _return_url(value: Any) -> str | None:
    """A local page to go back to (``retour``), validated like ``_next_url``: never an open redirect,
    never the writing page itself; None when unusable."""
    if not isinstance(value, str) or not value or len(value) > 2000:
        return None
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in value) or _next_url(value) != value:
        return None
    if urlsplit(value).path.startswith(("/ecrire", "/connexion", "/deconnexion", "/api/", "/static/")):
        return None
    return value


def _came_from(request: Request) -> str | None:
    """``retour`` of the query, else the page of our own site that linked here (no-JS fallback)."""
    explicit = _return_url(request.query_params.get("retour"))
    if explicit:
        return explicit
    referer = urlsplit(request.headers.get("referer") or "")
    if referer.netloc and referer.netloc == request.headers.get("host"):
        return _return_url(referer.path + (f"?{referer.query}" if referer.query else ""))
    return None


def _names(recipients: list[dict[str, Any]]) -> str:
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
    name = "_pane_error.html" if is_htmx(request) else "error_page.html"
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
                             attachment_kind=attachment_kind, delivery_label=delivery_label)
TEMPLATES.env.globals.update(safe_body=safe_body, FOLDERS=FOLDERS, COMPOSE_KINDS=COMPOSE_KINDS, ALL=ALL,
                             CATEGORY_LABELS={str(k): v for k, v in CATEGORY_LABELS.items()})


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
    named = _int(qp.get("bal"))
    if light and named is not None and named > 0:
        return Scope([], str(named), folder, q)
    boxes = await mailboxes.list_for(_core(request), actor)
    selected = qp.get("bal") or (str(boxes[0].id) if boxes else ALL)
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
    """(items, next cursor for one mailbox, larger limit for "all mailboxes")."""
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


def _int(value: str | None, default: int | None = None) -> int | None:
    """A number from a form or query string; ``default`` unless it fits an id column."""
    try:
        number = int(value) if value is not None and len(value) <= 20 else None
    except ValueError:
        return default
    return number if number is not None and -MAX_ID <= number <= MAX_ID else default


async def load_message(core: Core, actor: Actor, mailbox_id: int, message_id: int, *,
                       from_trash: bool = False) -> dict[str, Any]:
    # A message in the bin opens too (read-only), so that one can see what to restore.
    msg = await messages.get(core, actor, mailbox_id, message_id, include_deleted=True, prefer_deleted=from_trash)
    msg["mailbox_id"] = mailbox_id
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


# --- routes -------------------------------------------------------------------------------

router = APIRouter(include_in_schema=False)


@router.get("/")
async def home(request: Request) -> Response:
    return RedirectResponse("/boite" if _sessions(request).token_of(request) else "/connexion", status_code=303)


DEV_DOMAIN = "monsisra.localhost"


async def demo_hint(core: Core) -> bool:
    """On a development install with the demo data, the login page names the demo logins."""
    if core.settings.domain != DEV_DOMAIN:
        return False
    async with core.read() as session:
        return bool(await mailboxes.by_address(session, [f"alice.martin@{DEV_DOMAIN}"]))


@router.get("/connexion")
async def login_page(request: Request) -> Response:
    return render(request, "login.html", suite=_next_url(request.query_params.get("suite")),
                  demo=await demo_hint(_core(request)))


def _next_url(value: str | None) -> str:
    # Only local paths: never an open redirect.
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/boite"


@router.post("/connexion")
async def login(request: Request) -> Response:
    if foreign_origin(request):  # no login CSRF: another site cannot log the browser in
        raise CsrfFailed
    form = await request.form()
    username = str(form.get("username", "")).strip()
    password = str(form.get("password", ""))
    otp = str(form.get("otp", "")).strip() or None
    suite = _next_url(str(form.get("suite", "")))
    core = _core(request)
    sessions = _sessions(request)
    # A browser this login used before has its own failure counter (see web/session.py).
    device = sessions.device_of(request, username)
    try:
        hook = getattr(request.app.state, "login", None)
        if hook is not None:
            account = await hook(core, username, password, otp, _client(request), device=device)
        else:
            account = await accounts.authenticate(core, username, password, _client(request), device=device)
        token = await accounts.issue_token(core, account, kind="web", client=_client(request))
    except ServiceError as exc:
        response = render(request, "login.html", status=exc.status if exc.status != 401 else 400,
                          error=exc.detail, username=username, suite=suite,
                          need_otp=bool(exc.extra.get("otp_required")), demo=await demo_hint(core))
        if "retry_after" in exc.extra:
            response.headers["Retry-After"] = str(exc.extra["retry_after"])
        return response
    response = RedirectResponse(suite, status_code=303)
    sessions.set_cookie(response, request, token)
    sessions.remember_device(response, request, account.username)
    return response


@router.post("/deconnexion")
async def logout(request: Request) -> Response:
    """Always ends the session this browser holds, even without the CSRF token (a stale page)
    or from elsewhere: logging out is harmless, and leaving a session alive is not."""
    sessions = _sessions(request)
    token = sessions.token_of(request)
    if token is not None:
        await accounts.revoke_token(_core(request), token, "session terminée : déconnexion")
        sessions.forget(token)
    response = RedirectResponse("/connexion", status_code=303)
    sessions.clear_cookie(response, request)
    return response


@router.get("/boite")
async def inbox(request: Request) -> Response:
    actor = await page_actor(request)
    core = _core(request)
    scope = await make_scope(request, actor)
    limit = min(_int(request.query_params.get("n"), PAGE) or PAGE, messages.PAGE_MAX)
    account, counts, (items, cursor, more) = await asyncio.gather(
        accounts.get_account(core, actor), load_counts(core, actor, scope),
        load_list(core, actor, scope, None, limit))
    opened = None
    missing = False
    open_id = _int(request.query_params.get("ouvrir"))
    open_box = _int(request.query_params.get("ouvrir_bal")) or (scope.ids[0] if len(scope.ids) == 1 else None)
    if open_id and open_box:
        try:
            opened = await load_message(core, actor, open_box, open_id, from_trash=scope.folder == "trash")
        except NotFound:
            missing = True
    response = render(request, "inbox.html", scope=scope, account=account, counts=counts, items=items,
                      cursor=cursor, more=more, msg=opened, unread=counts["inbox"]["unread"], missing=missing,
                      missing_title=MESSAGE_NOT_FOUND)
    # The directory's "active" dot: noted after the response, the user does not wait for it.
    response.background = BackgroundTask(_mark_opened, core, actor, scope.ids)
    return response


async def _mark_opened(core: Core, actor: Actor, mailbox_ids: list[int]) -> None:
    for mailbox_id in mailbox_ids:
        await mailboxes.mark_opened(core, actor, mailbox_id)


@router.get("/boite/liste")
async def inbox_list(request: Request) -> Response:
    actor = await page_actor(request)
    core = _core(request)
    scope = await make_scope(request, actor, light=True)
    limit = min(_int(request.query_params.get("n"), PAGE) or PAGE, messages.PAGE_MAX)
    cursor = request.query_params.get("apres")
    items, next_cursor, more = await load_list(core, actor, scope, cursor, limit)
    return render(request, "_list_items.html" if cursor else "_list.html", scope=scope, items=items,
                  cursor=next_cursor, more=more)


@router.get("/boite/compteurs")
async def inbox_counts(request: Request) -> Response:
    actor = await page_actor(request)
    core = _core(request)
    scope = await make_scope(request, actor, light=True)
    counts = await load_counts(core, actor, scope)
    return render(request, "_nav.html", scope=scope, counts=counts, unread=counts["inbox"]["unread"])


@router.get("/message/{mailbox_id}/{message_id}")
async def read_message(request: Request, mailbox_id: PathId, message_id: PathId) -> Response:
    actor = await page_actor(request)
    core = _core(request)
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
        return render(request, "message_full.html", msg=msg, box_name=next(
            (b.display_name for b in boxes if b.id == mailbox_id), ""))
    return render(request, "_message.html", msg=msg)


@router.get("/message/{mailbox_id}/{message_id}/accuses")
async def message_receipts(request: Request, mailbox_id: PathId, message_id: PathId) -> Response:
    actor = await page_actor(request)
    core = _core(request)
    await messages.access_kind(core, actor, mailbox_id)
    try:
        items = await messages.receipts(core, actor, message_id)
    except NotFound:
        items = []
    return render(request, "_receipts.html", msg={"id": message_id, "mailbox_id": mailbox_id, "receipts": items})


@router.post("/message/{mailbox_id}/{message_id}/accuse")
async def message_mdn(request: Request, mailbox_id: PathId, message_id: PathId) -> Response:
    """The user's answer to "send a read receipt to that other address?" (RFC 8098)."""
    actor, form = await form_actor(request)
    state = await mdn.respond(_core(request), actor, mailbox_id, message_id, send=form.get("send") == "1")
    return render(request, "_mdn.html", msg={"id": message_id, "mailbox_id": mailbox_id, "mdn": state})


@router.post("/message/{mailbox_id}/{message_id}/etat")
async def message_state(request: Request, mailbox_id: PathId, message_id: PathId) -> Response:
    actor, form = await form_actor(request)
    changes = {k: form.get(k) == "1" for k in ("read", "favorite", "todo", "archived", "deleted") if k in form}
    # The role names the copy shown (a message sent to oneself is both in Envoyés and received).
    state = await messages.update_state(_core(request), actor, mailbox_id, message_id, changes,
                                        role=str(form.get("role") or "") or None)
    if "deleted" in changes:
        # To the bin or back: the whole pane changes (banner, actions, reply bar).
        msg = await load_message(_core(request), actor, mailbox_id, message_id, from_trash=changes["deleted"])
        response = render(request, "_message.html", msg=msg)
    else:
        response = render(request, "_actions.html", msg={"id": message_id, "mailbox_id": mailbox_id,
                                                          "state": {**state, "role": form.get("role", "in")}})
    response.headers["HX-Trigger"] = "monsisra:refresh"
    return response


@router.post("/absent")
async def toggle_absent(request: Request) -> Response:
    actor, form = await form_actor(request)
    account = await accounts.update_preferences(_core(request), actor, appear_absent=form.get("absent") == "1")
    if is_htmx(request):
        return render(request, "_absent.html", account=account)
    return RedirectResponse(request.headers.get("referer") or "/boite", status_code=303)


# --- writing ------------------------------------------------------------------------------


async def _compose_context(request: Request, actor: Actor) -> dict[str, Any]:
    core = _core(request)
    boxes = await mailboxes.list_for(core, actor)
    qp = request.query_params
    kind = qp.get("type", "courrier")
    if kind not in COMPOSE_KINDS:
        kind = "courrier"
    draft: dict[str, Any] = {"to": [], "cc": [], "subject": "", "body": "", "attachments": [], "draft_id": None,
                             "in_reply_to": None, "from_mailbox": _int(qp.get("bal"))}
    for param, mode in (("repondre", "reply"), ("transferer", "forward"), ("brouillon", "draft")):
        ref = qp.get(param)
        if not ref or ":" not in ref:
            continue
        mb, _, mid = ref.partition(":")
        if _int(mb) is None or _int(mid) is None:
            continue
        src = await messages.get(core, actor, int(mb), int(mid), mark_read=False)
        kind = CATEGORY_OF_KIND.get(src["category"], "courrier")
        draft["from_mailbox"] = int(mb)
        if mode == "reply":
            draft["to"] = [{"address": src["sender"]["address"], "name": src["sender"]["name"]}]
            draft["subject"] = src["subject"] if src["subject"].lower().startswith("re:") else f"Re: {src['subject']}"
            draft["body"] = "\n\n" + _quote(src)
            draft["in_reply_to"] = src["id"]
        elif mode == "forward":
            draft["subject"] = f"Tr: {src['subject']}"
            draft["body"] = "\n\n---------- Message transféré ----------\n" + _quote(src, prefix="")
            draft["attachments"] = src["attachments"]
        else:
            draft.update(to=src["to"], cc=src["cc"], subject=src["subject"], body=src["body"],
                         attachments=src["attachments"], draft_id=src["id"],
                         in_reply_to=src["thread"]["in_reply_to"])
    if draft["from_mailbox"] not in {b.id for b in boxes}:
        draft["from_mailbox"] = boxes[0].id if boxes else None
    title, category, picker_kind = COMPOSE_KINDS[kind]
    return {"boxes": boxes, "kind": kind, "title": title, "category": category, "picker_kind": picker_kind,
            "draft": draft, "patient_domain": PATIENT_DOMAIN, "retour": _came_from(request)}


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
    return render(request, "compose.html", **ctx)


def _compose_from_form(form: Any, draft: bool) -> messages.Compose:
    category = str(form.get("category", Category.LETTER))
    return messages.Compose(
        from_mailbox=_int(str(form.get("from_mailbox", "")), 0) or 0,
        to=[str(v) for v in form.getlist("to") if str(v).strip()],
        cc=[str(v) for v in form.getlist("cc") if str(v).strip()],
        subject=str(form.get("subject", "")).replace("\r", " ").replace("\n", " ").strip(),
        body=str(form.get("body", "")).replace("\r\n", "\n"),
        category=category,
        attachments=[str(v) for v in form.getlist("attachments") if str(v).strip()],
        draft=draft,
        draft_id=_int(str(form.get("draft_id") or "") or None),
        in_reply_to=_int(str(form.get("in_reply_to") or "") or None),
        receipt_requested=form.get("receipt_requested") == "1",
    )


@router.post("/ecrire")
async def compose_send(request: Request) -> Response:
    actor, form = await form_actor(request)
    core = _core(request)
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
        return render(request, "compose.html", status=exc.status, error=exc.detail, bad=bad,
                      bad_addresses={b.get("address") for b in bad},
                      **await _compose_state_from_form(request, actor, form))
    # Back where the user was (the inbox they answered from, the drafts…), with a confirmation
    # and a way to the sent message; without a known origin, to the sent message itself.
    shown = f"/boite?{urlencode({'bal': compose.from_mailbox, 'dossier': 'sent', 'ouvrir': sent['id']})}"
    retour = _return_url(form.get("retour"))
    response = RedirectResponse(retour or shown, status_code=303)
    set_flash(request, response, f"Message envoyé à {_names(sent['to'] + sent['cc'])}.",
              link=shown if retour else None, link_label="Voir le message envoyé")
    return response


@router.post("/ecrire/supprimer")
async def compose_discard(request: Request) -> Response:
    """« Supprimer le brouillon »: the saved draft goes to the bin; back where the user was."""
    actor, form = await form_actor(request)
    mailbox_id = _int(str(form.get("from_mailbox") or "")) or 0
    draft_id = _int(str(form.get("draft_id") or "") or None)
    retour = _return_url(form.get("retour")) or f"/boite?{urlencode({'bal': mailbox_id, 'dossier': 'drafts'})}"
    response = RedirectResponse(retour, status_code=303)
    if draft_id is None:
        set_flash(request, response, "Message abandonné : aucun brouillon n'avait été enregistré.")
        return response
    try:
        await messages.trash(_core(request), actor, mailbox_id, draft_id, role="draft")
    except NotFound:
        set_flash(request, response, "Ce brouillon n'existe plus (envoyé ou déjà supprimé).")
        return response
    set_flash(request, response, "Brouillon placé dans la corbeille.",
              link=f"/boite?{urlencode({'bal': mailbox_id, 'dossier': 'trash'})}", link_label="Voir la corbeille")
    return response


async def _compose_state_from_form(request: Request, actor: Actor, form: Any) -> dict[str, Any]:
    """Re-render the form as the user left it (after an error)."""
    core = _core(request)
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
        "draft_id": _int(str(form.get("draft_id") or "") or None),
        "in_reply_to": _int(str(form.get("in_reply_to") or "") or None),
        "from_mailbox": _int(str(form.get("from_mailbox", ""))),
    }
    return {"boxes": boxes, "kind": kind, "title": title, "category": category, "picker_kind": picker_kind,
            "draft": draft, "patient_domain": PATIENT_DOMAIN, "retour": _return_url(form.get("retour"))}


@router.post("/ecrire/brouillon")
async def compose_draft(request: Request) -> Response:
    """Autosave: replaces the previous draft (``draft_id``) and answers the new id."""
    actor, form = await form_actor(request)
    compose = _compose_from_form(form, draft=True)
    try:
        saved = await messages.send(_core(request), actor, compose)
    except NotFound:
        # The previous draft is gone (sent or deleted elsewhere): save a new one.
        compose.draft_id = None
        saved = await messages.send(_core(request), actor, compose)
    except ServiceError as exc:
        return JSONResponse({"error": exc.detail}, status_code=exc.status)
    return JSONResponse({"draft_id": saved["id"], "saved_at": short_date(saved["created_at"])})


# --- settings and profile -----------------------------------------------------------------


@router.get("/parametres")
async def settings_page(request: Request) -> Response:
    actor = await page_actor(request)
    account = await accounts.get_account(_core(request), actor)
    return render(request, "settings.html", account=accounts.account_dict(account),
                  saved=request.query_params.get("ok") == "1")


@router.post("/parametres")
async def settings_save(request: Request) -> Response:
    actor, form = await form_actor(request)
    chosen = [str(c) for c in form.getlist("categories")]
    try:
        await accounts.update_preferences(_core(request), actor, inbox_categories=chosen,
                                          appear_absent=form.get("appear_absent") == "1")
    except ServiceError as exc:
        account = await accounts.get_account(_core(request), actor)
        return render(request, "settings.html", status=exc.status, account=accounts.account_dict(account),
                      error=exc.detail)
    return RedirectResponse("/parametres?ok=1", status_code=303)


MODALITY_LABELS = {
    "new_patients": "Accepte de nouveaux patients", "unscheduled_care": "Soins non programmés",
    "home_visits": "Visites à domicile", "teleconsultation": "Téléconsultation", "telecare": "Télésoin",
    "teleexpertise": "Téléexpertise", "weekends_holidays": "Week-ends et jours fériés",
    "night_on_call": "Gardes de nuit",
}


def _directory():
    """The directory service (issue 3), or None on an installation without it."""
    try:
        from monsisra.services import directory
    except ImportError:
        return None
    return directory


@router.get("/profil")
async def profile_page(request: Request) -> Response:
    actor = await page_actor(request)
    directory = _directory()
    card = await directory.get_my_profile(_core(request), actor) if directory else None
    return render(request, "profile.html", card=card, MODALITY_LABELS=MODALITY_LABELS,
                  saved=request.query_params.get("ok") == "1")


@router.post("/profil")
async def profile_save(request: Request) -> Response:
    actor, form = await form_actor(request)
    directory = _directory()
    if directory is None:
        return RedirectResponse("/profil", status_code=303)
    core = _core(request)
    card = await directory.get_my_profile(core, actor)
    chosen = set(form.getlist("modalities"))
    changes: dict[str, Any] = {
        "modalities": {k: k in chosen for k in card["modalities"]},
        **{k: str(form.get(k, "")) for k in ("competences", "activities", "equipment", "notification_email",
                                              "notification_phone")},
    }
    postcode, commune = str(form.get("postcode", "")).strip(), str(form.get("commune", "")).strip()
    current = card.get("commune") or {}
    if postcode != (card.get("postcode") or "") or commune != (current.get("name") or ""):
        changes.update(postcode=postcode, commune=commune)
    try:
        await directory.update_my_profile(core, actor, changes)
    except ServiceError as exc:
        card.update({k: v for k, v in changes.items() if k not in ("modalities", "commune")})
        return render(request, "profile.html", status=exc.status, card=card, MODALITY_LABELS=MODALITY_LABELS,
                      error=exc.detail)
    return RedirectResponse("/profil?ok=1", status_code=303)


def install(app: FastAPI) -> None:
    app.include_router(router)
    app.state.error_page = error_page

    @app.exception_handler(LoginRequired)
    async def _login_required(request: Request, exc: LoginRequired) -> Response:
        suite = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        target = "/connexion?" + urlencode({"suite": suite if request.method == "GET" else "/boite"})
        if is_htmx(request):
            return Response(status_code=204, headers={"HX-Redirect": target})
        return RedirectResponse(target, status_code=303)

    @app.exception_handler(CsrfFailed)
    async def _csrf(request: Request, exc: CsrfFailed) -> Response:
        return HTMLResponse("<p>Jeton de sécurité invalide : rechargez la page.</p>", status_code=403)
