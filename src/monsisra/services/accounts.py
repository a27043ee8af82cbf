"""Accounts: creation (with the PER mailbox), password login with throttling, bearer tokens
and the sessions they stand for (ending one closes its live sockets on every process)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import secrets
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy.ext.asyncio import AsyncSession

from monsisra.domain.clock import as_utc, utcnow
from monsisra.domain.model import Category
from monsisra.domain.text import TextRefused, check_line
from monsisra.events import SESSION_ENDED
from monsisra.services import audit, mailboxes
from monsisra.services.core import Actor, Core, Tx
from monsisra.services.errors import AuthFailed, Conflict, Invalid, NotFound, SecondFactorRequired, Throttled
from monsisra.store.identity import SessionAuth
from monsisra.store.models import Account, LoginThrottle, Mailbox, Token

_hasher = PasswordHasher()  # argon2id with the library's current recommended parameters
# Verified against when the username is unknown, so that timing does not reveal accounts.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))
T = TypeVar("T")


@dataclass(frozen=True)
class NewAccount:
    username: str
    password: str | None
    first_name: str = ""
    last_name: str = ""
    civility: str = ""
    profession: str = ""
    profession_code: str | None = None
    specialty: str = ""
    national_id: str | None = None
    email: str | None = None
    is_admin: bool = False
    personal_mailbox: bool = True


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def _validate_new(new: NewAccount) -> None:
    if not new.username or len(new.username) > 120 or not all(c.isalnum() or c in "._-" for c in new.username):
        raise Invalid("identifiant invalide : lettres, chiffres, « . », « _ » ou « - »")
    if new.password is not None and len(new.password) < 4:
        raise Invalid("mot de passe trop court")
    if new.national_id and not (new.national_id.isdigit() and len(new.national_id) in (10, 12)):
        raise Invalid("identifiant national invalide (RPPS : 8 + 11 chiffres)")
    if new.personal_mailbox and not (new.first_name or new.last_name):
        raise Invalid("nom et prénom nécessaires pour créer la boîte personnelle")
    for label, value in (("prénom", new.first_name), ("nom", new.last_name), ("civilité", new.civility),
                         ("profession", new.profession), ("spécialité", new.specialty),
                         ("e-mail", new.email or "")):
        try:
            check_line(value, label)
        except TextRefused as exc:
            raise Invalid(str(exc)) from None


async def create_account(core: Core, new: NewAccount, actor: Actor | None = None,
                         source: str = "local") -> tuple[Account, Mailbox | None]:
    """Create an account and, for a professional, the PER mailbox ``prenom.nom@domain``.
    ``source``: "local" (password kept here) or "ldap" (the directory checks it)."""
    _validate_new(new)
    password_hash = await _off_loop(core, hash_password, new.password) if new.password else None
    async with core.write() as tx:
        s = tx.session
        if await s.scalar(sa.select(Account.id).where(Account.username == new.username)):
            raise Conflict(f"l'identifiant {new.username} est déjà pris")
        account = Account(
            username=new.username,
            password_hash=password_hash,
            first_name=new.first_name.strip(),
            last_name=new.last_name.strip(),
            civility=new.civility,
            profession=new.profession,
            profession_code=new.profession_code,
            specialty=new.specialty,
            national_id=new.national_id,
            email=new.email,
            is_admin=new.is_admin,
            auth_source=source,
            password_changed_at=utcnow() if password_hash else None,
        )
        s.add(account)
        await s.flush()
        mailbox = await mailboxes.create_personal(s, account, core.settings.domain) if new.personal_mailbox else None
        audit.record(s, actor.account_id if actor else None, "account.create", object_type="account",
                     object_id=account.id, client=actor.client if actor else None,
                     detail={"username": account.username, "source": source,
                             "mailbox": mailbox.address if mailbox else None})
    return account, mailbox


async def _create_from_directory(core: Core, **fields: Any) -> tuple[Account, Mailbox | None]:
    return await create_account(core, NewAccount(password=None, **fields), source="ldap")


async def set_password(core: Core, username: str, password: str) -> None:
    """Change the password; every session of the account ends (its live sockets close)."""
    if len(password) < 4:
        raise Invalid("mot de passe trop court")
    password_hash = await _off_loop(core, hash_password, password)
    async with core.write() as tx:
        account = await tx.session.scalar(sa.select(Account).where(Account.username == username))
        if account is None:
            raise NotFound(f"compte {username} introuvable")
        if account.auth_source != "local":
            raise Invalid(f"le mot de passe de {username} est géré par l'annuaire de son établissement")
        account.password_hash = password_hash
        account.password_changed_at = utcnow()
        await _end_sessions(tx, account.id, None, "session terminée : le mot de passe a changé")
        audit.record(tx.session, account.id, "account.password")


async def set_active(core: Core, username: str, active: bool, actor: Actor | None = None) -> None:
    """Deactivate (every session ends at once) or reactivate an account."""
    async with core.write() as tx:
        account = await tx.session.scalar(sa.select(Account).where(Account.username == username))
        if account is None:
            raise NotFound(f"compte {username} introuvable")
        account.active = active
        if not active:
            await _end_sessions(tx, account.id, None, "session terminée : le compte a été désactivé")
        audit.record(tx.session, actor.account_id if actor else None,
                     "account.activate" if active else "account.deactivate", object_type="account",
                     object_id=account.id)


# --- password hashing, off the event loop ---------------------------------------------------

_pools: dict[int, ThreadPoolExecutor] = {}


async def _off_loop(core: Core, fn: Callable[..., T], *args: Any) -> T:
    """Run argon2 in a small bounded pool: it releases the GIL, so the loop keeps serving
    other requests while guesses are checked (on the loop, 100 of them stalled it for 10 s)."""
    size = max(1, core.settings.password_threads)
    pool = _pools.get(size)
    if pool is None:
        pool = _pools[size] = ThreadPoolExecutor(max_workers=size, thread_name_prefix="argon2")
    return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)


async def verify_password(core: Core, password_hash: str | None, password: str) -> bool:
    """Check a password against a stored hash, off the loop (a missing hash: a dummy one, same time)."""
    return await _off_loop(core, _verify, password_hash or _DUMMY_HASH, password) and bool(password_hash)


async def hash_off_loop(core: Core, password: str) -> str:
    return await _off_loop(core, hash_password, password)


def password_matches(password_hash: str, password: str) -> bool:
    """Whether ``password`` is the one hashed (no throttling: not for logins)."""
    return _verify(password_hash, password)


def _verify(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


# --- throttling ---------------------------------------------------------------------------
#
# Attempts are counted *before* the password is checked, by one statement per key that
# increments and returns the count (INSERT … ON CONFLICT DO UPDATE … RETURNING), so parallel
# guesses cannot all slip under the limit; over it, the attempt is refused without checking.
# A success takes its own attempt back. Keys slow down the guesser, not the owner:
#   pair:<login>|<addr>   this login from this address          login_max_failures
#   ip:<addr>             any login from this address           ip_max_failures
#   account:<login>       this login from browsers it does not know (and the API): account_max_failures
#   device:<id>           this login from a browser it logged in from before (device cookie):
#                         login_max_failures, and none of the others — an attacker elsewhere
#                         cannot lock the owner's own browser out.


@dataclass(frozen=True)
class _Limit:
    key: str
    limit: int
    forgiven: str  # on success: "clear" the counter, or "decrement" it by this attempt


def _limits(settings: Any, username: str, client: str | None, device: str | None) -> list[_Limit]:
    login = username.strip().lower()[:120]
    if device:
        return [_Limit(f"device:{device}"[:200], settings.login_max_failures, "clear")]
    addr = (client or "-")[:64]
    # Narrowest first: an attempt refused by its own pair counter is not charged to the wider
    # ones, so one noisy address cannot push the account-wide count over for everyone.
    return [_Limit(f"pair:{login}|{addr}"[:200], settings.login_max_failures, "clear"),
            _Limit(f"ip:{addr}", settings.ip_max_failures, "decrement"),
            _Limit(f"account:{login}"[:200], settings.account_max_failures, "decrement")]


def _upsert(dialect_insert: Any, key: str, now: datetime, cutoff: datetime) -> Any:
    t = LoginThrottle
    stmt = dialect_insert(t).values(key=key, failures=1, window_start=now, locked_until=None)
    # A new window once the old one is over (and no lock is running), or once a lock has ended.
    fresh = sa.or_(sa.and_(t.locked_until.is_(None), t.window_start < cutoff),
                   sa.and_(t.locked_until.is_not(None), t.locked_until <= now))
    stmt = stmt.on_conflict_do_update(index_elements=[t.key], set_={
        "failures": sa.case((fresh, 1), else_=t.failures + 1),
        "window_start": sa.case((fresh, now), else_=t.window_start),
        "locked_until": sa.case((fresh, None), else_=t.locked_until),
    })
    return stmt.returning(t.failures, t.locked_until)


async def _count_attempt(core: Core, limits: list[_Limit], username: str, client: str | None) -> None:
    """Count this attempt on each key; :class:`Throttled` (nothing checked) once one is over."""
    st = core.settings
    now = utcnow()
    cutoff = now - timedelta(seconds=st.login_window_seconds)
    if core.db.is_sqlite:
        from sqlalchemy.dialects.sqlite import insert
    else:
        from sqlalchemy.dialects.postgresql import insert
    refused_until: datetime | None = None
    async with core.write() as tx:
        for lim in limits:
            failures, locked_until = (await tx.session.execute(_upsert(insert, lim.key, now, cutoff))).one()
            if failures <= lim.limit:
                continue
            if locked_until is None or as_utc(locked_until) <= now:
                locked_until = now + timedelta(seconds=max(st.login_lockout_seconds, 1))
                await tx.session.execute(sa.update(LoginThrottle).where(LoginThrottle.key == lim.key)
                                         .values(locked_until=locked_until))
            refused_until = as_utc(locked_until)
            audit.record(tx.session, None, "login.throttled", client=client,
                         detail={"username": username[:120], "key": lim.key.partition(":")[0]})
            break
    if refused_until is not None:
        seconds = max(1, math.ceil((refused_until - now).total_seconds()))
        minutes = (seconds + 59) // 60
        plural = "s" if minutes > 1 else ""
        raise Throttled(f"trop de tentatives de connexion ; réessayez dans {minutes} minute{plural}",
                        retry_after=seconds)


async def _forgive(core: Core, limits: list[_Limit]) -> None:
    """A success: its own counters start again, and the shared ones forget this attempt."""
    cleared = [lim.key for lim in limits if lim.forgiven == "clear"]
    decremented = [lim.key for lim in limits if lim.forgiven == "decrement"]
    async with core.write() as tx:
        if cleared:
            await tx.session.execute(sa.delete(LoginThrottle).where(LoginThrottle.key.in_(cleared)))
        if decremented:
            await tx.session.execute(
                sa.update(LoginThrottle).where(LoginThrottle.key.in_(decremented), LoginThrottle.failures > 0,
                                               LoginThrottle.locked_until.is_(None))
                .values(failures=LoginThrottle.failures - 1))


async def count_key_attempt(core: Core, key: str, limit: int, username: str, client: str | None) -> None:
    """Count one attempt on a key of another guessable step (current password at a change, reset
    requests from an address…): :class:`Throttled` once over ``limit`` in the window."""
    await _count_attempt(core, [_Limit(key[:200], limit, "clear")], username, client)


async def clear_attempts(core: Core, key: str) -> None:
    await _forgive(core, [_Limit(key[:200], 0, "clear")])


def limit(key: str, max_failures: int, forgiven: str = "clear") -> _Limit:
    """A throttling key for another kind of attempt (a one-time code…), counted like passwords."""
    return _Limit(key[:200], max_failures, forgiven)


async def count_attempt(core: Core, limits: list[_Limit], username: str, client: str | None) -> None:
    """Count one attempt on ``limits`` before it is checked; :class:`Throttled` once one is over."""
    await _count_attempt(core, limits, username, client)


async def forgive(core: Core, limits: list[_Limit]) -> None:
    """A success: see ``_forgive``."""
    await _forgive(core, limits)


async def authenticate(core: Core, username: str, password: str, client: str | None = None,
                       device: str | None = None) -> Account:
    """Check a password, throttled (see above). ``device`` is the id of a device cookie the
    caller has verified as issued to this very login; without one the attempt is untrusted."""
    limits = _limits(core.settings, username, client, device)
    await _count_attempt(core, limits, username, client)
    async with core.read() as session:
        account = await session.scalar(sa.select(Account).where(Account.username == username))
    by_directory = account.auth_source != "local" if account is not None else bool(core.settings.ldap_url)
    if by_directory:
        # The establishment's directory decides (services/ldap_login.py).
        from monsisra.services import ldap_login

        found = await ldap_login.check(core, username, password)
        account = await ldap_login.account_for(core, found, account, _create_from_directory) \
            if found is not None else account
        ok = found is not None and account is not None
    else:
        # Unknown logins are checked against a dummy hash, so that timing does not reveal accounts.
        stored = account.password_hash if account is not None and account.password_hash else _DUMMY_HASH
        ok = await _off_loop(core, _verify, stored, password) and account is not None and bool(account.password_hash)
    if not ok or account is None or not account.active:
        async with core.write() as tx:
            audit.record(tx.session, account.id if account else None, "login.failure", client=client,
                         detail={"username": username[:120]})
        raise AuthFailed("identifiant ou mot de passe incorrect")
    await _forgive(core, limits)
    return account


# --- tokens -------------------------------------------------------------------------------


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def issue_token(core: Core, account: Account, *, kind: str = "api", client: str | None = None,
                      ttl_seconds: int | None = None, user_agent: str | None = None, methods: str = "pwd",
                      limited: bool = False) -> str:
    """A new bearer token; only its sha256 is stored. ``methods`` says how the session was
    opened (``pwd``, ``pwd+otp``, ``cps``, ``psc``…); a ``limited`` one may only enrol the
    second factor (see :func:`actor_for_token`)."""
    token = secrets.token_urlsafe(32)
    now = utcnow()
    async with core.write() as tx:
        row = Token(
            account_id=account.id,
            token_hash=_digest(token),
            kind=kind,
            expires_at=now + timedelta(seconds=ttl_seconds or core.settings.token_ttl_seconds),
            client=(client or "")[:120] or None,
            user_agent=(user_agent or "")[:255] or None,
            last_used_at=now,
        )
        tx.session.add(row)
        await tx.session.flush()
        tx.session.add(SessionAuth(token_id=row.id, methods=methods, limited=limited))
        await tx.session.execute(sa.update(Account).where(Account.id == account.id).values(last_login_at=now))
        audit.record(tx.session, account.id, "login.success", client=client,
                     detail={"kind": kind, "source": account.auth_source, "methods": methods,
                             **({"limited": True} if limited else {})})
    return token


async def actor_for_token(core: Core, token: str, client: str | None = None, *,
                          allow_limited: bool = False) -> Actor:
    """The actor a bearer token stands for, or :class:`AuthFailed`. A session opened with a
    password alone where a second factor is required is refused (:class:`SecondFactorRequired`)
    unless ``allow_limited`` (the enrolment of that factor)."""
    async with core.read() as session:
        return await actor_in(core, session, token, client, allow_limited=allow_limited)


async def actor_in(core: Core, session: AsyncSession, token: str, client: str | None = None, *,
                   allow_limited: bool = False) -> Actor:
    """:func:`actor_for_token` in a session the caller has opened for its own reads: a request
    that reads the database anyway (a directory search) checks its token in the same
    transaction, one indexed statement, instead of opening a session for it alone. The same
    checks, on the same rows, at every call: a session ended a moment ago is refused."""
    row = (await session.execute(token_query(token))).first()
    return actor_of_row(core, row, client, allow_limited=allow_limited)


def token_query(token: str) -> sa.Select:
    """The statement :func:`actor_in` runs: at most one row, whose columns :func:`actor_of_row`
    checks. A caller may read it as a subquery of its own first statement (a directory search:
    one round trip for the token and its own first read), as long as the row it hands to
    :func:`actor_of_row` has these columns (``token_id`` None when no token matched)."""
    return (sa.select(Token.id.label("token_id"), Token.expires_at, Token.revoked_at, Token.last_used_at,
                      Account.id.label("account_id"), Account.username, Account.is_admin, Account.active,
                      SessionAuth.limited)
            .join(Account, Account.id == Token.account_id)
            .outerjoin(SessionAuth, SessionAuth.token_id == Token.id)
            .where(Token.token_hash == _digest(token)))


def actor_of_row(core: Core, row: Any, client: str | None = None, *, allow_limited: bool = False) -> Actor:
    """The checks of every request on a row of :func:`token_query` (or ``None``): refused when
    absent, revoked, expired, the account disabled, or a second factor still required."""
    now = utcnow()
    if (row is None or row.token_id is None or row.revoked_at is not None or as_utc(row.expires_at) <= now
            or not row.active):
        raise AuthFailed("jeton absent, expiré ou révoqué ; reconnectez-vous")
    if row.limited and not allow_limited:
        raise SecondFactorRequired("second facteur requis : activez la validation en deux étapes "
                                   "(POST /api/v1/me/totp puis /api/v1/me/totp/confirm) avant d'accéder aux messages",
                                   enrol="/api/v1/me/totp")
    if row.last_used_at is None or (now - as_utc(row.last_used_at)).total_seconds() > TOUCH_SECONDS:
        # « Dernière activité » of the sessions page, at most once a minute per session, after
        # the request's own work and never in its way (a busy database just skips it).
        task = asyncio.get_running_loop().create_task(_touch(core, row.token_id, now))
        _touches.add(task)
        task.add_done_callback(_touches.discard)
    return Actor(row.account_id, row.username, row.is_admin, client, token_id=row.token_id,
                 expires_at=as_utc(row.expires_at))


async def token_alive(core: Core, token_id: int) -> bool:
    """Whether the session ``token_id`` may still act: not revoked, not expired, account active."""
    async with core.read() as session:
        row = (await session.execute(
            sa.select(Token.expires_at, Token.revoked_at, Account.active)
            .join(Account, Account.id == Token.account_id).where(Token.id == token_id))).first()
    return row is not None and row.revoked_at is None and as_utc(row.expires_at) > utcnow() and bool(row.active)


TOUCH_SECONDS = 60
_touches: set[asyncio.Task] = set()


async def _touch(core: Core, token_id: int, now: datetime) -> None:
    try:
        async with core.write() as tx:
            await tx.session.execute(sa.update(Token).where(Token.id == token_id).values(last_used_at=now))
    except Exception as exc:  # best effort: a busy or unreachable database is not this request's failure
        logging.getLogger(__name__).debug("last use of session %s not noted: %s", token_id, exc)


async def _end_sessions(tx: Tx, account_id: int, token_ids: list[int] | None, reason: str) -> None:
    """Revoke the account's given tokens (all of them when ``None``) and, once this commits,
    tell every process to close the live sockets bound to them."""
    query = sa.update(Token).where(Token.account_id == account_id, Token.revoked_at.is_(None))
    if token_ids is not None:
        if not token_ids:
            return
        query = query.where(Token.id.in_(token_ids))
    await tx.session.execute(query.values(revoked_at=utcnow()))
    tx.emit(SESSION_ENDED, [account_id], token_ids=token_ids, reason=reason)


end_sessions_in = _end_sessions  # for the other services of identity (sessions, passwords)


async def end_session(core: Core, actor: Actor, reason: str = "session terminée : déconnexion") -> None:
    """Log out: the session the actor came with ends, and its live sockets close, everywhere."""
    if actor.token_id is None:
        return
    async with core.write() as tx:
        await _end_sessions(tx, actor.account_id, [actor.token_id], reason)
        audit.record(tx.session, actor.account_id, "logout", client=actor.client, object_type="token",
                     object_id=actor.token_id)


async def revoke_token(core: Core, token: str, reason: str = "session terminée : jeton révoqué") -> None:
    """Revoke a bearer token given by value (unknown or already revoked: nothing happens)."""
    async with core.write() as tx:
        row = (await tx.session.execute(
            sa.select(Token.id, Token.account_id).where(Token.token_hash == _digest(token),
                                                        Token.revoked_at.is_(None)))).first()
        if row is not None:
            await _end_sessions(tx, row.account_id, [row.id], reason)
            audit.record(tx.session, row.account_id, "logout", object_type="token", object_id=row.id)


# --- profile ------------------------------------------------------------------------------


async def get_account(core: Core, actor: Actor) -> Account:
    async with core.read() as session:
        account = await session.get(Account, actor.account_id)
    if account is None:
        raise NotFound("compte introuvable")
    return account


def account_dict(account: Account) -> dict:
    return {
        "id": account.id,
        "username": account.username,
        "civility": account.civility,
        "first_name": account.first_name,
        "last_name": account.last_name,
        "display_name": display_name(account),
        "profession": account.profession,
        "specialty": account.specialty,
        "national_id": account.national_id,
        "is_admin": account.is_admin,
        "appear_absent": account.appear_absent,
        "inbox_categories": account.inbox_categories or [c.value for c in Category],
    }


def display_name(account: Account) -> str:
    parts = (account.civility, account.first_name, account.last_name.upper())
    return " ".join(p for p in parts if p) or account.username


def initials(first_name: str, last_name: str, fallback: str = "") -> str:
    letters = "".join(p[:1] for p in (first_name, last_name) if p).upper()
    return letters or fallback[:2].upper()


async def update_preferences(core: Core, actor: Actor, *, appear_absent: bool | None = None,
                             inbox_categories: list[str] | None = None) -> Account:
    if inbox_categories is not None:
        unknown = [c for c in inbox_categories if c not in {c.value for c in Category}]
        if unknown:
            raise Invalid(f"catégories inconnues : {', '.join(unknown)}")
    async with core.write() as tx:
        account = await tx.session.get(Account, actor.account_id)
        if account is None:
            raise NotFound("compte introuvable")
        if appear_absent is not None:
            account.appear_absent = appear_absent
        if inbox_categories is not None:
            account.inbox_categories = sorted(set(inbox_categories))
        mailbox_ids = await mailboxes.usable_mailbox_ids(tx.session, actor.account_id)
        tx.emit("counts", [actor.account_id], mailbox_ids=mailbox_ids)
    if appear_absent is not None:
        from monsisra.services import presence  # « Apparaître absent » shows offline everywhere, live

        await presence.announce(core, actor.account_id)
    return account
