"""Service errors; the API maps them to RFC 9457 problems, the CLI to messages."""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    status = 400
    title = "Requête invalide"
    type = "about:blank"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra
        # Audit entries that must be written although the request fails (a refused access):
        # Core.read()/write() record them in a transaction of their own as the error passes.
        self.audit: list[dict[str, Any]] = []


class NotFound(ServiceError):
    status = 404
    title = "Introuvable"


class Forbidden(ServiceError):
    status = 403
    title = "Accès refusé"


class Invalid(ServiceError):
    status = 422
    title = "Données invalides"


class Conflict(ServiceError):
    status = 409
    title = "Conflit"


class TooLarge(ServiceError):
    status = 413
    title = "Trop volumineux"


class AuthFailed(ServiceError):
    status = 401
    title = "Authentification refusée"


class Throttled(ServiceError):
    status = 429
    title = "Trop de tentatives"


class Unavailable(ServiceError):
    status = 503
    title = "Service indisponible"


class SecondFactorRequired(Forbidden):
    """The session was opened with a password alone where a second factor is required: it may
    only enrol one (``POST /api/v1/me/totp``, then ``…/confirm``)."""

    title = "Second facteur requis"
