"""RFC 9457 problem details for every error; no stack trace ever reaches a client.

API paths (``/api/``, ``/fhir/``, ``/openapi.json``) always answer problem JSON. Any other path
asked for by a browser gets a French HTML page instead, rendered by the hook the web
application registers as ``app.state.error_page``; without it, problem JSON everywhere.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from monsisra.services.errors import ServiceError
from monsisra.store.db import is_unavailable

log = logging.getLogger("monsisra.api")
PROBLEM = "application/problem+json"
API_PREFIXES = ("/api/", "/fhir/", "/openapi.json")
RETRY_AFTER_SECONDS = 5
UNAVAILABLE = "base de données momentanément indisponible, réessayez dans quelques secondes"

_TITLES = {400: "Requête invalide", 401: "Authentification requise", 403: "Accès refusé", 404: "Introuvable",
           405: "Méthode non autorisée", 406: "Format non disponible", 409: "Conflit", 413: "Trop volumineux",
           415: "Type non pris en charge", 422: "Données invalides", 429: "Trop de tentatives",
           500: "Erreur interne", 503: "Service momentanément indisponible"}
# Framework errors (Starlette, FastAPI) carry English details: clients get these instead.
_HTTP_DETAILS = {400: "requête mal formée", 404: "ressource introuvable", 405: "méthode non autorisée",
                 406: "format de réponse non disponible", 413: "requête trop volumineuse",
                 415: "type de contenu non pris en charge"}

# ``(request, status, title, detail) -> Response``: the web application's French error page.
ErrorPage = Callable[[Request, int, str, str], Response]


def problem(status: int, detail: str, title: str | None = None, headers: dict | None = None, **extra) -> JSONResponse:
    body = {"type": "about:blank", "title": title or _TITLES.get(status, "Erreur"), "status": status,
            "detail": detail, **extra}
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def is_api_path(path: str) -> bool:
    return path.startswith(API_PREFIXES) or path in ("/api", "/fhir")


def _quality(accept: str, wanted: tuple[str, ...]) -> float:
    """The highest ``q`` the Accept header gives one of ``wanted`` (exact types only)."""
    best = 0.0
    for item in accept.split(","):
        media, *params = (p.strip() for p in item.split(";"))
        if media.lower() not in wanted:
            continue
        q = 1.0
        for p in params:
            name, _, value = p.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        best = max(best, q)
    return best


def wants_html(request: Request) -> bool:
    """A browser's request for a page: any non-API path, unless the client asks for JSON first."""
    if is_api_path(request.url.path):
        return False
    if request.headers.get("hx-request") == "true":
        return True
    accept = request.headers.get("accept", "")
    json_q = _quality(accept, ("application/json", "application/problem+json"))
    return json_q == 0.0 or _quality(accept, ("text/html", "application/xhtml+xml")) >= json_q


def respond(request: Request, status: int, detail: str, title: str | None = None,
            headers: dict[str, str] | None = None, **extra: Any) -> Response:
    """Problem JSON, or the French error page when a browser asked for a page."""
    page: ErrorPage | None = getattr(request.app.state, "error_page", None) if "app" in request.scope else None
    if page is not None and wants_html(request):
        response = page(request, status, title or _TITLES.get(status, "Erreur"), detail)
        response.headers.update(headers or {})
        return response
    return problem(status, detail, title, headers=headers, **extra)


def unavailable(request: Request) -> Response:
    return respond(request, 503, UNAVAILABLE, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


def crashed(request: Request, exc: BaseException) -> Response:
    """The answer to an unexpected exception: 503 when the database is busy or unreachable
    (a retry will do), else 500; logged once, without the request's query or body."""
    if is_unavailable(exc):
        log.warning("database unavailable on %s %s: %s", request.method, request.url.path, type(exc).__name__)
        return unavailable(request)
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return respond(request, 500, "une erreur interne est survenue ; elle a été journalisée")


# --- validation errors in French ---------------------------------------------------------------

_PLAIN = {
    "missing": "champ obligatoire", "missing_argument": "champ obligatoire",
    "missing_keyword_only_argument": "champ obligatoire", "missing_positional_only_argument": "champ obligatoire",
    "string_type": "texte attendu", "string_unicode": "texte Unicode valide attendu",
    "string_not_ascii": "texte ASCII attendu", "string_sub_type": "texte attendu",
    "int_type": "nombre entier attendu", "int_parsing": "nombre entier attendu",
    "int_from_float": "nombre entier attendu (sans partie décimale)",
    "int_parsing_size": "nombre entier trop grand",
    "float_type": "nombre attendu", "float_parsing": "nombre attendu", "finite_number": "nombre fini attendu",
    "decimal_type": "nombre décimal attendu", "decimal_parsing": "nombre décimal attendu",
    "bool_type": "booléen attendu (true ou false)", "bool_parsing": "booléen attendu (true ou false)",
    "list_type": "liste attendue", "tuple_type": "liste attendue", "set_type": "liste attendue",
    "frozen_set_type": "liste attendue", "deque_type": "liste attendue", "iterable_type": "liste attendue",
    "dict_type": "objet attendu", "mapping_type": "objet attendu", "model_type": "objet attendu",
    "model_attributes_type": "objet attendu", "dataclass_type": "objet attendu",
    "dataclass_exact_type": "objet attendu", "arguments_type": "objet attendu",
    "json_invalid": "JSON invalide", "json_type": "JSON attendu",
    "extra_forbidden": "champ inconnu", "unexpected_keyword_argument": "champ inconnu",
    "none_required": "aucune valeur attendue", "frozen_field": "champ non modifiable",
    "frozen_instance": "objet non modifiable",
    "bytes_type": "données binaires attendues", "bytes_invalid_encoding": "encodage des données invalide",
    "date_type": "date attendue (AAAA-MM-JJ)", "date_parsing": "date attendue (AAAA-MM-JJ)",
    "date_from_datetime_parsing": "date attendue (AAAA-MM-JJ)",
    "date_from_datetime_inexact": "date sans heure attendue",
    "date_past": "date passée attendue", "date_future": "date future attendue",
    "time_type": "heure attendue (HH:MM)", "time_parsing": "heure attendue (HH:MM)",
    "datetime_type": "date et heure attendues (ISO 8601)", "datetime_parsing": "date et heure attendues (ISO 8601)",
    "datetime_from_date_parsing": "date et heure attendues (ISO 8601)",
    "datetime_object_invalid": "date et heure invalides",
    "datetime_past": "date passée attendue", "datetime_future": "date future attendue",
    "timezone_naive": "date sans fuseau horaire attendue", "timezone_aware": "date avec fuseau horaire attendue",
    "time_delta_type": "durée attendue", "time_delta_parsing": "durée attendue",
    "url_type": "adresse web attendue", "url_parsing": "adresse web invalide",
    "url_syntax_violation": "adresse web invalide", "url_too_long": "adresse web trop longue",
    "url_scheme": "schéma d'adresse web non autorisé",
    "uuid_type": "UUID attendu", "uuid_parsing": "UUID invalide", "uuid_version": "version d'UUID non acceptée",
    "union_tag_invalid": "type d'objet inconnu",
    "union_tag_not_found": "type d'objet manquant", "recursion_loop": "structure récursive refusée",
    "recursion_depth_exceeded": "structure trop imbriquée", "string_pattern_mismatch": "format invalide",
    "multiple_argument_values": "champ donné plusieurs fois",
}


def _plural(n: Any, one: str, many: str) -> str:
    return one if n == 1 else many


def _choices(expected: Any) -> str:
    # pydantic writes "'a', 'b' or 'c'": keep the values, say it in French.
    return str(expected).replace(" or ", " ou ")


def french_message(error: dict[str, Any]) -> str:
    """One pydantic error in French, by its ``type`` and its context; never its English ``msg``."""
    kind = str(error.get("type", ""))
    ctx = error.get("ctx") or {}
    if kind in _PLAIN:
        return _PLAIN[kind]
    if kind == "literal_error":
        return f"valeur attendue parmi : {_choices(ctx.get('expected', ''))}"
    if kind == "enum":
        return f"valeur attendue parmi : {_choices(ctx.get('expected', ''))}"
    if kind == "string_too_short":
        n = ctx.get("min_length")
        return f"texte trop court : au moins {n} {_plural(n, 'caractère', 'caractères')}"
    if kind == "string_too_long":
        n = ctx.get("max_length")
        return f"texte trop long : au plus {n} {_plural(n, 'caractère', 'caractères')}"
    if kind in ("bytes_too_short", "bytes_too_long"):
        n = ctx.get("min_length", ctx.get("max_length"))
        return f"données trop {'courtes' if kind == 'bytes_too_short' else 'longues'} ({n} octets)"
    if kind == "too_short":
        n = ctx.get("min_length")
        return f"trop peu d'éléments : au moins {n} {_plural(n, 'élément', 'éléments')}"
    if kind == "too_long":
        n = ctx.get("max_length")
        return f"trop d'éléments : au plus {n} {_plural(n, 'élément', 'éléments')}"
    bounds = {"greater_than": ("gt", "supérieur à"), "greater_than_equal": ("ge", "supérieur ou égal à"),
              "less_than": ("lt", "inférieur à"), "less_than_equal": ("le", "inférieur ou égal à")}
    if kind in bounds:
        key, words = bounds[kind]
        return f"nombre {words} {ctx.get(key)} attendu"
    if kind == "multiple_of":
        return f"multiple de {ctx.get('multiple_of')} attendu"
    if kind in ("decimal_max_digits", "decimal_max_places", "decimal_whole_digits"):
        return "nombre décimal trop long"
    return "valeur invalide"


def french_errors(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"loc": [str(p) for p in e.get("loc", ())], "msg": french_message(e)} for e in errors]


def _field(loc: list[str]) -> str:
    # ["body", "to", "0"] → "to.0"; a bare ["body"] names the whole body.
    if not loc:
        return ""
    if len(loc) == 1:
        return {"body": "corps de la requête", "query": "paramètres", "path": "chemin"}.get(loc[0], loc[0])
    return ".".join(loc[1:])


# --- catch-all ---------------------------------------------------------------------------------


class CatchAllMiddleware:
    """Innermost: answers any exception the routes let through (500, or 503 when the database is
    locked or unreachable) and returns normally. Starlette's own ``ServerErrorMiddleware``
    re-raises after answering, and uvicorn then closes the keep-alive connection."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception as exc:
            request = Request(scope)
            if started:
                # The response is out (or half out: uvicorn then closes this connection); what
                # failed is after it, such as a background task: only the log can say so.
                if is_unavailable(exc):
                    log.warning("database unavailable after the response on %s %s: %s", request.method,
                                request.url.path, type(exc).__name__)
                else:
                    log.error("error after the response began on %s %s", request.method, request.url.path,
                              exc_info=exc)
                return
            response = crashed(request, exc)
            await response(scope, receive, send)


def install(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service(request: Request, exc: ServiceError):
        headers = {}
        if exc.status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        if "retry_after" in exc.extra:
            headers["Retry-After"] = str(exc.extra["retry_after"])
        extra = {k: v for k, v in exc.extra.items() if k != "retry_after"}
        return respond(request, exc.status, exc.detail, exc.title, headers=headers or None, **extra)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        raw = list(exc.errors())
        errors = french_errors(raw)
        if wants_html(request) and any(e["loc"][:1] == ["path"] for e in errors):
            # A page address with a malformed id names no page.
            return respond(request, 404, "page introuvable", "Page introuvable")
        # A JSON syntax error is located by its character position: it names the body, not a field.
        detail = "; ".join(f"{_field(e['loc'][:1] if r.get('type') == 'json_invalid' else e['loc'])} : {e['msg']}"
                           if e["loc"] else e["msg"] for r, e in zip(raw, errors, strict=True))
        return respond(request, 422, detail or "données invalides", errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        status = exc.status_code
        if status == 404 and wants_html(request):
            return respond(request, 404, "l'adresse demandée n'existe pas", "Page introuvable")
        detail = _HTTP_DETAILS.get(status) or _TITLES.get(status, "erreur").lower()
        return respond(request, status, detail, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception):
        # Reached only for errors raised outside the catch-all (in an outer middleware).
        return crashed(request, exc)

    app.add_middleware(CatchAllMiddleware)
