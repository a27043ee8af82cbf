"""« Mon portail »: MonSisra as the OpenID Connect provider of the region's other e-health
services (single sign-on), on Authlib's authorisation server.

Registered clients (confidential: a secret kept as its sha256) use the authorisation code flow
with PKCE (S256, required of every client); the ID token (RS256, ``kid`` of the signing key)
carries the national id, names and profession, and ``sid``: the MonSisra session it came from.
Signing keys live in the database, sealed; a new key signs after a rotation while the old ones
stay published in the JWKS until every token they signed has expired. Single logout: when a
MonSisra session ends (logout, revocation, password change…), the services it opened are told
on their back channel (a signed ``logout_token``) and their access tokens stop working.

Authlib's grants are synchronous and our store is not: each exchange first loads what the grant
will ask for (the client, the code, claimed atomically so a code is used once), runs the grant
on those objects, then writes what it produced.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import sqlalchemy as sa
from authlib.common.security import is_secure_transport
from authlib.oauth2.rfc6749 import AuthorizationServer, ClientMixin, OAuth2Error, OAuth2Payload, OAuth2Request
from authlib.oauth2.rfc6749.errors import InvalidRequestError
from authlib.oauth2.rfc6749.grants import AuthorizationCodeGrant
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oidc.core import OpenIDCode
from authlib.oidc.core.models import AuthorizationCodeMixin
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey

from monsisra.domain.clock import as_utc, utcnow
from monsisra.domain.text import TextRefused, check_line
from monsisra.services import audit, sealed
from monsisra.services.core import Actor, Core
from monsisra.services.errors import Conflict, Forbidden, Invalid, NotFound
from monsisra.store.identity import PortalClient, PortalCode, PortalKey, PortalSession, PortalToken, SessionAuth
from monsisra.store.models import Account, Token

log = logging.getLogger(__name__)
PURPOSE = "portal-key"
CODE_TTL = timedelta(minutes=2)
ID_TOKEN_TTL = 300
SCOPES = ["openid", "profile"]
ALG = "RS256"
BACKCHANNEL_EVENT = "http://schemas.openid.net/event/backchannel-logout"
_CLIENT_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{1,78}[a-z0-9]$")


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


# --- clients -----------------------------------------------------------------------------------


def _check_uri(value: str, label: str) -> str:
    value = (value or "").strip()
    parts = urlsplit(value)
    local = parts.hostname in ("localhost", "127.0.0.1", "::1")
    if parts.scheme not in ("https", "http") or not parts.netloc or parts.fragment or \
            (parts.scheme == "http" and not local) or any(c.isspace() for c in value) or len(value) > 2000:
        raise Invalid(f"{label} invalide : une adresse https:// complète, sans fragment (http:// seulement en local)")
    return value


def _require_admin(actor: Actor | None) -> None:
    if actor is not None and not actor.is_admin:
        raise Forbidden("réservé aux administrateurs de la plateforme")


def client_dict(c: PortalClient) -> dict:
    return {"client_id": c.client_id, "name": c.name, "description": c.description,
            "redirect_uris": list(c.redirect_uris or []), "login_url": c.login_url,
            "backchannel_logout_uri": c.backchannel_logout_uri, "active": c.active,
            "created_at": as_utc(c.created_at).isoformat()}


async def add_client(core: Core, *, name: str, redirect_uris: list[str], login_url: str,
                     backchannel_logout_uri: str | None = None, description: str = "",
                     client_id: str | None = None, actor: Actor | None = None) -> tuple[dict, str]:
    """Register a service; answers it and its client secret, shown this once."""
    _require_admin(actor)
    try:
        name = check_line(name, "nom du service").strip()
        description = check_line(description, "description").strip()
    except TextRefused as exc:
        raise Invalid(str(exc)) from None
    if not name:
        raise Invalid("nom du service obligatoire")
    uris = [_check_uri(u, "adresse de retour") for u in redirect_uris if u.strip()]
    if not uris:
        raise Invalid("au moins une adresse de retour (redirect_uri) est nécessaire")
    login_url = _check_uri(login_url, "adresse d'ouverture")
    logout = _check_uri(backchannel_logout_uri, "adresse de déconnexion") if backchannel_logout_uri else None
    from monsisra.domain.addresses import local_part

    client_id = (client_id or local_part(name).replace(".", "-") or "service").lower()[:80]
    if not _CLIENT_ID.match(client_id):
        raise Invalid("identifiant de client invalide : lettres minuscules, chiffres, « . », « _ » ou « - »")
    secret = secrets.token_urlsafe(32)
    async with core.write() as tx:
        if await tx.session.scalar(sa.select(PortalClient.id).where(PortalClient.client_id == client_id)):
            raise Conflict(f"le client {client_id} existe déjà")
        row = PortalClient(client_id=client_id, secret_hash=_digest(secret), name=name, description=description,
                           redirect_uris=uris, login_url=login_url, backchannel_logout_uri=logout)
        tx.session.add(row)
        audit.record(tx.session, actor.account_id if actor else None, "portal.client.add", object_type="portal_client",
                     object_id=client_id)
    return client_dict(row), secret


async def list_clients(core: Core, actor: Actor | None) -> list[dict]:
    _require_admin(actor)
    async with core.read() as session:
        rows = await session.scalars(sa.select(PortalClient).order_by(PortalClient.name))
        return [client_dict(c) for c in rows]


async def set_client_active(core: Core, client_id: str, active: bool, actor: Actor | None) -> None:
    """Withdraw a service (its tile goes, its codes and tokens stop) or bring it back."""
    _require_admin(actor)
    async with core.write() as tx:
        row = await tx.session.scalar(sa.select(PortalClient).where(PortalClient.client_id == client_id))
        if row is None:
            raise NotFound(f"client {client_id} introuvable")
        row.active = active
        if not active:
            sessions = sa.select(PortalSession.id).where(PortalSession.client_id == client_id)
            await tx.session.execute(sa.delete(PortalToken).where(PortalToken.session_id.in_(sessions)))
        audit.record(tx.session, actor.account_id if actor else None,
                     "portal.client.enable" if active else "portal.client.disable", object_type="portal_client",
                     object_id=client_id)


async def tiles(core: Core, actor: Actor) -> list[dict]:
    """The services a professional may open from « Mon portail »."""
    async with core.read() as session:
        rows = await session.scalars(sa.select(PortalClient).where(PortalClient.active.is_(True))
                                     .order_by(PortalClient.name))
        return [{"client_id": c.client_id, "name": c.name, "description": c.description, "login_url": c.login_url}
                for c in rows]


# --- keys --------------------------------------------------------------------------------------


def _new_key() -> tuple[str, str, dict]:
    kid = secrets.token_urlsafe(12)
    key = RSAKey.generate_key(2048, parameters={"kid": kid, "use": "sig", "alg": ALG})
    pem = key.as_pem(private=True).decode()
    return kid, pem, key.as_dict(private=False)


async def rotate_keys(core: Core, actor: Actor | None = None) -> str:
    """A new signing key; the previous ones stop signing and stay published until the tokens
    they signed have expired. Answers the new key's ``kid``."""
    _require_admin(actor)
    kid, pem, public = _new_key()
    now = utcnow()
    keep = timedelta(seconds=max(ID_TOKEN_TTL, core.settings.portal_token_ttl_seconds) + 300)
    async with core.write() as tx:
        await tx.session.execute(sa.update(PortalKey).where(PortalKey.retired_at.is_(None))
                                 .values(retired_at=now, publish_until=now + keep))
        tx.session.add(PortalKey(kid=kid, private_key=sealed.seal(core.settings, PURPOSE, pem), public_jwk=public,
                                 created_at=now))
        audit.record(tx.session, actor.account_id if actor else None, "portal.key.rotate", object_type="portal_key",
                     object_id=kid)
    return kid


async def _signing_key(core: Core) -> RSAKey:
    """The newest active key (made at first use, replaced after ``portal_key_rotation_days``)."""
    async with core.read() as session:
        row = await session.scalar(sa.select(PortalKey).where(PortalKey.retired_at.is_(None))
                                   .order_by(PortalKey.created_at.desc(), PortalKey.id.desc()).limit(1))
    age_limit = timedelta(days=max(core.settings.portal_key_rotation_days, 1))
    if row is None or as_utc(row.created_at) < utcnow() - age_limit:
        await rotate_keys(core)
        return await _signing_key(core)
    return RSAKey.import_key(sealed.unseal(core.settings, PURPOSE, row.private_key),
                             parameters={"kid": row.kid, "use": "sig", "alg": ALG})


async def jwks(core: Core) -> dict:
    """The published keys: the signing one and the retired ones still covering live tokens."""
    await _signing_key(core)
    now = utcnow()
    async with core.read() as session:
        rows = await session.scalars(sa.select(PortalKey).where(
            sa.or_(PortalKey.retired_at.is_(None), PortalKey.publish_until > now)).order_by(PortalKey.id.desc()))
        return {"keys": [dict(r.public_jwk) for r in rows]}


# --- discovery ---------------------------------------------------------------------------------


def issuer_of(core: Core, base_url: str) -> str:
    return (core.settings.portal_issuer or base_url).rstrip("/")


def discovery(core: Core, base_url: str) -> dict:
    iss = issuer_of(core, base_url)
    return {
        "issuer": iss,
        "authorization_endpoint": f"{iss}/portail/oidc/authorize",
        "token_endpoint": f"{iss}/portail/oidc/token",
        "userinfo_endpoint": f"{iss}/portail/oidc/userinfo",
        "jwks_uri": f"{iss}/portail/oidc/jwks",
        "end_session_endpoint": f"{iss}/portail/oidc/logout",
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": [ALG],
        "scopes_supported": SCOPES,
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "code_challenge_methods_supported": ["S256"],
        "claims_supported": ["sub", "name", "given_name", "family_name", "preferred_username", "national_id",
                             "SubjectNameID", "profession", "profession_code", "specialty", "sid", "auth_time",
                             "amr"],
        "authorization_response_iss_parameter_supported": True,
        "backchannel_logout_supported": True,
        "backchannel_logout_session_supported": True,
        "claims_parameter_supported": False,
        "request_parameter_supported": False,
    }


# --- Authlib on preloaded objects ----------------------------------------------------------------


@dataclass
class HttpRequest:
    """What the provider needs of an HTTP request (the web/api layer fills it)."""

    method: str
    url: str
    headers: Any  # a case-insensitive mapping (Starlette's Headers)
    params: list[tuple[str, str]]  # the query (authorisation) or the form (token)


class _Payload(OAuth2Payload):
    def __init__(self, params: list[tuple[str, str]]) -> None:
        self._data = dict(params)
        self._list: defaultdict[str, list] = defaultdict(list)
        for k, v in params:
            self._list[k].append(v)

    @property
    def data(self) -> dict:
        return self._data

    @property
    def datalist(self) -> defaultdict[str, list]:
        return self._list


class _Request(OAuth2Request):
    def __init__(self, http: HttpRequest) -> None:
        super().__init__(method=http.method, uri=http.url, headers=http.headers)
        self.payload = _Payload(http.params)
        self._params = dict(http.params)

    @property
    def args(self) -> dict:
        return self._params

    @property
    def form(self) -> dict:
        return self._params


class _Client(ClientMixin):
    def __init__(self, row: PortalClient) -> None:
        self.row = row

    def get_client_id(self) -> str:
        return self.row.client_id

    def get_default_redirect_uri(self) -> str | None:
        uris = self.row.redirect_uris or []
        return uris[0] if len(uris) == 1 else None

    def get_allowed_scope(self, scope: str) -> str:
        return " ".join(s for s in (scope or "").split() if s in SCOPES)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in (self.row.redirect_uris or [])

    def check_client_secret(self, client_secret: str) -> bool:
        return hmac.compare_digest(self.row.secret_hash, _digest(client_secret or ""))

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method in ("client_secret_basic", "client_secret_post")

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "authorization_code"


@dataclass
class _User:
    account: Account
    sid: str
    session_id: int
    methods: str


class _Code(AuthorizationCodeMixin):
    def __init__(self, row: PortalCode) -> None:
        self.row = row

    def get_redirect_uri(self) -> str:
        return self.row.redirect_uri

    def get_scope(self) -> str:
        return self.row.scope

    def get_nonce(self) -> str | None:
        return self.row.nonce

    def get_auth_time(self) -> int:
        return int(as_utc(self.row.auth_time).timestamp())

    def get_acr(self) -> str | None:
        return None

    def get_amr(self) -> list[str] | None:
        return None


@dataclass
class _Exchange:
    """What one request's grant reads (loaded before) and writes (stored after)."""

    client: PortalClient | None = None
    code: PortalCode | None = None
    user: _User | None = None
    key: RSAKey | None = None
    issuer: str = ""
    token_ttl: int = 3600
    issued_code: dict[str, Any] = field(default_factory=dict)
    issued_token: dict[str, Any] = field(default_factory=dict)


def claims_of(account: Account) -> dict:
    """What the services learn about the professional (ID token and user info)."""
    return {
        "sub": str(account.id),
        "preferred_username": account.username,
        "name": " ".join(p for p in (account.civility, account.first_name, account.last_name.upper()) if p),
        "given_name": account.first_name,
        "family_name": account.last_name,
        "national_id": account.national_id,
        "SubjectNameID": account.national_id,
        "profession": account.profession,
        "profession_code": account.profession_code,
        "specialty": account.specialty,
    }


class _Grant(AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]  # noqa: RUF012 (Authlib's)

    @property
    def exchange(self) -> _Exchange:
        return self.server.exchange

    def save_authorization_code(self, code: str, request: OAuth2Request) -> None:
        data = request.payload.data
        self.exchange.issued_code = {"code": code, "redirect_uri": data.get("redirect_uri"), "scope": request.scope,
                                     "nonce": data.get("nonce"), "code_challenge": data.get("code_challenge"),
                                     "code_challenge_method": data.get("code_challenge_method") or "S256"}

    def query_authorization_code(self, code: str, client: _Client) -> _Code | None:
        row = self.exchange.code
        if row is None or row.client_id != client.get_client_id() or row.code_hash != _digest(code):
            return None
        return _Code(row)

    def delete_authorization_code(self, authorization_code: _Code) -> None:
        pass  # spent when it was loaded (see ``token``)

    def authenticate_user(self, authorization_code: _Code) -> _User | None:
        return self.exchange.user


class _RequiredPkce(CodeChallenge):
    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]  # noqa: RUF012 (Authlib's)

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if not data.get("code_challenge") or data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("PKCE obligatoire : code_challenge et code_challenge_method=S256")
        super().validate_code_challenge(grant, redirect_uri)

    def get_authorization_code_challenge(self, authorization_code: _Code) -> str:
        return authorization_code.row.code_challenge

    def get_authorization_code_challenge_method(self, authorization_code: _Code) -> str:
        return authorization_code.row.code_challenge_method


class _OpenID(OpenIDCode):
    def __init__(self, server: _Server) -> None:
        super().__init__(require_nonce=False)
        self.server = server

    def exists_nonce(self, nonce: str, request: OAuth2Request) -> bool:
        return False  # nonces are the client's to check; codes are single-use here

    def resolve_client_private_key(self, client: _Client) -> RSAKey:
        return self.server.exchange.key

    def get_client_algorithm(self, client: _Client) -> str:
        return ALG

    def get_encode_header(self, client: _Client) -> dict:
        return {"alg": ALG, "kid": self.server.exchange.key.kid, "typ": "JWT"}

    def get_client_claims(self, client: _Client) -> dict:
        now = int(time.time())
        return {"iss": self.server.exchange.issuer, "aud": [client.get_client_id()], "azp": client.get_client_id(),
                "iat": now, "exp": now + ID_TOKEN_TTL}

    def generate_user_info(self, user: _User, scope: str) -> dict:
        info = {k: v for k, v in claims_of(user.account).items() if v not in (None, "")}
        info["sid"] = user.sid
        info["amr"] = user.methods.split("+")
        return info


class _Server(AuthorizationServer):
    def __init__(self, exchange: _Exchange) -> None:
        super().__init__(scopes_supported=SCOPES)
        self.exchange = exchange
        self.register_grant(_Grant, [_RequiredPkce(required=True), _OpenID(self)])
        self.register_token_generator("default", self._token)

    def _token(self, grant_type: str, client: _Client, user: Any = None, scope: str | None = None,
               expires_in: int | None = None, include_refresh_token: bool = False) -> dict:
        return {"token_type": "Bearer", "access_token": secrets.token_urlsafe(32),
                "expires_in": self.exchange.token_ttl, "scope": scope or ""}

    def query_client(self, client_id: str) -> _Client | None:
        row = self.exchange.client
        return _Client(row) if row is not None and row.client_id == client_id and row.active else None

    def save_token(self, token: dict, request: OAuth2Request) -> None:
        self.exchange.issued_token = dict(token)

    def create_oauth2_request(self, request: Any) -> OAuth2Request:
        return request if isinstance(request, OAuth2Request) else _Request(request)

    def handle_response(self, status: int, body: Any, headers: list) -> tuple[int, Any, list]:
        return status, body, headers

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        pass


@dataclass(frozen=True)
class Reply:
    """An HTTP answer for the web/api layer: a redirect (``location``), JSON, or a French
    error page (``error``) when the client or its return address cannot be trusted."""

    status: int
    body: Any = None
    headers: tuple[tuple[str, str], ...] = ()
    error: str | None = None

    @property
    def location(self) -> str | None:
        return dict(self.headers).get("Location")


async def _client_row(core: Core, client_id: str | None) -> PortalClient | None:
    if not client_id or len(client_id) > 80:
        return None
    async with core.read() as session:
        return await session.scalar(sa.select(PortalClient).where(PortalClient.client_id == client_id))


def _with_iss(reply: tuple[int, Any, list], issuer: str) -> Reply:
    status, body, headers = reply
    headers = list(headers)
    for i, (k, v) in enumerate(headers):
        if k.lower() == "location" and "iss=" not in v:  # RFC 9207: the answer names its issuer
            headers[i] = (k, v + ("&" if "?" in v else "?") + httpx.QueryParams({"iss": issuer}).__str__())
    return Reply(status, body, tuple(headers))


async def authorize(core: Core, http: HttpRequest, actor: Actor | None, base_url: str) -> Reply:
    """The authorisation endpoint for a browser whose MonSisra session is ``actor`` (None: the
    caller sends it to the login page first, unless ``prompt=none``)."""
    params = dict(http.params)
    if not is_secure_transport(http.url):
        return Reply(400, error="le portail n'est servi qu'en HTTPS")
    row = await _client_row(core, params.get("client_id"))
    if row is None or not row.active:
        return Reply(400, error="service inconnu ou retiré du portail (client_id)")
    if params.get("redirect_uri") not in (row.redirect_uris or []):
        return Reply(400, error="adresse de retour non enregistrée pour ce service (redirect_uri)")
    exchange = _Exchange(client=row, issuer=issuer_of(core, base_url))
    server = _Server(exchange)
    request = _Request(http)
    try:
        grant = server.get_consent_grant(request, end_user=None)
    except OAuth2Error as error:
        return _with_iss(server.handle_error_response(request, error), exchange.issuer)
    if actor is None:
        if params.get("prompt") == "none":
            return _with_iss(server.handle_error_response(request, _login_required(params)), exchange.issuer)
        return Reply(401)  # the web layer sends the browser to /connexion, then back here
    async with core.read() as session:
        account = await session.get(Account, actor.account_id)
        how = await session.scalar(sa.select(SessionAuth.methods).where(SessionAuth.token_id == actor.token_id)) \
            if actor.token_id else None
        started = await session.scalar(sa.select(Token.created_at).where(Token.id == actor.token_id)) \
            if actor.token_id else None
    if account is None:
        return Reply(401)
    user = _User(account=account, sid="", session_id=0, methods=how or "pwd")
    reply = server.create_authorization_response(request, grant_user=user, grant=grant)
    if not exchange.issued_code:
        return _with_iss(reply, exchange.issuer)
    issued = exchange.issued_code
    now = utcnow()
    async with core.write() as tx:
        s = tx.session
        portal_session = await s.scalar(sa.select(PortalSession).where(
            PortalSession.token_id == actor.token_id, PortalSession.client_id == row.client_id,
            PortalSession.ended_at.is_(None))) if actor.token_id else None
        if portal_session is None:
            portal_session = PortalSession(sid=secrets.token_urlsafe(16), client_id=row.client_id,
                                           account_id=account.id, token_id=actor.token_id, created_at=now,
                                           issuer=exchange.issuer)
            s.add(portal_session)
            await s.flush()
        s.add(PortalCode(code_hash=_digest(issued["code"]), client_id=row.client_id, account_id=account.id,
                         session_id=portal_session.id, redirect_uri=issued["redirect_uri"], scope=issued["scope"],
                         nonce=issued["nonce"], code_challenge=issued["code_challenge"],
                         code_challenge_method=issued["code_challenge_method"],
                         auth_time=as_utc(started) if started else now,
                         created_at=now, expires_at=now + CODE_TTL))
        audit.record(s, account.id, "portal.authorize", client=actor.client, object_type="portal_client",
                     object_id=row.client_id)
    return _with_iss(reply, exchange.issuer)


def _login_required(params: dict) -> OAuth2Error:
    error = OAuth2Error(description="aucune session MonSisra ouverte", redirect_uri=params.get("redirect_uri"))
    error.error = "login_required"
    error.state = params.get("state")
    return error


async def token(core: Core, http: HttpRequest, base_url: str) -> Reply:
    """The token endpoint: the client authenticates, the code is spent (once), PKCE checked,
    an ID token and an access token (for the user info only) are given."""
    params = dict(http.params)
    if not is_secure_transport(http.url):
        return Reply(400, {"error": "invalid_request", "error_description": "HTTPS obligatoire"})
    exchange = _Exchange(issuer=issuer_of(core, base_url), token_ttl=core.settings.portal_token_ttl_seconds)
    client_id = params.get("client_id") or _basic_client_id(http.headers.get("authorization", ""))
    exchange.client = await _client_row(core, client_id)
    code = params.get("code")
    if exchange.client is not None and code and len(code) <= 200:
        exchange.code, exchange.user = await _spend_code(core, code, exchange.client.client_id)
    exchange.key = await _signing_key(core)
    server = _Server(exchange)
    status, body, headers = server.create_token_response(_Request(http))
    if status == 200 and exchange.issued_token and exchange.user is not None:
        user = exchange.user
        async with core.write() as tx:
            tx.session.add(PortalToken(token_hash=_digest(exchange.issued_token["access_token"]),
                                       client_id=exchange.client.client_id, account_id=user.account.id,
                                       session_id=user.session_id, scope=exchange.issued_token.get("scope", ""),
                                       expires_at=utcnow() + timedelta(seconds=exchange.token_ttl)))
            audit.record(tx.session, user.account.id, "portal.token", object_type="portal_client",
                         object_id=exchange.client.client_id)
    elif status != 200:
        async with core.write() as tx:
            audit.record(tx.session, exchange.user.account.id if exchange.user else None, "portal.token.failure",
                         object_type="portal_client", object_id=(client_id or "")[:64],
                         detail={"error": (body or {}).get("error") if isinstance(body, dict) else None})
    return Reply(status, body, tuple(headers))


def _basic_client_id(header: str) -> str | None:
    import base64
    from urllib.parse import unquote

    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip()).decode()
    except (ValueError, UnicodeDecodeError):
        return None
    return unquote(decoded.partition(":")[0]) or None


async def _spend_code(core: Core, code: str, client_id: str) -> tuple[PortalCode | None, _User | None]:
    """Claim the code atomically (a second use finds it spent, and revokes what the first gave)."""
    now = utcnow()
    digest = _digest(code)
    async with core.write() as tx:
        s = tx.session
        spent = (await s.execute(sa.update(PortalCode).where(
            PortalCode.code_hash == digest, PortalCode.client_id == client_id, PortalCode.used_at.is_(None),
            PortalCode.expires_at > now).values(used_at=now))).rowcount
        row = await s.get(PortalCode, digest)
        if spent != 1:
            if row is not None and row.used_at is not None and row.client_id == client_id:
                # RFC 6749 §4.1.2: a code used twice revokes the tokens it gave.
                await s.execute(sa.delete(PortalToken).where(PortalToken.session_id == row.session_id))
                audit.record(s, row.account_id, "portal.code.replay", object_type="portal_client", object_id=client_id)
            return None, None
        portal_session = await s.get(PortalSession, row.session_id)
        account = await s.get(Account, row.account_id)
        alive = portal_session is not None and portal_session.ended_at is None and account is not None and \
            account.active
        if alive and portal_session.token_id is not None:
            token_row = await s.get(Token, portal_session.token_id)
            alive = token_row is not None and token_row.revoked_at is None and as_utc(token_row.expires_at) > now
        if not alive:
            return None, None
        how = await s.scalar(sa.select(SessionAuth.methods).where(SessionAuth.token_id == portal_session.token_id))
        user = _User(account=account, sid=portal_session.sid, session_id=portal_session.id, methods=how or "pwd")
        s.expunge(row)
        s.expunge(account)
    return row, user


async def userinfo(core: Core, access_token: str | None) -> dict:
    """The claims behind a portal access token (and only those: it opens nothing else)."""
    from monsisra.services.errors import AuthFailed

    if not access_token:
        raise AuthFailed("jeton d'accès du portail absent")
    async with core.read() as session:
        row = await session.get(PortalToken, _digest(access_token))
        account = await session.get(Account, row.account_id) if row is not None else None
        portal_session = await session.get(PortalSession, row.session_id) if row is not None else None
    if row is None or as_utc(row.expires_at) <= utcnow() or account is None or not account.active or \
            portal_session is None or portal_session.ended_at is not None:
        raise AuthFailed("jeton d'accès du portail expiré ou révoqué")
    info = {k: v for k, v in claims_of(account).items() if v not in (None, "")}
    info["sid"] = portal_session.sid
    return info


# --- single logout ---------------------------------------------------------------------------------


async def end_portal_sessions(core: Core, account_ids: list[int], token_ids: list[int] | None) -> int:
    """The MonSisra sessions ``token_ids`` (every session of the accounts when None) ended: end
    the portal sessions they opened, their tokens, and tell each service on its back channel.
    Rows are claimed by one UPDATE, so the process that wins sends each notice once."""
    if not account_ids:
        return 0
    now = utcnow()
    async with core.write() as tx:
        query = sa.update(PortalSession).where(PortalSession.ended_at.is_(None),
                                               PortalSession.account_id.in_(account_ids))
        if token_ids is not None:
            if not token_ids:
                return 0
            query = query.where(PortalSession.token_id.in_(token_ids))
        ended = (await tx.session.execute(query.values(ended_at=now).returning(
            PortalSession.id, PortalSession.sid, PortalSession.client_id, PortalSession.account_id,
            PortalSession.issuer))).all()
        if ended:
            await tx.session.execute(sa.delete(PortalToken).where(PortalToken.session_id.in_([e.id for e in ended])))
    if not ended:
        return 0
    async with core.read() as session:
        clients = {c.client_id: c for c in await session.scalars(sa.select(PortalClient).where(
            PortalClient.client_id.in_({e.client_id for e in ended})))}
    key = await _signing_key(core)
    statuses: dict[int, str] = {}
    async with httpx.AsyncClient(timeout=5, follow_redirects=False,
                                 verify=str(core.settings.tls_trust) if core.settings.tls_trust else True) as http:
        for e in ended:
            client = clients.get(e.client_id)
            if client is None or not client.backchannel_logout_uri:
                statuses[e.id] = "pas de déconnexion par canal arrière"
                continue
            statuses[e.id] = await _send_logout(http, client, key, e.issuer, e)
    async with core.write() as tx:
        for e in ended:
            await tx.session.execute(sa.update(PortalSession).where(PortalSession.id == e.id)
                                     .values(logout_status=statuses[e.id][:200]))
            audit.record(tx.session, e.account_id, "portal.logout", object_type="portal_client",
                         object_id=e.client_id, detail={"status": statuses[e.id][:200]})
    return len(ended)


async def _send_logout(http: httpx.AsyncClient, client: PortalClient, key: RSAKey, issuer: str, e: Any) -> str:
    now = int(time.time())
    claims = {"iss": issuer, "aud": client.client_id, "iat": now, "exp": now + 120, "jti": secrets.token_urlsafe(16),
              "sub": str(e.account_id), "sid": e.sid, "events": {BACKCHANNEL_EVENT: {}}}
    logout_token = jwt.encode({"alg": ALG, "kid": key.kid, "typ": "logout+jwt"}, claims, key)
    try:
        r = await http.post(client.backchannel_logout_uri, data={"logout_token": logout_token})
    except httpx.HTTPError as exc:
        log.warning("back-channel logout of %s failed: %s", client.client_id, type(exc).__name__)
        return f"échec : {type(exc).__name__}"
    return f"HTTP {r.status_code}"


def post_logout_target(client: PortalClient | None, uri: str | None) -> str | None:
    """Where the end-session endpoint may send the browser back: a page of that service."""
    if client is None or not uri:
        return None
    origins = {urlsplit(u)[:2] for u in [*(client.redirect_uris or []), client.login_url]}
    return uri if urlsplit(uri)[:2] in origins and not urlsplit(uri).fragment else None


async def logout_hint(core: Core, id_token_hint: str | None, client_id: str | None) -> PortalClient | None:
    """The service an end-session request comes from (``client_id``, or the ID token's ``aud``,
    signed by one of our keys)."""
    if id_token_hint and not client_id:
        keys = KeySet.import_key_set(await jwks(core))
        try:
            claims = jwt.decode(id_token_hint, keys, algorithms=[ALG]).claims
        except Exception:
            claims = {}
        aud = claims.get("aud")
        client_id = aud[0] if isinstance(aud, list) and aud else aud if isinstance(aud, str) else None
    return await _client_row(core, client_id)


def parse_form(body: bytes) -> list[tuple[str, str]]:
    return parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True)
