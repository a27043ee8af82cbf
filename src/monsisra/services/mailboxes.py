"""Mailboxes (BAL): creation, addresses, members and delegates, and the access rule.

The access rule is the heart of authorisation: an account may use a mailbox when it owns
it, is a member of it (ORG) or is a delegate on it. Everything else answers "not found". A
delegate holds rights chosen by the owner (domain.delegation): reading always, drafts, sending
on behalf, flags; without a right she gets 403. An access taken back is remembered, so that a
later attempt through it is audited (still 404).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from monsisra.domain import delegation
from monsisra.domain.addresses import base_local_part, candidate_addresses, local_part, normalize_address  # noqa: F401
from monsisra.domain.clock import iso, utcnow
from monsisra.domain.delegation import Right
from monsisra.domain.model import Access, MailboxKind
from monsisra.domain.text import TextRefused, check_line
from monsisra.events import MAILBOX_GRANTED, MAILBOX_REVOKED
from monsisra.services import audit
from monsisra.services.core import Actor, Core, Tx
from monsisra.services.errors import Conflict, Forbidden, Invalid, NotFound
from monsisra.store.accounts import RevokedAccess
from monsisra.store.models import Account, Mailbox, MailboxAccess


@dataclass(frozen=True)
class MailboxView:
    id: int
    address: str
    kind: str
    display_name: str
    access: str
    rights: frozenset[Right] = delegation.ALL_RIGHTS

    def may(self, right: str) -> bool:
        return right in self.rights

    def as_dict(self) -> dict:
        return {
            "id": self.id,
            "address": self.address,
            "kind": self.kind,
            "display_name": self.display_name,
            "access": self.access,
            "rights": delegation.as_list(self.rights),
        }


def new_uidvalidity() -> int:
    return random.randint(1, 2**31 - 1)


async def _address_free(session: AsyncSession, address: str) -> bool:
    found = await session.scalar(sa.select(Mailbox.id).where(Mailbox.address == address))
    return found is None


async def allocate_address(session: AsyncSession, base: str, domain: str) -> str:
    """The first free ``base@domain``, ``base2@domain``… (addresses are never reused)."""
    for address in candidate_addresses(base, domain):
        if await _address_free(session, address):
            return address
    raise AssertionError("unreachable")


async def create_personal(session: AsyncSession, account: Account, domain: str) -> Mailbox:
    """The PER mailbox of a professional account, named ``prenom.nom@domain``."""
    address = await allocate_address(session, base_local_part(account.first_name, account.last_name), domain)
    name = " ".join(p for p in (account.civility, account.first_name, account.last_name.upper()) if p)
    mailbox = Mailbox(
        address=address,
        kind=MailboxKind.PER,
        display_name=name,
        owner_account_id=account.id,
        uidvalidity=new_uidvalidity(),
    )
    session.add(mailbox)
    await session.flush()
    session.add(MailboxAccess(mailbox_id=mailbox.id, account_id=account.id, access=Access.OWNER))
    return mailbox


async def create_service_mailbox(
    core: Core,
    *,
    local: str,
    display_name: str,
    kind: str = MailboxKind.ORG,
    organisation: str = "",
    finess: str | None = None,
    is_expert: bool = False,
    is_resource_team: bool = False,
    description: str = "",
    actor: Actor | None = None,
) -> Mailbox:
    """An ORG/APP mailbox at ``local@domain``; the address must be free."""
    if kind not in (MailboxKind.ORG, MailboxKind.APP, MailboxKind.CAB):
        raise Invalid("type de boîte inconnu : ORG, APP ou CAB attendu")
    try:
        display_name = check_line(display_name, "nom de la boîte").strip()
        organisation = check_line(organisation, "structure").strip()
    except TextRefused as exc:
        raise Invalid(str(exc)) from None
    if not display_name:
        raise Invalid("nom de la boîte obligatoire")
    raw = local if "@" in local else f"{local.strip().lower()}@{core.settings.domain}"
    address = normalize_address(raw)
    if address is None:
        raise Invalid(f"adresse invalide : {local}")
    async with core.write() as tx:
        if not await _address_free(tx.session, address):
            raise Conflict(f"l'adresse {address} existe déjà")
        mailbox = Mailbox(
            address=address,
            kind=kind,
            display_name=display_name,
            organisation=organisation,
            finess=finess,
            is_expert=is_expert,
            is_resource_team=is_resource_team,
            description=description,
            uidvalidity=new_uidvalidity(),
        )
        tx.session.add(mailbox)
        await tx.session.flush()
        audit.record(tx.session, actor.account_id if actor else None, "mailbox.create",
                     object_type="mailbox", object_id=mailbox.id)
    return mailbox


async def grant(core: Core, mailbox_id: int, account_id: int, access: str, actor: Actor | None = None,
                rights: frozenset[Right] | None = None) -> bool:
    """Make an account a member (ORG) or delegate (PER) of a mailbox, with a delegate's rights
    (all by default). Idempotent; a delegate's rights are updated. True when the access is new.
    Callers check who may do it (the owner, an administrator; the CLI and demo act as the system)."""
    if access not in (Access.MEMBER, Access.DELEGATE):
        raise Invalid("accès inconnu : member ou delegate attendu")
    async with core.write() as tx:
        return await grant_in(tx, mailbox_id, account_id, access, actor, rights)


async def grant_in(tx: Tx, mailbox_id: int, account_id: int, access: str, actor: Actor | None,
                   rights: frozenset[Right] | None = None) -> bool:
    """:func:`grant` inside the caller's transaction."""
    s = tx.session
    mailbox = await s.get(Mailbox, mailbox_id)
    account = await s.get(Account, account_id)
    if mailbox is None or account is None:
        raise NotFound("boîte ou compte introuvable")
    stored_rights = delegation.encode(rights or delegation.ALL_RIGHTS) if access == Access.DELEGATE else None
    by = actor.account_id if actor else None
    existing = await s.get(MailboxAccess, (mailbox_id, account_id))
    action = "delegation" if access == Access.DELEGATE else "mailbox"
    detail = {"account_id": account_id, "access": access, "username": account.username}
    if access == Access.DELEGATE:
        detail["rights"] = delegation.as_list(delegation.decode(stored_rights))
    if existing is not None:
        if existing.access == Access.DELEGATE and access == Access.DELEGATE and existing.rights != stored_rights:
            existing.rights = stored_rights
            audit.record(s, by, "delegation.update", object_type="mailbox", object_id=mailbox_id,
                         mailbox_id=mailbox_id, client=actor.client if actor else None, detail=detail)
            tx.emit(MAILBOX_GRANTED, [account_id], mailbox_id=mailbox_id, access=existing.access,
                    rights=detail["rights"])
        return False
    s.add(MailboxAccess(mailbox_id=mailbox_id, account_id=account_id, access=access, rights=stored_rights,
                        granted_by=by))
    await s.execute(sa.delete(RevokedAccess).where(RevokedAccess.mailbox_id == mailbox_id,
                                                   RevokedAccess.account_id == account_id))
    # A secretary (no national id: not a health professional herself) lands in the first
    # mailbox delegated to her; she can choose another in « Paramètres ».
    if access == Access.DELEGATE and not account.national_id and account.default_mailbox_id is None:
        account.default_mailbox_id = mailbox_id
    audit.record(s, by, f"{action}.grant", object_type="mailbox", object_id=mailbox_id, mailbox_id=mailbox_id,
                 client=actor.client if actor else None, detail=detail)
    tx.emit(MAILBOX_GRANTED, [account_id], mailbox_id=mailbox_id, access=access, rights=detail.get("rights"))
    return True


async def revoke(core: Core, mailbox_id: int, account_id: int, actor: Actor | None = None) -> None:
    """Take back a membership or delegation: the account loses the mailbox at once (its open
    pages stop receiving the mailbox's events); a later attempt through it is audited."""
    async with core.write() as tx:
        await revoke_in(tx, mailbox_id, account_id, actor)


async def revoke_in(tx: Tx, mailbox_id: int, account_id: int, actor: Actor | None) -> None:
    """:func:`revoke` inside the caller's transaction."""
    s = tx.session
    row = await s.get(MailboxAccess, (mailbox_id, account_id))
    if row is None or row.access == Access.OWNER:
        raise NotFound("accès introuvable")
    access = row.access
    await s.delete(row)
    now = utcnow()
    by = actor.account_id if actor else None
    ended = await s.get(RevokedAccess, (mailbox_id, account_id))
    if ended is None:
        s.add(RevokedAccess(mailbox_id=mailbox_id, account_id=account_id, access=access, revoked_at=now,
                            revoked_by=by))
    else:
        ended.access, ended.revoked_at, ended.revoked_by = access, now, by
    await s.execute(sa.update(Account).where(Account.id == account_id, Account.default_mailbox_id == mailbox_id)
                    .values(default_mailbox_id=None))
    username = await s.scalar(sa.select(Account.username).where(Account.id == account_id))
    action = "delegation" if access == Access.DELEGATE else "mailbox"
    audit.record(s, by, f"{action}.revoke", object_type="mailbox", object_id=mailbox_id, mailbox_id=mailbox_id,
                 client=actor.client if actor else None,
                 detail={"account_id": account_id, "access": access, "username": username})
    address = await s.scalar(sa.select(Mailbox.address).where(Mailbox.id == mailbox_id))
    tx.emit(MAILBOX_REVOKED, [account_id], mailbox_id=mailbox_id, address=address, access=access)


async def set_manager(core: Core, mailbox_id: int, account_id: int, manager: bool = True,
                      actor: Actor | None = None) -> None:
    """Make a member of a service mailbox one of its managers (or a plain member again).
    Callers check who may do it (an administrator; the CLI and demo act as the system)."""
    async with core.write() as tx:
        s = tx.session
        row = await s.get(MailboxAccess, (mailbox_id, account_id))
        if row is None or row.access != Access.MEMBER:
            raise Invalid("seul un membre d'une boîte de service peut en être gestionnaire")
        row.rights = delegation.encode(delegation.MANAGER_RIGHTS if manager else delegation.ALL_RIGHTS)
        audit.record(s, actor.account_id if actor else None, "mailbox.manager", object_type="mailbox",
                     object_id=mailbox_id, mailbox_id=mailbox_id, client=actor.client if actor else None,
                     detail={"account_id": account_id, "manager": manager})


async def access_of(session: AsyncSession, actor: Actor, mailbox_id: int,
                    also: Sequence[sa.ColumnElement[Any]] = ()) -> str:
    """The actor's access to a mailbox, or :class:`NotFound` (never reveal it exists).
    ``also``: columns evaluated by the same statement when the access exists (see ``rights_of``)."""
    return (await rights_of(session, actor, mailbox_id, also))[0]


async def rights_of(session: AsyncSession, actor: Actor, mailbox_id: int,
                    also: Sequence[sa.ColumnElement[Any]] = ()) -> tuple[str, frozenset[Right]]:
    """(access, rights) of the actor on a mailbox, or :class:`NotFound`. An access that was taken
    back (a revoked delegation still used) answers the same 404, and is audited. ``also``: more
    columns of the same statement, evaluated only on the access's row (a mailbox search on
    PostgreSQL sets its transaction's plan settings there: ``set_config``, no round trip of its own)."""
    row = (await session.execute(
        sa.select(MailboxAccess.access, MailboxAccess.rights, *also).where(
            MailboxAccess.mailbox_id == mailbox_id, MailboxAccess.account_id == actor.account_id)
    )).first()
    if row is None:
        raise await not_found(session, actor, mailbox_id)
    return row.access, delegation.decode(row.rights)


async def not_found(session: AsyncSession, actor: Actor, mailbox_id: int) -> NotFound:
    """The 404 of a mailbox the actor may not use; when it is one whose access was taken back,
    the error carries the audit entry that Core writes as it passes."""
    exc = NotFound("boîte aux lettres introuvable")
    ended = (await session.execute(sa.select(RevokedAccess.access, RevokedAccess.revoked_at).where(
        RevokedAccess.mailbox_id == mailbox_id, RevokedAccess.account_id == actor.account_id))).first()
    if ended is not None:
        exc.audit.append(audit.entry(actor.account_id, "access.refused", object_type="mailbox",
                                     object_id=mailbox_id, mailbox_id=mailbox_id, client=actor.client,
                                     detail={"access": ended.access, "revoked_at": iso(ended.revoked_at)}))
    return exc


async def require_right(session: AsyncSession, actor: Actor, mailbox_id: int, right: Right) -> str:
    """The actor's access when it includes ``right`` (:class:`Forbidden` for a delegate without
    it, :class:`NotFound` for anyone else)."""
    access, rights = await rights_of(session, actor, mailbox_id)
    if right not in rights:
        raise Forbidden(RIGHT_REFUSED[right])
    return access


RIGHT_REFUSED = {
    Right.READ: "lecture non autorisée dans cette boîte",
    Right.DRAFT: "votre délégation sur cette boîte ne permet pas de préparer de brouillon",
    Right.SEND: "votre délégation sur cette boîte ne permet pas d'envoyer de la part du titulaire",
    Right.FLAGS: "votre délégation sur cette boîte ne permet pas de classer les messages",
    Right.MANAGE: "seuls les gestionnaires de cette boîte de service peuvent modifier sa fiche",
}


async def usable_mailbox_ids(session: AsyncSession, account_id: int) -> list[int]:
    rows = await session.scalars(sa.select(MailboxAccess.mailbox_id).where(MailboxAccess.account_id == account_id))
    return list(rows)


async def list_for(core: Core, actor: Actor) -> list[MailboxView]:
    """The mailboxes this account may use: its own first, then memberships and delegations."""
    order = sa.case((MailboxAccess.access == Access.OWNER, 0), (MailboxAccess.access == Access.MEMBER, 1), else_=2)
    async with core.read() as session:
        rows = await session.execute(
            sa.select(Mailbox, MailboxAccess.access, MailboxAccess.rights)
            .join(MailboxAccess, MailboxAccess.mailbox_id == Mailbox.id)
            .where(MailboxAccess.account_id == actor.account_id, Mailbox.active.is_(True))
            .order_by(order, Mailbox.display_name)
        )
        return [MailboxView(m.id, m.address, m.kind, m.display_name, access, delegation.decode(rights))
                for m, access, rights in rows]


async def accounts_of(session: AsyncSession, mailbox_ids) -> dict[int, list[int]]:
    """mailbox id → accounts that may use it (event fan-out)."""
    return await session.run_sync(accounts_of_sync, mailbox_ids)


_access = MailboxAccess.__table__
# Built once: on the hot paths (every delivery) building the statement costs more than running it.
_ACCOUNTS_OF = sa.select(_access.c.mailbox_id, _access.c.account_id).where(
    _access.c.mailbox_id.in_(sa.bindparam("ids", expanding=True)))


def accounts_of_sync(session: Session, mailbox_ids) -> dict[int, list[int]]:
    """:func:`accounts_of` for synchronous code (a sync session, or ``run_sync``)."""
    ids = list(set(mailbox_ids))
    if not ids:
        return {}
    rows = session.execute(_ACCOUNTS_OF, {"ids": ids})
    result: dict[int, list[int]] = {i: [] for i in ids}
    for mailbox_id, account_id in rows:
        result[mailbox_id].append(account_id)
    return result


async def by_address(session: AsyncSession, addresses) -> dict[str, Mailbox]:
    addrs = list(set(addresses))
    if not addrs:
        return {}
    rows = await session.scalars(sa.select(Mailbox).where(Mailbox.address.in_(addrs), Mailbox.active.is_(True)))
    return {m.address: m for m in rows}


async def mark_opened(core: Core, actor: Actor, mailbox_id: int) -> None:
    """Note that the mailbox was opened (the directory's green "active" dot), at most hourly."""
    now = utcnow()
    async with core.read() as session:
        await access_of(session, actor, mailbox_id)
        last = await session.scalar(sa.select(Mailbox.last_opened_at).where(Mailbox.id == mailbox_id))
    from monsisra.domain.clock import as_utc

    if last is not None and (now - as_utc(last)).total_seconds() < 3600:
        return
    async with core.write() as tx:
        await tx.session.execute(sa.update(Mailbox).where(Mailbox.id == mailbox_id).values(last_opened_at=now))


async def landing(core: Core, actor: Actor) -> int | None:
    """The mailbox the inbox opens on for this account, when it chose one and may still use it."""
    async with core.read() as session:
        return await session.scalar(
            sa.select(MailboxAccess.mailbox_id).join(Account, Account.default_mailbox_id == MailboxAccess.mailbox_id)
            .where(Account.id == actor.account_id, MailboxAccess.account_id == actor.account_id))


async def set_landing(core: Core, actor: Actor, mailbox_id: int | None) -> None:
    """Choose the mailbox the inbox opens on (None: the account's own, first in the list)."""
    async with core.write() as tx:
        if mailbox_id is not None:
            await access_of(tx.session, actor, mailbox_id)
        await tx.session.execute(sa.update(Account).where(Account.id == actor.account_id)
                                 .values(default_mailbox_id=mailbox_id))
