"""Second factor: TOTP (RFC 6238, pyotp) with recovery codes, and browsers remembered after it.

Enrolment gives a secret, its ``otpauth://`` URI and ten recovery codes, shown once; the factor is
active once a first code confirms it (the one in force stays until then). A code is accepted
once: each account keeps the last time step it used, and only a later one may follow (one atomic
UPDATE, so two requests cannot both spend it). Wrong codes are counted like wrong passwords
(``accounts.count_attempt``), a recovery code works once, and every failure is audited.

Policy: with ``MONSISRA_TOTP_REQUIRED`` (the default) a session opened with a password alone,
for an account without a factor, is *limited*: it may enrol one and nothing else
(``errors.SecondFactorRequired``). Accounts marked exempt (the demo's) are not held to it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

import pyotp
import sqlalchemy as sa

from monsisra.domain.clock import as_utc, utcnow
from monsisra.services import accounts, audit, sealed
from monsisra.services.core import Actor, Core
from monsisra.services.errors import AuthFailed, Conflict, Invalid, NotFound
from monsisra.store.identity import RecoveryCode, RememberedDevice, SecondFactor, SessionAuth
from monsisra.store.models import Account

PURPOSE = "totp"
STEP = 30
RECOVERY_CODES = 10
_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"  # no 0/o, 1/l/i: read aloud or copied by hand


@dataclass(frozen=True)
class Enrolment:
    secret: str
    otpauth_uri: str
    recovery_codes: list[str]

    def as_dict(self) -> dict:
        return {"secret": self.secret, "otpauth_uri": self.otpauth_uri, "recovery_codes": self.recovery_codes}


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _new_recovery_code() -> str:
    raw = "".join(secrets.choice(_ALPHABET) for _ in range(10))
    return f"{raw[:5]}-{raw[5:]}"


def _normalise_recovery(value: str) -> str:
    return "".join(c for c in value.lower() if c not in " -")


def _is_totp_code(value: str) -> bool:
    return len(value) == 6 and value.isascii() and value.isdigit()


def _matching_step(secret: str, code: str, now: datetime) -> int | None:
    """The time step (now, or one either side for clock drift) whose code is ``code``."""
    totp = pyotp.TOTP(secret, interval=STEP)
    current = int(now.timestamp()) // STEP
    found = None
    for step in (current - 1, current, current + 1):  # every candidate compared: constant work
        if hmac.compare_digest(totp.generate_otp(step), code):
            found = step
    return found


async def _factor(session, account_id: int) -> SecondFactor | None:
    return await session.get(SecondFactor, account_id)


async def is_enrolled(core: Core, account_id: int) -> bool:
    async with core.read() as session:
        factor = await _factor(session, account_id)
    return factor is not None and factor.secret is not None


async def is_required(core: Core, account_id: int) -> bool:
    """Whether this account must have a second factor before touching messages."""
    if not core.settings.totp_required:
        return False
    async with core.read() as session:
        factor = await _factor(session, account_id)
    return not (factor is not None and factor.exempt)


async def status(core: Core, actor: Actor) -> dict:
    """What « Paramètres » shows: active or not, required or not, codes and browsers left."""
    now = utcnow()
    async with core.read() as session:
        factor = await _factor(session, actor.account_id)
        codes_left = await session.scalar(sa.select(sa.func.count()).select_from(RecoveryCode).where(
            RecoveryCode.account_id == actor.account_id, RecoveryCode.pending.is_(False),
            RecoveryCode.used_at.is_(None)))
        browsers = await session.scalar(sa.select(sa.func.count()).select_from(RememberedDevice).where(
            RememberedDevice.account_id == actor.account_id, RememberedDevice.revoked_at.is_(None),
            RememberedDevice.expires_at > now))
    enabled = factor is not None and factor.secret is not None
    return {
        "enabled": enabled,
        "confirmed_at": as_utc(factor.confirmed_at).isoformat() if enabled and factor.confirmed_at else None,
        "pending": factor is not None and factor.pending_secret is not None,
        "required": core.settings.totp_required and not (factor is not None and factor.exempt),
        "recovery_codes_left": codes_left or 0 if enabled else 0,
        "remembered_browsers": browsers or 0,
    }


# --- enrolment ------------------------------------------------------------------------------


async def begin_enrolment(core: Core, actor: Actor) -> Enrolment:
    """A new secret and recovery codes, pending until :func:`confirm_enrolment`; the factor in
    force, if any, stays until then. Asking again replaces what was pending."""
    secret = pyotp.random_base32(32)  # 160 bits, RFC 4226's recommendation
    codes = [_new_recovery_code() for _ in range(RECOVERY_CODES)]
    async with core.write() as tx:
        s = tx.session
        account = await s.get(Account, actor.account_id)
        if account is None:
            raise NotFound("compte introuvable")
        factor = await _factor(s, actor.account_id)
        if factor is None:
            factor = SecondFactor(account_id=actor.account_id, exempt=False)
            s.add(factor)
        factor.pending_secret = sealed.seal(core.settings, PURPOSE, secret)
        factor.pending_at = utcnow()
        await s.execute(sa.delete(RecoveryCode).where(RecoveryCode.account_id == actor.account_id,
                                                      RecoveryCode.pending.is_(True)))
        s.add_all(RecoveryCode(account_id=actor.account_id, code_hash=_digest(_normalise_recovery(c)), pending=True)
                  for c in codes)
        audit.record(s, actor.account_id, "totp.enrol", client=actor.client, object_type="account",
                     object_id=actor.account_id)
        label = account.username
    issuer = core.settings.totp_issuer
    uri = pyotp.TOTP(secret, interval=STEP).provisioning_uri(name=label, issuer_name=issuer)
    return Enrolment(secret, uri, codes)


async def confirm_enrolment(core: Core, actor: Actor, otp: str | None) -> dict:
    """A first code from the new secret makes it the factor in force, with its recovery codes;
    remembered browsers are forgotten, and the session that confirmed it is no longer limited."""
    code = (otp or "").strip().replace(" ", "")
    if not _is_totp_code(code):
        raise Invalid("code à 6 chiffres attendu (application d'authentification)")
    async with core.read() as session:
        factor = await _factor(session, actor.account_id)
        account = await session.get(Account, actor.account_id)
    if factor is None or factor.pending_secret is None or account is None:
        raise Conflict("aucune activation en cours : demandez d'abord un nouveau secret (POST /api/v1/me/totp)")
    limits = _limits(core, account, actor.client, None)
    await accounts.count_attempt(core, limits, account.username, actor.client)
    secret = sealed.unseal(core.settings, PURPOSE, factor.pending_secret)
    step = _matching_step(secret, code, utcnow())
    now = utcnow()
    async with core.write() as tx:
        s = tx.session
        if step is None:
            audit.record(s, actor.account_id, "totp.confirm.failure", client=actor.client)
        else:
            done = (await s.execute(sa.update(SecondFactor).where(
                SecondFactor.account_id == actor.account_id,
                SecondFactor.pending_secret == factor.pending_secret).values(
                secret=factor.pending_secret, pending_secret=None, pending_at=None, confirmed_at=now,
                last_step=step))).rowcount
            if done != 1:
                raise Conflict("l'activation a changé entre-temps : recommencez")
            await s.execute(sa.delete(RecoveryCode).where(RecoveryCode.account_id == actor.account_id,
                                                          RecoveryCode.pending.is_(False)))
            await s.execute(sa.update(RecoveryCode).where(RecoveryCode.account_id == actor.account_id)
                            .values(pending=False))
            await s.execute(sa.update(RememberedDevice).where(RememberedDevice.account_id == actor.account_id,
                                                              RememberedDevice.revoked_at.is_(None))
                            .values(revoked_at=now))
            if actor.token_id is not None:
                await s.execute(sa.update(SessionAuth).where(SessionAuth.token_id == actor.token_id)
                                .values(limited=False, methods="pwd+otp"))
            audit.record(s, actor.account_id, "totp.confirm", client=actor.client, object_type="account",
                         object_id=actor.account_id)
    if step is None:
        raise AuthFailed("code incorrect : vérifiez l'heure de votre téléphone et saisissez le code affiché")
    await accounts.forgive(core, limits)
    return await status(core, actor)


async def disable(core: Core, actor: Actor, otp: str | None) -> dict:
    """Turn the factor off (a current code or a recovery code proves it is the owner); refused
    where the platform requires one."""
    account = await accounts.get_account(core, actor)
    if await is_required(core, actor.account_id):
        raise Conflict("la validation en deux étapes est obligatoire sur cette plateforme : "
                       "enrôlez un nouvel appareil plutôt que de la désactiver")
    await check(core, account, otp, actor.client, None)
    async with core.write() as tx:
        s = tx.session
        await s.execute(sa.update(SecondFactor).where(SecondFactor.account_id == actor.account_id).values(
            secret=None, pending_secret=None, pending_at=None, confirmed_at=None))
        await s.execute(sa.delete(RecoveryCode).where(RecoveryCode.account_id == actor.account_id))
        await s.execute(sa.update(RememberedDevice).where(RememberedDevice.account_id == actor.account_id,
                                                          RememberedDevice.revoked_at.is_(None))
                        .values(revoked_at=utcnow()))
        audit.record(s, actor.account_id, "totp.disable", client=actor.client)
    return await status(core, actor)


async def new_recovery_codes(core: Core, actor: Actor, otp: str | None) -> list[str]:
    """Ten new recovery codes (the old ones stop working), on a current code."""
    account = await accounts.get_account(core, actor)
    if not await is_enrolled(core, actor.account_id):
        raise Conflict("la validation en deux étapes n'est pas activée")
    await check(core, account, otp, actor.client, None)
    codes = [_new_recovery_code() for _ in range(RECOVERY_CODES)]
    async with core.write() as tx:
        await tx.session.execute(sa.delete(RecoveryCode).where(RecoveryCode.account_id == actor.account_id))
        tx.session.add_all(RecoveryCode(account_id=actor.account_id, code_hash=_digest(_normalise_recovery(c)),
                                        pending=False) for c in codes)
        audit.record(tx.session, actor.account_id, "totp.recovery_codes", client=actor.client)
    return codes


# --- at login ---------------------------------------------------------------------------------


def _limits(core: Core, account: Account, client: str | None, device: str | None) -> list:
    """Wrong codes are throttled like passwords: a browser the account knows has its own count;
    elsewhere per account and address, and per account with a low ceiling (a million codes)."""
    st = core.settings
    if device:
        return [accounts.limit(f"otp-device:{device}", st.login_max_failures)]
    return [accounts.limit(f"otp:{account.id}|{(client or '-')[:64]}", st.login_max_failures),
            accounts.limit(f"otp-account:{account.id}", st.otp_account_max_failures, "decrement")]


async def check(core: Core, account: Account, otp: str | None, client: str | None, device: str | None) -> str:
    """Check a one-time code or a recovery code for ``account`` (throttled, audited, each code
    accepted once); answers the method that passed, ``otp`` or ``recovery``, or raises."""
    value = (otp or "").strip().replace(" ", "")
    if not value:
        raise AuthFailed("code à usage unique requis", otp_required=True)
    limits = _limits(core, account, client, device)
    await accounts.count_attempt(core, limits, account.username, client)
    async with core.read() as session:
        factor = await _factor(session, account.id)
    if factor is None or factor.secret is None:
        raise AuthFailed("la validation en deux étapes n'est pas activée pour ce compte")
    now = utcnow()
    method, reason = None, "wrong"
    async with core.write() as tx:
        s = tx.session
        if _is_totp_code(value):
            step = _matching_step(sealed.unseal(core.settings, PURPOSE, factor.secret), value, now)
            if step is not None:
                spent = (await s.execute(sa.update(SecondFactor).where(
                    SecondFactor.account_id == account.id,
                    sa.or_(SecondFactor.last_step.is_(None), SecondFactor.last_step < step))
                    .values(last_step=step))).rowcount
                method, reason = ("otp", "") if spent == 1 else (None, "replay")
        else:
            used = (await s.execute(sa.update(RecoveryCode).where(
                RecoveryCode.account_id == account.id, RecoveryCode.pending.is_(False),
                RecoveryCode.code_hash == _digest(_normalise_recovery(value)), RecoveryCode.used_at.is_(None))
                .values(used_at=now))).rowcount
            method = "recovery" if used == 1 else None
        if method is None:
            audit.record(s, account.id, "login.otp.failure", client=client,
                         detail={"username": account.username, "reason": reason})
        elif method == "recovery":
            audit.record(s, account.id, "login.recovery_code", client=client, detail={"username": account.username})
    if method is None:
        if reason == "replay":
            raise AuthFailed("ce code a déjà servi : attendez le suivant", otp_required=True)
        raise AuthFailed("code incorrect", otp_required=True)
    await accounts.forgive(core, limits)
    return method


# --- remembered browsers ---------------------------------------------------------------------


async def remember_browser(core: Core, account_id: int, device: str, client: str | None) -> str:
    """After the second factor: this browser (its device cookie) skips it until the returned
    secret's row expires or is revoked."""
    secret = secrets.token_urlsafe(32)
    now = utcnow()
    async with core.write() as tx:
        tx.session.add(RememberedDevice(account_id=account_id, secret_hash=_digest(secret),
                                        device_hash=_digest(device), client=(client or "")[:120] or None,
                                        created_at=now,
                                        expires_at=now + timedelta(days=core.settings.totp_remember_days)))
        audit.record(tx.session, account_id, "totp.remember_browser", client=client)
    return secret


async def browser_remembered(core: Core, account_id: int, secret: str | None, device: str | None) -> bool:
    """Whether this browser's remembered-device secret is live, for this account and device."""
    if not secret or not device:
        return False
    async with core.read() as session:
        row = await session.scalar(sa.select(RememberedDevice).where(RememberedDevice.secret_hash == _digest(secret)))
    return (row is not None and row.account_id == account_id and row.revoked_at is None
            and as_utc(row.expires_at) > utcnow() and hmac.compare_digest(row.device_hash, _digest(device)))


async def forget_browsers(core: Core, actor: Actor) -> int:
    async with core.write() as tx:
        n = (await tx.session.execute(sa.update(RememberedDevice).where(
            RememberedDevice.account_id == actor.account_id, RememberedDevice.revoked_at.is_(None))
            .values(revoked_at=utcnow()))).rowcount
        audit.record(tx.session, actor.account_id, "totp.forget_browsers", client=actor.client, detail={"count": n})
    return n


# --- administration ---------------------------------------------------------------------------


async def set_exempt(core: Core, account_ids: list[int], exempt: bool = True) -> None:
    """Hold (or not) these accounts to the second-factor policy (the demo's are exempt)."""
    async with core.write() as tx:
        for account_id in account_ids:
            factor = await _factor(tx.session, account_id)
            if factor is None:
                tx.session.add(SecondFactor(account_id=account_id, exempt=exempt))
            else:
                factor.exempt = exempt


async def reset(core: Core, username: str, actor: Actor | None = None) -> None:
    """An administrator removes a lost factor: the account enrols a new one at its next login."""
    async with core.write() as tx:
        s = tx.session
        account = await s.scalar(sa.select(Account).where(Account.username == username))
        if account is None:
            raise NotFound(f"compte {username} introuvable")
        await s.execute(sa.update(SecondFactor).where(SecondFactor.account_id == account.id).values(
            secret=None, pending_secret=None, pending_at=None, confirmed_at=None, last_step=None))
        await s.execute(sa.delete(RecoveryCode).where(RecoveryCode.account_id == account.id))
        await s.execute(sa.update(RememberedDevice).where(RememberedDevice.account_id == account.id,
                                                          RememberedDevice.revoked_at.is_(None))
                        .values(revoked_at=utcnow()))
        audit.record(s, actor.account_id if actor else None, "totp.reset", object_type="account",
                     object_id=account.id)


async def pending_enrolment(core: Core, actor: Actor) -> tuple[str, str] | None:
    """The secret being enrolled and its URI (to show the QR code again after a wrong code)."""
    async with core.read() as session:
        factor = await _factor(session, actor.account_id)
        account = await session.get(Account, actor.account_id)
    if factor is None or factor.pending_secret is None or account is None:
        return None
    secret = sealed.unseal(core.settings, PURPOSE, factor.pending_secret)
    return secret, pyotp.TOTP(secret, interval=STEP).provisioning_uri(name=account.username,
                                                                      issuer_name=core.settings.totp_issuer)
