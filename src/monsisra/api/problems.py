"""RFC 9457 problem details for every error; no stack trace ever reaches a client."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from monsisra.services.errors import ServiceError

log = logging.getLogger("monsisra.api")
PROBLEM = "application/problem+json"

_TITLES = {400: "Requête invalide", 401: "Authentification requise", 403: "Accès refusé", 404: "Introuvable",
           405: "Méthode non autorisée", 409: "Conflit", 413: "Trop volumineux", 415: "Type non pris en charge",
           422: "Données invalides", 429: "Trop de tentatives", 500: "Erreur interne"}


def problem(status: int, detail: str, title: str | None = None, headers: dict | None = None, **extra) -> JSONResponse:
    body = {"type": "about:blank", "title": title or _TITLES.get(status, "Erreur"), "status": status,
            "detail": detail, **extra}
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service(request: Request, exc: ServiceError):
        headers = {}
        if exc.status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        if "retry_after" in exc.extra:
            headers["Retry-After"] = str(exc.extra["retry_after"])
        extra = {k: v for k, v in exc.extra.items() if k != "retry_after"}
        return problem(exc.status, exc.detail, exc.title, headers=headers or None, **extra)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        errors = [{"loc": [str(p) for p in e.get("loc", ())], "msg": e.get("msg", "")} for e in exc.errors()]
        detail = "; ".join(f"{'.'.join(e['loc'][1:]) or e['loc'][0] if e['loc'] else ''} : {e['msg']}" for e in errors)
        return problem(422, detail or "données invalides", errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        detail = exc.detail if isinstance(exc.detail, str) else _TITLES.get(exc.status_code, "Erreur")
        if exc.status_code == 404 and detail == "Not Found":
            detail = "ressource introuvable"
        if exc.status_code == 405 and detail == "Method Not Allowed":
            detail = "méthode non autorisée"
        return problem(exc.status_code, detail, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem(500, "une erreur interne est survenue ; elle a été journalisée")
