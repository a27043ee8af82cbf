"""« Mots de passe d'application »: how a mail client (IMAP, SMTP submission) logs in to an
account protected by a second factor, which a client cannot type.

The server makes the secret (28 characters of a 31-letter alphabet, about 138 bits, grouped by
four for typing: ``abcd-efgh-…``), shows it once, and keeps only its SHA-256. A slow password
hash protects what people choose; a secret this random cannot be guessed from a fast hash, and a
deterministic hash lets a login find its row through a unique index instead of trying every
hash of the account. Only the owner lists, creates and revokes its own (another's id is « not
found »); an account disabled by an administrator cannot use any (``login`` checks ``active``).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any

import sqlalchemy as sa

from monsisra.domain.clock import iso, utcnow
from monsisra.domain.text import TextRefused, check_line
from monsisra.services import audit
from monsisra.services.core import Actor, Core
from monsisra.services.errors import Conflict, Invalid, NotFound
from monsisra.store.models import Account
from monsisra.store.reach import AppPassword

ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"  # no 0/o, 1/l/i: copied by hand from a screen
LENGTH, GROUP = 28, 4
MAX_ACTIVE = 50


def _digest(normalised: str) -> str:
    return hashlib.sha256(normalised.encode()).hexdigest()


def normalise(value: str) -> str | None:
    """The secret as typed (any case, with or without dashes or spaces), or None when ``value``
    cannot be an app password at all."""
    raw = "".join(c for c in value.lower() if c not in " -")
    if len(raw) != LENGTH or any(c not in ALPHABET for c in raw):
        return None
    return raw


def _new_secret() -> str:
    raw = "".join(secrets.choice(ALPHABET) for _ in range(LENGTH))
    return "-".join(raw[i:i + GROUP] for i in range(0, LENGTH, GROUP))


def _public(row: AppPassword) -> dict[str, Any]:
    return {"id": row.id, "label": row.label, "created_at": iso(row.created_at),
            "last_used_at": iso(row.last_used_at), "last_used_via": row.last_used_via,
            "last_used_client": row.last_used_client}


async def create(core: Core, actor: Actor, label: str) -> dict[str, Any]:
    """A new app password for the acting account: ``password`` is in this answer and nowhere else."""
    try:
        label = check_line(label or "", "nom de l'application").strip()
    except TextRefused as exc:
        raise Invalid(str(exc)) from None
    if not label:
        raise Invalid("donnez un nom à ce mot de passe d'application (par exemple « Thunderbird cabinet »)")
    if len(label) > 120:
        raise Invalid("le nom du mot de passe d'application dépasse 120 caractères")
    secret = _new_secret()
    async with core.write() as tx:
        s = tx.session
        active = await s.scalar(sa.select(sa.func.count()).select_from(AppPassword).where(
            AppPassword.account_id == actor.account_id, AppPassword.revoked_at.is_(None)))
        if (active or 0) >= MAX_ACTIVE:
            raise Conflict(f"déjà {MAX_ACTIVE} mots de passe d'application actifs : révoquez ceux qui ne servent plus")
        row = AppPassword(account_id=actor.account_id, label=label, secret_hash=_digest(normalise(secret) or ""),
                          created_at=utcnow())
        s.add(row)
        await s.flush()
        audit.record(s, actor.account_id, "app_password.create", object_type="app_password", object_id=row.id,
                     client=actor.client, detail={"label": label})
        return {"id": row.id, "label": label, "password": secret, "created_at": iso(row.created_at)}


async def list_mine(core: Core, actor: Actor) -> list[dict[str, Any]]:
    """The acting account's app passwords still in force, oldest first (never their secret)."""
    async with core.read() as s:
        rows = (await s.scalars(sa.select(AppPassword).where(
            AppPassword.account_id == actor.account_id, AppPassword.revoked_at.is_(None))
            .order_by(AppPassword.id))).all()
    return [_public(r) for r in rows]


async def revoke(core: Core, actor: Actor, app_password_id: int) -> None:
    """Revoke one of the acting account's app passwords; another's, or one already revoked, is
    :class:`NotFound` (its existence is not revealed)."""
    async with core.write() as tx:
        done = (await tx.session.execute(sa.update(AppPassword).where(
            AppPassword.id == app_password_id, AppPassword.account_id == actor.account_id,
            AppPassword.revoked_at.is_(None)).values(revoked_at=utcnow()))).rowcount
        if not done:
            raise NotFound("mot de passe d'application introuvable")
        audit.record(tx.session, actor.account_id, "app_password.revoke", object_type="app_password",
                     object_id=app_password_id, client=actor.client)


async def check(core: Core, username: str, password: str, client: str | None, via: str) -> tuple[Account, int] | None:
    """The active account whose login is ``username`` and one of whose app passwords in force
    is ``password``, and that app password's id (its use recorded); None otherwise. Not
    throttled here: the caller sends every miss on to the throttled password check."""
    normalised = normalise(password)
    if normalised is None:
        return None
    digest = _digest(normalised)
    async with core.read() as s:
        found = (await s.execute(
            sa.select(AppPassword.id, AppPassword.secret_hash, Account)
            .join(Account, Account.id == AppPassword.account_id)
            .where(AppPassword.secret_hash == digest, AppPassword.revoked_at.is_(None)))).first()
    if found is None or not hmac.compare_digest(found.secret_hash, digest):
        return None
    account = found.Account
    if account.username != username or not account.active:
        return None
    async with core.write() as tx:
        await tx.session.execute(sa.update(AppPassword).where(AppPassword.id == found.id).values(
            last_used_at=utcnow(), last_used_via=via[:20], last_used_client=(client or "")[:120] or None))
    return account, found.id
