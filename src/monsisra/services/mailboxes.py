"""Mailboxes (BAL): creation, addresses, members and delegates, and the access rule.

The access rule is the heart of authorisation: an account may use a mailbox when it owns
it, is a member of it (ORG) or is a delegate on it. Everything else answers "not found".
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from monsisra.domain.addresses import base_local_part, candidate_addresses, local_part, normalize_address  # noqa: F401
from monsisra.domain.clock import utcnow
from monsisra.domain.model import Access, MailboxKind
from monsisra.domain.text import TextRefused, check_line
from monsisra.services import audit
from monsisra.services.core import Actor, Core
from monsisra.services.errors import Conflict, Invalid, NotFound
from monsisra.store.models import Account, Mailbox, MailboxAccess


@dataclass(frozen=True)
class MailboxView:
    id: int
    address: str
    kind: str
    display_name: str
    access: str

    def as_dict(self) -> dict:
        return {
            "id": self.id,
            "address": self.address,
            "kind": self.kind,
            "display_name": self.display_name,
            "access": self.access,
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


async def grant(core: Core, mailbox_id: int, account_id: int, access: str, actor: Actor | None = None) -> None:
    """Make an account a member (ORG) or delegate (PER) of a mailbox. Idempotent."""
    if access not in (Access.MEMBER, Access.DELEGATE):
        raise Invalid("accès inconnu : member ou delegate attendu")
    async with core.write() as tx:
        mailbox = await tx.session.get(Mailbox, mailbox_id)
        account = await tx.session.get(Account, account_id)
        if mailbox is None or account is None:
            raise NotFound("boîte ou compte introuvable")
        existing = await tx.session.get(MailboxAccess, (mailbox_id, account_id))
        if existing is None:
            tx.session.add(MailboxAccess(mailbox_id=mailbox_id, account_id=account_id, access=access))
            audit.record(tx.session, actor.account_id if actor else None, "mailbox.grant",
                         object_type="mailbox", object_id=mailbox_id,
                         detail={"account_id": account_id, "access": access})


async def revoke(core: Core, mailbox_id: int, account_id: int, actor: Actor | None = None) -> None:
    async with core.write() as tx:
        row = await tx.session.get(MailboxAccess, (mailbox_id, account_id))
        if row is None or row.access == Access.OWNER:
            raise NotFound("accès introuvable")
        await tx.session.delete(row)
        audit.record(tx.session, actor.account_id if actor else None, "mailbox.revoke",
                     object_type="mailbox", object_id=mailbox_id, detail={"account_id": account_id})


async def access_of(session: AsyncSession, actor: Actor, mailbox_id: int) -> str:
    """The actor's access to a mailbox, or :class:`NotFound` (never reveal it exists)."""
    access = await session.scalar(
        sa.select(MailboxAccess.access).where(
            MailboxAccess.mailbox_id == mailbox_id, MailboxAccess.account_id == actor.account_id
        )
    )
    if access is None:
        raise NotFound("boîte aux lettres introuvable")
    return access


async def usable_mailbox_ids(session: AsyncSession, account_id: int) -> list[int]:
    rows = await session.scalars(sa.select(MailboxAccess.mailbox_id).where(MailboxAccess.account_id == account_id))
    return list(rows)


async def list_for(core: Core, actor: Actor) -> list[MailboxView]:
    """The mailboxes this account may use: its own first, then memberships and delegations."""
    order = sa.case((MailboxAccess.access == Access.OWNER, 0), (MailboxAccess.access == Access.MEMBER, 1), else_=2)
    async with core.read() as session:
        rows = await session.execute(
            sa.select(Mailbox, MailboxAccess.access)
            .join(MailboxAccess, MailboxAccess.mailbox_id == Mailbox.id)
            .where(MailboxAccess.account_id == actor.account_id, Mailbox.active.is_(True))
            .order_by(order, Mailbox.display_name)
        )
        return [MailboxView(m.id, m.address, m.kind, m.display_name, access) for m, access in rows]


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
