"""The ways into a session: a password and its second factor, a CPS card, Pro Santé Connect.
Each ends in :func:`open_session`, which records how the session was opened (``session_auth``)
so that the second-factor policy and the portal can tell a strong login from a weak one."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from monsisra.services import accounts, audit, totp
from monsisra.services.core import Core
from monsisra.services.errors import AuthFailed
from monsisra.store.models import Account

STRONG_METHODS = ("otp", "recovery", "device", "cps", "psc")


@dataclass(frozen=True)
class Login:
    """An account that passed a login, how (``pwd+otp``, ``cps``…), and whether the session
    it opens is limited to enrolling a second factor."""

    account: Account
    methods: str
    limited: bool = False


async def password_login(core: Core, username: str, password: str, otp: str | None, client: str | None,
                         device: str | None = None, remembered: str | None = None) -> Login:
    """Password, then the second factor the account has (a code, or a browser remembered after
    one). Without a code where one is needed: :class:`AuthFailed` with ``otp_required``."""
    account = await accounts.authenticate(core, username, password, client, device=device)
    return await second_step(core, account, otp, client, device=device, remembered=remembered)


async def second_step(core: Core, account: Account, otp: str | None, client: str | None, *,
                      device: str | None = None, remembered: str | None = None) -> Login:
    """After the password: what the account's second factor asks for, if anything."""
    if await totp.is_enrolled(core, account.id):
        if otp:
            method = await totp.check(core, account, otp, client, device)
            return Login(account, f"pwd+{method}")
        if await totp.browser_remembered(core, account.id, remembered, device):
            return Login(account, "pwd+device")
        raise AuthFailed("code à usage unique requis : saisissez le code de votre application d'authentification",
                         otp_required=True)
    if await totp.is_required(core, account.id):
        return Login(account, "pwd", limited=True)
    return Login(account, "pwd")


async def open_session(core: Core, login: Login, *, kind: str, client: str | None,
                       user_agent: str | None = None) -> str:
    """The bearer token of a new session (web cookie or API), with how it was opened."""
    return await accounts.issue_token(core, login.account, kind=kind, client=client, methods=login.methods,
                                      limited=login.limited, user_agent=user_agent)


async def account_for_national_id(core: Core, national_id: str, method: str, client: str | None,
                                  detail: dict | None = None) -> Account:
    """The active account holding this national id (a card, Pro Santé Connect), or a refusal
    that is audited and says nothing of which accounts exist."""
    async with core.read() as session:
        found = list(await session.scalars(sa.select(Account).where(Account.national_id == national_id).limit(2)))
    if len(found) != 1 or not found[0].active:
        reason = "inconnu" if not found else ("ambigu" if len(found) > 1 else "inactif")
        async with core.write() as tx:
            audit.record(tx.session, found[0].id if len(found) == 1 else None, f"login.{method}.failure",
                         client=client, detail={"national_id": national_id, "reason": reason, **(detail or {})})
        raise AuthFailed("aucun compte actif ne correspond à cet identifiant national")
    return found[0]


def is_strong(methods: str) -> bool:
    return any(m in STRONG_METHODS for m in methods.split("+"))


async def purge_expired(core: Core) -> int:
    """Housekeeping of the identity tables: logins under way, codes, tokens and remembered
    browsers past their time (hourly, from services/maintenance.py)."""
    from datetime import timedelta

    from monsisra.domain.clock import utcnow
    from monsisra.store.identity import OidcLogin, PortalCode, PortalToken, RememberedDevice

    now = utcnow()
    removed = 0
    async with core.write() as tx:
        s = tx.session
        for stmt in (sa.delete(OidcLogin).where(OidcLogin.created_at < now - timedelta(hours=1)),
                     sa.delete(PortalCode).where(PortalCode.expires_at < now - timedelta(hours=1)),
                     sa.delete(PortalToken).where(PortalToken.expires_at < now),
                     sa.delete(RememberedDevice).where(sa.or_(RememberedDevice.expires_at < now,
                                                              RememberedDevice.revoked_at < now - timedelta(days=30)))):
            removed += (await s.execute(stmt)).rowcount or 0
    return removed
