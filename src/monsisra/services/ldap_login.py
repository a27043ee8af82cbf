"""Login through an establishment's LDAP directory (optional, ``MONSISRA_LDAP_URL``).

The user is found by a search (as the configured service account, or anonymously) with the
configured filter, then a bind *as that entry* with the typed password decides. The entry's
attributes are mapped to the account (names, e-mail, national id, profession) at every login;
a first login creates the account when the deployment allows it (``MONSISRA_LDAP_CREATE_ACCOUNTS``),
with its PER mailbox. Such an account has no password here: changing or resetting it is the
directory's business. A local account of the same name stays local (its password is checked
here, never the directory's), so a directory entry cannot take a local account over.

ldap3 is synchronous: every exchange runs in a thread, bounded by ``MONSISRA_LDAP_TIMEOUT``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from monsisra.config import Settings
from monsisra.services.core import Core
from monsisra.services.errors import ServiceError, Unavailable
from monsisra.store.models import Account

log = logging.getLogger(__name__)
LDAP = "ldap"
DOWN = "annuaire de l'établissement injoignable ; réessayez dans quelques minutes"


@dataclass(frozen=True)
class Entry:
    """What the directory says of a user who proved their password."""

    dn: str
    username: str
    first_name: str = ""
    last_name: str = ""
    email: str | None = None
    national_id: str | None = None
    profession: str = ""


def enabled(settings: Settings) -> bool:
    return bool(settings.ldap_url)


class _Down(Exception):
    pass


def _first(entry: Any, name: str) -> str:
    if not name or name not in entry.entry_attributes:
        return ""
    values = entry[name].values
    return str(values[0]).strip() if values else ""


def _server(settings: Settings):
    import ldap3

    tls = None
    if settings.ldap_url.lower().startswith("ldaps://") or settings.ldap_start_tls:
        ca = settings.ldap_ca_file or settings.tls_trust
        tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, version=ssl.PROTOCOL_TLS_CLIENT,
                        ca_certs_file=str(ca) if ca else None)
    return ldap3.Server(settings.ldap_url, connect_timeout=max(1, int(settings.ldap_timeout)), get_info=ldap3.NONE,
                        tls=tls)


def _connect(settings: Settings, server: Any, user: str | None, password: str | None):
    import ldap3

    # ldap3 packs the timeout into a socket option: whole seconds only.
    conn = ldap3.Connection(server, user=user, password=password, receive_timeout=max(1, int(settings.ldap_timeout)),
                            auto_bind=ldap3.AUTO_BIND_NONE, raise_exceptions=False, read_only=True)
    conn.open()
    if settings.ldap_start_tls and not settings.ldap_url.lower().startswith("ldaps://"):
        conn.start_tls()
    return conn


def _check(settings: Settings, username: str, password: str) -> Entry | None:
    """Search, then bind as the entry found; None for an unknown user or a wrong password."""
    import ldap3
    from ldap3.core.exceptions import LDAPException
    from ldap3.utils.conv import escape_filter_chars

    # An empty password would be an "unauthenticated bind", which succeeds: never a login.
    if not password or not username or len(username) > 120:
        return None
    try:
        server = _server(settings)
        search = _connect(settings, server, settings.ldap_bind_dn, settings.ldap_bind_password)
        try:
            if not search.bind():
                raise _Down(f"service bind refused: {search.result.get('description')}")
            attrs = [a for a in (settings.ldap_attr_username, settings.ldap_attr_first_name,
                                 settings.ldap_attr_last_name, settings.ldap_attr_email,
                                 settings.ldap_attr_national_id, settings.ldap_attr_profession) if a]
            query = settings.ldap_user_filter.format(username=escape_filter_chars(username))
            search.search(settings.ldap_base_dn, query, search_scope=ldap3.SUBTREE, attributes=attrs, size_limit=2,
                          time_limit=max(1, int(settings.ldap_timeout)))
            found = list(search.entries)
        finally:
            search.unbind()
        if len(found) != 1:
            return None  # unknown, or ambiguous: never guess which person it is
        entry = found[0]
        user = _connect(settings, server, entry.entry_dn, password)
        try:
            if not user.bind():
                return None
        finally:
            user.unbind()
    except (LDAPException, OSError) as exc:
        raise _Down(str(exc) or type(exc).__name__) from None
    national_id = _first(entry, settings.ldap_attr_national_id) or None
    return Entry(dn=entry.entry_dn, username=(_first(entry, settings.ldap_attr_username) or username).lower(),
                 first_name=_first(entry, settings.ldap_attr_first_name),
                 last_name=_first(entry, settings.ldap_attr_last_name),
                 email=_first(entry, settings.ldap_attr_email) or None,
                 national_id=national_id if national_id and national_id.isdigit() else None,
                 profession=_first(entry, settings.ldap_attr_profession))


async def check(core: Core, username: str, password: str) -> Entry | None:
    """:func:`_check` off the event loop; :class:`Unavailable` when the directory cannot answer."""
    try:
        return await asyncio.wait_for(asyncio.to_thread(_check, core.settings, username, password),
                                      timeout=core.settings.ldap_timeout * 3 + 1)
    except (_Down, TimeoutError) as exc:
        log.warning("LDAP login impossible: %s", exc)
        raise Unavailable(DOWN) from None


async def account_for(core: Core, found: Entry, known: Account | None,
                      create: Callable[..., Awaitable[tuple[Account, Any]]]) -> Account | None:
    """The account of a directory user who proved their password: the known one, its attributes
    brought up to date; else a new one (``create``: accounts.create_account) when the deployment
    allows it; None otherwise."""
    async with core.read() as s:
        account = known or await s.scalar(sa.select(Account).where(Account.username == found.username))
    if account is not None:
        if account.auth_source != LDAP:
            return None  # a local account of that name: the directory does not speak for it
        await _refresh(core, account, found)
        return account
    if not core.settings.ldap_create_accounts:
        return None
    try:
        account, _ = await create(
            core, username=found.username, first_name=found.first_name, last_name=found.last_name,
            profession=found.profession, national_id=found.national_id, email=found.email,
            personal_mailbox=core.settings.ldap_personal_mailbox and bool(found.first_name or found.last_name))
    except ServiceError as exc:
        log.warning("LDAP user %r cannot become an account: %s", found.username, exc.detail)
        return None
    return account


async def _refresh(core: Core, account: Account, found: Entry) -> None:
    changes = {k: v for k, v in (("first_name", found.first_name), ("last_name", found.last_name),
                                 ("email", found.email), ("national_id", found.national_id),
                                 ("profession", found.profession)) if v and getattr(account, k) != v}
    if not changes:
        return
    async with core.write() as tx:
        await tx.session.execute(sa.update(Account).where(Account.id == account.id).values(**changes))
        from monsisra.services import audit

        audit.record(tx.session, account.id, "account.update", object_type="account", object_id=account.id,
                     detail={"source": LDAP, "fields": sorted(changes)})
    for k, v in changes.items():
        setattr(account, k, v)
