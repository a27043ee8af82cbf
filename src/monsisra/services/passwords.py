"""Passwords chosen by their owner: the change (current one required, every other session
ended) and « Mot de passe oublié ? » (a single-use link, valid 30 minutes, sent to the account's
notification e-mail through the configured relay).

The link carries ``{reset id, secret}`` signed with the deployment's secret key (a forged or
truncated link is refused before any lookup); only the SHA-256 of the secret is stored, and the
row is consumed by one conditional UPDATE, so a link works once even when clicked twice at the
same moment. Asking for a link answers the same, at the same speed, whether the account exists
or not: the work (lookup, row, e-mail) happens after the answer. A reset ends every session.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

import sqlalchemy as sa
from itsdangerous import BadSignature, URLSafeTimedSerializer

from monsisra.domain.addresses import normalize_address
from monsisra.domain.clock import as_utc, in_paris, utcnow
from monsisra.domain.mail import mime
from monsisra.domain.passwords import RULE, WeakPassword, check_strength
from monsisra.services import accounts, audit
from monsisra.services.core import Actor, Core
from monsisra.services.errors import Invalid
from monsisra.services.messages import new_message_id
from monsisra.store.accounts import PasswordReset
from monsisra.store.directory import DirProfile
from monsisra.store.identity import RememberedDevice
from monsisra.store.models import Account, Token

log = logging.getLogger(__name__)
LINK_REFUSED = ("ce lien de réinitialisation n'est plus valable (déjà utilisé, expiré ou incomplet) : "
                "demandez-en un nouveau")
NOT_LOCAL = "votre mot de passe est celui de l'annuaire de votre établissement : changez-le là-bas"
_tasks: set[asyncio.Task] = set()


def rule() -> str:
    """The rule a new password must meet, in French (shown beside the fields)."""
    return RULE


def _strong(password: str, account: Account) -> None:
    try:
        check_strength(password, [account.username, account.first_name, account.last_name, account.email or ""])
    except WeakPassword as exc:
        raise Invalid(str(exc)) from None


# --- change ---------------------------------------------------------------------------------------


async def change(core: Core, actor: Actor, current: str, new: str) -> int:
    """Change one's own password. The current one is required (and guesses of it are throttled
    like logins); every other session of the account ends, this one goes on. Returns how many
    sessions ended."""
    account = await accounts.get_account(core, actor)
    if account.auth_source != "local":
        raise Invalid(NOT_LOCAL)
    key = f"pwchange:{account.id}"
    await accounts.count_key_attempt(core, key, core.settings.login_max_failures, account.username, actor.client)
    if not await accounts.verify_password(core, account.password_hash, current or ""):
        async with core.write() as tx:
            audit.record(tx.session, actor.account_id, "password.change.failure", object_type="account",
                         object_id=account.id, client=actor.client)
        raise Invalid("mot de passe actuel incorrect")
    await accounts.clear_attempts(core, key)
    if new == current:
        raise Invalid("le nouveau mot de passe doit être différent de l'actuel")
    _strong(new, account)
    password_hash = await accounts.hash_off_loop(core, new)
    async with core.write() as tx:
        s = tx.session
        await s.execute(sa.update(Account).where(Account.id == account.id)
                        .values(password_hash=password_hash, password_changed_at=utcnow()))
        others = list(await s.scalars(sa.select(Token.id).where(
            Token.account_id == account.id, Token.revoked_at.is_(None),
            Token.id != (actor.token_id or 0))))
        await accounts.end_sessions_in(tx, account.id, others, "session terminée : le mot de passe a changé")
        await _void_links(s, account.id)
        audit.record(s, actor.account_id, "password.change", object_type="account", object_id=account.id,
                     client=actor.client, detail={"sessions_ended": len(others)})
    return len(others)


async def _void_links(s: Any, account_id: int) -> None:
    """A new password voids pending reset links, and the browsers that were remembered past the
    second factor: whoever knew the old password may have used one of them."""
    now = utcnow()
    await s.execute(sa.update(PasswordReset).where(PasswordReset.account_id == account_id,
                                                   PasswordReset.used_at.is_(None)).values(used_at=now))
    await s.execute(sa.update(RememberedDevice).where(RememberedDevice.account_id == account_id,
                                                      RememberedDevice.revoked_at.is_(None)).values(revoked_at=now))


# --- « Mot de passe oublié ? » ---------------------------------------------------------------------


def _signer(core: Core) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(core.settings.effective_secret_key, salt="monsisra.password-reset")


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


async def request_reset(core: Core, login: str, client: str | None, *, wait: bool = False) -> None:
    """Someone asks for a link for ``login`` (a username or an e-mail address). Throttled per
    address (429, which says nothing about accounts); everything else happens after the answer,
    identical whether or not an account matched. ``wait``: do it now (tests, scripts)."""
    login = (login or "").strip()[:254]
    if not login:
        raise Invalid("indiquez votre identifiant ou votre adresse e-mail")
    await accounts.count_key_attempt(core, f"resetip:{(client or '-')[:64]}", core.settings.ip_max_failures, login,
                                     client)
    work = _send_links(core, login, client)
    if wait:
        await work
        return
    task = asyncio.get_running_loop().create_task(work)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


async def send_link(core: Core, username: str, client: str | None) -> None:
    """Send the account a link now (an administrator's « envoyer un lien », a new account)."""
    await _send_links_now(core, username, client)


async def _send_links(core: Core, login: str, client: str | None) -> None:
    try:
        await _send_links_now(core, login, client)
    except Exception:
        log.exception("password reset request could not be handled")


async def _targets(s: Any, login: str) -> list[tuple[Account, str | None]]:
    """Accounts named by the login (username, or an address they receive notifications at),
    each with the address its link goes to: the card's notification e-mail, else the account's."""
    address = normalize_address(login) if "@" in login else None
    stmt = sa.select(Account, DirProfile.notification_email).outerjoin(DirProfile,
                                                                       DirProfile.account_id == Account.id)
    if address is None:
        stmt = stmt.where(Account.username == login)
    else:
        stmt = stmt.where(sa.or_(sa.func.lower(DirProfile.notification_email) == address,
                                 sa.func.lower(Account.email) == address))
    out = []
    for account, notify in (await s.execute(stmt.limit(5))).all():
        out.append((account, normalize_address(notify or "") or normalize_address(account.email or "")))
    return out


async def _send_links_now(core: Core, login: str, client: str | None) -> None:
    now = utcnow()
    minutes = core.settings.password_reset_minutes
    outgoing: list[tuple[str, bytes, str]] = []
    async with core.write() as tx:
        s = tx.session
        targets = await _targets(s, login)
        if not targets:
            audit.record(s, None, "password.reset.request", client=client,
                         detail={"login": login[:120], "sent": False, "reason": "aucun compte"})
        for account, address in targets:
            recent = await s.scalar(sa.select(sa.func.count()).select_from(PasswordReset).where(
                PasswordReset.account_id == account.id, PasswordReset.created_at > now - timedelta(hours=1)))
            reason = ("compte désactivé" if not account.active else
                      "mot de passe de l'annuaire de l'établissement" if account.auth_source != "local" else
                      "aucune adresse de notification" if address is None else
                      "trop de demandes dans l'heure" if recent >= core.settings.password_resets_per_hour else None)
            if reason is not None:
                audit.record(s, account.id, "password.reset.request", object_type="account", object_id=account.id,
                             client=client, detail={"sent": False, "reason": reason})
                continue
            secret = secrets.token_urlsafe(32)
            row = PasswordReset(account_id=account.id, token_hash=_digest(secret), created_at=now,
                                expires_at=now + timedelta(minutes=minutes), client=(client or "")[:64] or None)
            s.add(row)
            await s.flush()
            token = _signer(core).dumps({"i": row.id, "n": secret})
            link = f"{core.settings.base_url}/mot-de-passe/nouveau?{urlencode({'token': token})}"
            outgoing.append((address, _reset_mail(core, account, address, link, client, now), account.username))
            audit.record(s, account.id, "password.reset.request", object_type="account", object_id=account.id,
                         client=client, detail={"sent": True, "to": _masked(address)})
    for address, data, username in outgoing:
        if core.mailer is None:
            log.warning("password reset link for %s not sent: no mailer in this process", username)
            continue
        try:
            await core.mailer(_sender(core), [address], data)
        except Exception as exc:
            log.warning("password reset link for %s not sent: %s", username, exc)


def _masked(address: str) -> str:
    local, _, domain = address.partition("@")
    return f"{local[:1]}…@{domain}"


def _sender(core: Core) -> str:
    return core.settings.notify_from or f"ne-pas-repondre@{core.settings.domain}"


def _reset_mail(core: Core, account: Account, address: str, link: str, client: str | None, now) -> bytes:
    name = accounts.display_name(account)
    when = in_paris(now)
    text = (f"Bonjour {name},\n\n"
            f"Une demande de nouveau mot de passe pour votre compte MonSisra ({account.username}) a été faite le "
            f"{when:%d/%m/%Y à %H:%M}" + (f" depuis l'adresse {client}" if client else "") + ".\n\n"
            f"Pour choisir un nouveau mot de passe, ouvrez ce lien dans les "
            f"{core.settings.password_reset_minutes} minutes :\n\n{link}\n\n"
            "Ce lien ne sert qu'une fois. Toutes vos sessions ouvertes seront fermées.\n"
            "Si vous n'êtes pas à l'origine de cette demande, ignorez ce message : votre mot de passe reste "
            "inchangé.\n\n-- \nMonSisra, messagerie sécurisée de santé\n")
    return mime.build(message_id=new_message_id(core.settings.domain), sender=("MonSisra", _sender(core)),
                      to=[(name, address)], cc=[], subject="MonSisra : choisir un nouveau mot de passe", text=text,
                      html=None, date=now, files=[], headers={"Auto-Submitted": "auto-generated"})


def _load(core: Core, token: str) -> tuple[int, str] | None:
    if not token or len(token) > 500:
        return None
    try:
        data = _signer(core).loads(token, max_age=core.settings.password_reset_minutes * 60)
    except BadSignature:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("i"), int) or not isinstance(data.get("n"), str):
        return None
    return data["i"], data["n"]


def _refused(client: str | None, account_id: int | None = None, why: str = "") -> Invalid:
    """The refusal of a link, carrying its audit entry (written by Core as the error passes)."""
    exc = Invalid(LINK_REFUSED)
    exc.audit.append(audit.entry(account_id, "password.reset.refused", object_type="account",
                                 object_id=account_id or "", client=client, detail={"reason": why}))
    return exc


async def check_link(core: Core, token: str, client: str | None) -> dict[str, Any]:
    """Whether a link may still be used (without using it): the account it is for."""
    loaded = _load(core, token)
    if loaded is None:
        exc = _refused(client, why="signature invalide ou lien expiré")
        await audit.record_now(core, exc.audit)
        exc.audit = []
        raise exc
    async with core.read() as s:
        row = (await s.execute(sa.select(PasswordReset, Account).join(Account, Account.id == PasswordReset.account_id)
                               .where(PasswordReset.id == loaded[0]))).first()
        if row is None or row[0].token_hash != _digest(loaded[1]) or row[0].used_at is not None \
                or as_utc(row[0].expires_at) <= utcnow() or not row[1].active:
            raise _refused(client, row[1].id if row else None, "lien déjà utilisé ou expiré")
        account = row[1]
    return {"username": account.username, "name": accounts.display_name(account)}


async def complete_reset(core: Core, token: str, new: str, client: str | None) -> str:
    """Use a link: the new password is set, the link and every other one of the account die,
    every session ends. Returns the username."""
    info = await check_link(core, token, client)
    reset_id, secret = _load(core, token) or (0, "")
    async with core.read() as s:
        account = await s.scalar(sa.select(Account).where(Account.username == info["username"]))
    assert account is not None
    _strong(new, account)
    password_hash = await accounts.hash_off_loop(core, new)
    now = utcnow()
    async with core.write() as tx:
        s = tx.session
        # The one statement that makes a link single-use, even against two clicks at once.
        used = (await s.execute(sa.update(PasswordReset).where(
            PasswordReset.id == reset_id, PasswordReset.token_hash == _digest(secret),
            PasswordReset.used_at.is_(None), PasswordReset.expires_at > now).values(used_at=now)
            .returning(PasswordReset.account_id))).scalar()
        if used is None:
            raise _refused(client, account.id, "lien déjà utilisé ou expiré")
        await s.execute(sa.update(Account).where(Account.id == used)
                        .values(password_hash=password_hash, password_changed_at=now))
        await accounts.end_sessions_in(tx, used, None, "session terminée : le mot de passe a été réinitialisé")
        await _void_links(s, used)
        audit.record(s, used, "password.reset", object_type="account", object_id=used, client=client)
    return account.username
