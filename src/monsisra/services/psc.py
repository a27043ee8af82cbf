"""Pro Santé Connect: the national OpenID Connect login of health professionals (DESIGN §5).

Authorisation code with PKCE (S256), ``acr_values=eidas1``; the state, nonce and code verifier
are kept server-side (``oidc_logins``) and bound to the browser that started (a cookie's hash),
usable once, for ten minutes. The return is checked before anything is believed: the state, the
ID token's signature against the provider's JWKS, issuer, audience (and ``azp``), expiry, nonce
and ``acr``; the user info may come back as a signed JWT, verified the same way, and must speak
of the same ``sub``. Its ``SubjectNameID`` (the national id) names the account; a first login
links the account holding that id or, where none does, creates one from the national directory
entry (names, profession; its PER mailbox ``prenom.nom@<domain>``): a professional gets an
account without an administrator. Every refusal is audited (``login.psc.failure``).
"""

from __future__ import annotations

import hashlib
import secrets
import time
import warnings
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import sqlalchemy as sa
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from monsisra.domain.clock import as_utc, utcnow
from monsisra.services import accounts, audit, mailboxes, signin
from monsisra.services.core import Core
from monsisra.services.errors import AuthFailed, Invalid
from monsisra.store.directory import DirActivity, DirPerson
from monsisra.store.identity import OidcLogin
from monsisra.store.models import Account

with warnings.catch_warnings():  # Authlib prefers httpx2 and says so at import; httpx works as well
    warnings.simplefilter("ignore")
    from authlib.integrations.httpx_client import AsyncOAuth2Client

LOGIN_TTL = timedelta(minutes=10)
METADATA_TTL = 3600.0
ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"]
LEEWAY = 60
_metadata: dict[str, tuple[float, dict]] = {}
_jwks: dict[str, tuple[float, KeySet]] = {}


class Refused(Exception):
    def __init__(self, reason: str, **detail: Any) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Start:
    url: str  # where the browser goes: the provider's authorisation endpoint
    browser: str  # secret to keep in the browser's cookie until the return


def configured(core: Core) -> bool:
    st = core.settings
    return bool(st.psc_issuer and st.psc_client_id)


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _http(core: Core) -> httpx.AsyncClient:
    verify: Any = str(core.settings.tls_trust) if core.settings.tls_trust else True
    return httpx.AsyncClient(timeout=15, verify=verify, follow_redirects=False)


async def metadata(core: Core, *, fresh: bool = False) -> dict:
    """The provider's discovery document (cached an hour)."""
    issuer = (core.settings.psc_issuer or "").rstrip("/")
    hit = _metadata.get(issuer)
    if hit and not fresh and hit[0] > time.monotonic():
        return hit[1]
    async with _http(core) as http:
        r = await http.get(f"{issuer}/.well-known/openid-configuration")
    r.raise_for_status()
    data = r.json()
    if data.get("issuer", "").rstrip("/") != issuer:
        raise Refused("le fournisseur annonce un autre émetteur", issuer=str(data.get("issuer"))[:200])
    _metadata[issuer] = (time.monotonic() + METADATA_TTL, data)
    return data


async def _keys(core: Core, meta: dict, *, fresh: bool = False) -> KeySet:
    uri = meta["jwks_uri"]
    hit = _jwks.get(uri)
    if hit and not fresh and hit[0] > time.monotonic():
        return hit[1]
    async with _http(core) as http:
        r = await http.get(uri)
    r.raise_for_status()
    keys = KeySet.import_key_set(r.json())
    _jwks[uri] = (time.monotonic() + METADATA_TTL, keys)
    return keys


async def _decode(core: Core, meta: dict, value: str) -> dict:
    """A JWT signed by the provider: its claims, once the signature holds (keys refetched once
    when the ``kid`` is new: the provider rotated)."""
    for fresh in (False, True):
        keys = await _keys(core, meta, fresh=fresh)
        try:
            return dict(jwt.decode(value, keys, algorithms=ALGORITHMS).claims)
        except JoseError as exc:
            if fresh:
                raise Refused("signature du jeton invalide", error=type(exc).__name__) from None
        except ValueError as exc:
            if fresh:
                raise Refused("jeton illisible", error=str(exc)[:120]) from None
    raise AssertionError("unreachable")


def _oauth(core: Core, redirect_uri: str) -> AsyncOAuth2Client:
    st = core.settings
    return AsyncOAuth2Client(client_id=st.psc_client_id, client_secret=st.psc_client_secret, scope=st.psc_scopes,
                             redirect_uri=redirect_uri, code_challenge_method="S256", timeout=15,
                             verify=str(st.tls_trust) if st.tls_trust else True)


def redirect_uri(core: Core, base_url: str) -> str:
    return core.settings.psc_redirect_uri or f"{base_url.rstrip('/')}/connexion/psc/retour"


async def start(core: Core, base_url: str, suite: str) -> Start:
    """Begin a login: the authorisation URL (PKCE, state, nonce, acr) and the browser's secret."""
    if not configured(core):
        raise Invalid("Pro Santé Connect n'est pas configuré sur cette plateforme")
    meta = await metadata(core)
    state, nonce, verifier = secrets.token_urlsafe(24), secrets.token_urlsafe(24), secrets.token_urlsafe(48)
    browser = secrets.token_urlsafe(24)
    async with _oauth(core, redirect_uri(core, base_url)) as client:
        url, _ = client.create_authorization_url(meta["authorization_endpoint"], state=state, nonce=nonce,
                                                 code_verifier=verifier, acr_values=core.settings.psc_acr)
    async with core.write() as tx:
        await tx.session.execute(sa.delete(OidcLogin).where(OidcLogin.created_at < utcnow() - LOGIN_TTL))
        tx.session.add(OidcLogin(state_hash=_digest(state), nonce=nonce, verifier=verifier,
                                 browser_hash=_digest(browser), suite=suite[:2000]))
    return Start(url, browser)


async def _claim_login(core: Core, state: str, browser: str | None) -> OidcLogin:
    """The login this state began, spent now (a second return with it is refused)."""
    now = utcnow()
    async with core.write() as tx:
        row = await tx.session.get(OidcLogin, _digest(state)) if state else None
        if row is None:
            raise Refused("état inconnu (state)")
        if row.used_at is not None:
            raise Refused("état déjà utilisé (state)")
        if as_utc(row.created_at) < now - LOGIN_TTL:
            raise Refused("connexion commencée il y a trop longtemps")
        # Spent whatever follows: a return delivered to another browser burns it as well.
        spent = (await tx.session.execute(sa.update(OidcLogin).where(
            OidcLogin.state_hash == row.state_hash, OidcLogin.used_at.is_(None)).values(used_at=now))).rowcount
        foreign = not browser or not secrets.compare_digest(row.browser_hash, _digest(browser))
    if spent != 1:
        raise Refused("état déjà utilisé (state)")
    if foreign:
        raise Refused("état venu d'un autre navigateur (state)")
    return row


def _check_id_token(core: Core, claims: dict, nonce: str) -> None:
    st = core.settings
    issuer = (st.psc_issuer or "").rstrip("/")
    registry = jwt.JWTClaimsRegistry(leeway=LEEWAY, iss={"essential": True, "value": issuer},
                                     sub={"essential": True}, exp={"essential": True}, iat={"essential": True})
    try:
        registry.validate(claims)
    except JoseError as exc:
        name = type(exc).__name__
        if name == "ExpiredTokenError":
            raise Refused("jeton d'identité expiré", error=name) from None
        if getattr(exc, "claim", "") == "iss":
            raise Refused("émetteur inattendu (iss)", iss=str(claims.get("iss"))[:200]) from None
        raise Refused("jeton d'identité invalide", error=f"{name}: {exc}"[:200]) from None
    audience = claims.get("aud")
    audiences = audience if isinstance(audience, list) else [audience]
    if st.psc_client_id not in audiences or (len(audiences) > 1 and claims.get("azp") != st.psc_client_id):
        raise Refused("jeton destiné à un autre service (aud)", aud=str(audience)[:200])
    if not isinstance(claims.get("nonce"), str) or not secrets.compare_digest(claims["nonce"], nonce):
        raise Refused("nonce inattendu")
    if st.psc_acr and claims.get("acr") != st.psc_acr:
        raise Refused("niveau d'authentification insuffisant (acr)", acr=str(claims.get("acr"))[:40])


async def _user_info(core: Core, meta: dict, access_token: str, sub: str) -> dict:
    endpoint = meta.get("userinfo_endpoint")
    if not endpoint:
        return {}
    async with _http(core) as http:
        r = await http.get(endpoint, headers={"Authorization": f"Bearer {access_token}", "Accept": "application/jwt, "
                                                                                                    "application/json"})
    if r.status_code != 200:
        raise Refused("informations utilisateur refusées par le fournisseur", status=r.status_code)
    if r.headers.get("content-type", "").split(";")[0].strip() == "application/jwt":
        info = await _decode(core, meta, r.text.strip())
        issuer = (core.settings.psc_issuer or "").rstrip("/")
        if "iss" in info and info["iss"] != issuer:
            raise Refused("émetteur inattendu (iss)", iss=str(info.get("iss"))[:200])
        aud = info.get("aud")
        if aud is not None and core.settings.psc_client_id not in (aud if isinstance(aud, list) else [aud]):
            raise Refused("jeton destiné à un autre service (aud)", aud=str(aud)[:200])
    else:
        info = r.json()
    if info.get("sub") != sub:
        raise Refused("informations utilisateur d'une autre personne (sub)")
    return info


async def finish(core: Core, base_url: str, params: dict[str, str], browser: str | None,
                 client: str | None) -> tuple[signin.Login, str]:
    """The return from the provider: every check, then the account (linked or created) and the
    page to go to. Any failure: audited, :class:`AuthFailed` in French, no session."""
    try:
        return await _finish(core, base_url, params, browser, client)
    except Refused as exc:
        async with core.write() as tx:
            audit.record(tx.session, None, "login.psc.failure", client=client,
                         detail={"reason": exc.reason, **exc.detail})
        raise AuthFailed(f"connexion Pro Santé Connect refusée : {exc.reason}") from None
    except (httpx.HTTPError, KeyError, ValueError) as exc:
        async with core.write() as tx:
            audit.record(tx.session, None, "login.psc.failure", client=client,
                         detail={"reason": "fournisseur injoignable ou réponse illisible",
                                 "error": f"{type(exc).__name__}: {exc}"[:200]})
        raise AuthFailed("Pro Santé Connect ne répond pas correctement ; réessayez plus tard") from None


async def _finish(core: Core, base_url: str, params: dict[str, str], browser: str | None,
                  client: str | None) -> tuple[signin.Login, str]:
    if not configured(core):
        raise Refused("Pro Santé Connect n'est pas configuré")
    pending = await _claim_login(core, params.get("state", ""), browser)
    if params.get("error"):
        raise Refused("refus du fournisseur", error=params["error"][:80])
    code = params.get("code")
    if not code:
        raise Refused("réponse sans code d'autorisation")
    meta = await metadata(core)
    if params.get("iss") and params["iss"].rstrip("/") != (core.settings.psc_issuer or "").rstrip("/"):
        raise Refused("émetteur inattendu (iss)", iss=params["iss"][:200])
    async with _oauth(core, redirect_uri(core, base_url)) as oauth:
        try:
            token = await oauth.fetch_token(meta["token_endpoint"], grant_type="authorization_code", code=code,
                                            code_verifier=pending.verifier)
        except Exception as exc:  # OAuthError, HTTP errors: the provider refused the code
            raise Refused("code refusé par le fournisseur", error=f"{type(exc).__name__}: {exc}"[:200]) from None
    id_token = token.get("id_token")
    if not id_token:
        raise Refused("pas de jeton d'identité")
    claims = await _decode(core, meta, id_token)
    _check_id_token(core, claims, pending.nonce)
    info = await _user_info(core, meta, token["access_token"], claims["sub"]) if token.get("access_token") else {}
    merged = {**claims, **info}
    national_id = str(merged.get("SubjectNameID") or "").strip()
    if not (national_id.isdigit() and len(national_id) in (10, 12)):
        raise Refused("identifiant national absent ou invalide (SubjectNameID)")
    account = await _link_or_create(core, national_id, merged, client)
    return signin.Login(account, "psc"), pending.suite


async def _link_or_create(core: Core, national_id: str, claims: dict, client: str | None) -> Account:
    async with core.read() as session:
        existing = await session.scalar(sa.select(Account.id).where(Account.national_id == national_id).limit(1))
    if existing is not None or not core.settings.psc_create_accounts:
        try:
            return await signin.account_for_national_id(core, national_id, "psc", client)
        except AuthFailed:
            raise Refused("aucun compte actif pour cet identifiant national") from None
    return await _create_from_directory(core, national_id, claims, client)


def _profession_from_claims(claims: dict) -> tuple[str, str]:
    for exercice in (claims.get("SubjectRefPro") or {}).get("exercices") or []:
        code = str(exercice.get("codeProfession") or "")
        return code, str(exercice.get("libelleProfession") or exercice.get("codeProfession") or "")
    return "", ""


async def _create_from_directory(core: Core, national_id: str, claims: dict, client: str | None) -> Account:
    """A first login: the account from the directory entry (else the provider's claims)."""
    async with core.read() as session:
        person = await session.scalar(sa.select(DirPerson).where(DirPerson.national_id == national_id,
                                                                 DirPerson.active.is_(True)))
        activity = await session.scalar(sa.select(DirActivity).where(
            DirActivity.person_id == person.id, DirActivity.active.is_(True)).order_by(DirActivity.id).limit(1)) \
            if person is not None else None
    if person is not None:
        first, last = person.first_name, person.last_name
        profession_code, profession = person.profession_code, person.profession
        civility = "Dr" if person.title.lower().startswith("doc") else ""
        specialty = activity.specialty if activity is not None else ""
        source = "annuaire"
    else:
        first, last = str(claims.get("given_name") or ""), str(claims.get("family_name") or "")
        profession_code, profession = _profession_from_claims(claims)
        civility, specialty, source = "", "", "pro-sante-connect"
    if not (first or last):
        raise Refused("aucune fiche de l'annuaire national pour cet identifiant")
    base = f"{mailboxes.local_part(first)}.{mailboxes.local_part(last)}".strip(".") or f"ps{national_id}"
    username = base
    for n in range(2, 100):
        async with core.read() as session:
            if await session.scalar(sa.select(Account.id).where(Account.username == username)) is None:
                break
        username = f"{base}{n}"
    account, mailbox = await accounts.create_account(core, accounts.NewAccount(
        username=username, password=None, first_name=first.title() if first.isupper() else first,
        last_name=last, civility=civility, profession=profession, profession_code=profession_code or None,
        specialty=specialty, national_id=national_id))
    async with core.write() as tx:
        audit.record(tx.session, account.id, "account.create.psc", client=client, object_type="account",
                     object_id=account.id, detail={"source": source, "mailbox": mailbox.address if mailbox else None})
    return account
