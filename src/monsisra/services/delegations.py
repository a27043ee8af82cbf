"""Delegation by the owner: a professional lets a colleague or a secretary work in their own
(PER) mailbox under her own name, with the rights they choose, sees the delegations and takes
them back; the delegate sees what she holds and may give it up.

The access itself is a ``mailbox_access`` row (services.mailboxes.grant_in / revoke_in): taking
it back closes the delegate's live view of the mailbox at once (event ``mailbox.revoked``), and
using it afterwards answers 404 and is audited.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from monsisra.domain import delegation
from monsisra.domain.addresses import normalize_address
from monsisra.domain.clock import iso
from monsisra.domain.delegation import BadRights
from monsisra.domain.model import Access, MailboxKind
from monsisra.services import mailboxes
from monsisra.services.core import Actor, Core
from monsisra.services.errors import Conflict, Forbidden, Invalid, NotFound
from monsisra.store.models import Account, Mailbox, MailboxAccess

ONLY_OWNER = "seul le titulaire de la boîte gère ses délégations"


def _name(civility: str | None, first: str | None, last: str | None, fallback: str) -> str:
    return " ".join(p for p in (civility, first, (last or "").upper()) if p) or fallback


async def _managed_mailbox(s: AsyncSession, actor: Actor, mailbox_id: int) -> Mailbox:
    """The PER mailbox whose delegations the actor manages (its owner, or an administrator)."""
    mailbox = await s.get(Mailbox, mailbox_id)
    if actor.is_admin and mailbox is not None:
        return mailbox
    access = await mailboxes.access_of(s, actor, mailbox_id)
    if access != Access.OWNER or mailbox is None:
        raise Forbidden(ONLY_OWNER)
    return mailbox


def _row_view(row: Any) -> dict[str, Any]:
    rights = delegation.decode(row.rights)
    return {"account": row.username, "name": _name(row.civility, row.first_name, row.last_name, row.username),
            "profession": row.profession or "", "access": Access.DELEGATE.value,
            "rights": delegation.as_list(rights), "rights_label": delegation.describe(rights),
            "granted_at": iso(row.created_at), "granted_by": row.granted_by_username}


async def _delegates(s: AsyncSession, mailbox_ids: list[int]) -> dict[int, list[dict[str, Any]]]:
    if not mailbox_ids:
        return {}
    granter = aliased(Account)
    rows = (await s.execute(
        sa.select(MailboxAccess.mailbox_id, MailboxAccess.rights, MailboxAccess.created_at, Account.username,
                  Account.civility, Account.first_name, Account.last_name, Account.profession,
                  granter.username.label("granted_by_username"))
        .join(Account, Account.id == MailboxAccess.account_id)
        .outerjoin(granter, granter.id == MailboxAccess.granted_by)
        .where(MailboxAccess.mailbox_id.in_(mailbox_ids), MailboxAccess.access == Access.DELEGATE)
        .order_by(Account.last_name, Account.first_name, Account.username))).all()
    out: dict[int, list[dict[str, Any]]] = {i: [] for i in mailbox_ids}
    for row in rows:
        out[row.mailbox_id].append(_row_view(row))
    return out


async def list_delegations(core: Core, actor: Actor, mailbox_id: int) -> list[dict[str, Any]]:
    """The delegates of a PER mailbox and their rights (its owner, or an administrator)."""
    async with core.read() as s:
        await _managed_mailbox(s, actor, mailbox_id)
        return (await _delegates(s, [mailbox_id]))[mailbox_id]


async def _target(s: AsyncSession, ref: str) -> Account:
    """The account named by a username, or by the address of its own mailbox."""
    ref = (ref or "").strip()
    if not ref or len(ref) > 254:
        raise Invalid("indiquez l'identifiant ou l'adresse de messagerie de la personne")
    if "@" in ref:
        address = normalize_address(ref)
        account = None
        if address is not None:
            account = await s.scalar(sa.select(Account).join(Mailbox, Mailbox.owner_account_id == Account.id)
                                     .where(Mailbox.address == address, Mailbox.kind == MailboxKind.PER))
    else:
        account = await s.scalar(sa.select(Account).where(Account.username == ref))
    if account is None or not account.active:
        raise Invalid(f"aucun compte actif ne correspond à « {ref} »")
    return account


async def delegate(core: Core, actor: Actor, mailbox_id: int, account_ref: str,
                   rights: list[str] | None = None) -> tuple[dict[str, Any], bool]:
    """Delegate the mailbox to another account (by username or its own address), with ``rights``
    (all by default; reading is always included). Again on a delegate: her rights change.
    Returns (the delegation, created)."""
    try:
        wanted = delegation.parse(rights)
    except BadRights as exc:
        raise Invalid(str(exc)) from None
    async with core.write() as tx:
        s = tx.session
        mailbox = await _managed_mailbox(s, actor, mailbox_id)
        if mailbox.kind != MailboxKind.PER:
            raise Invalid("seule une boîte personnelle se délègue ; les membres d'une boîte de service sont gérés "
                          "par un administrateur")
        target = await _target(s, account_ref)
        if target.id == mailbox.owner_account_id:
            raise Invalid("le titulaire a déjà accès à sa propre boîte")
        existing = await s.scalar(sa.select(MailboxAccess.access).where(
            MailboxAccess.mailbox_id == mailbox_id, MailboxAccess.account_id == target.id))
        if existing is not None and existing != Access.DELEGATE:
            raise Conflict(f"{target.username} a déjà accès à cette boîte")
        created = await mailboxes.grant_in(tx, mailbox_id, target.id, Access.DELEGATE, actor, wanted)
    async with core.read() as s:
        view = next(d for d in (await _delegates(s, [mailbox_id]))[mailbox_id] if d["account"] == target.username)
    return view, created


async def revoke_delegation(core: Core, actor: Actor, mailbox_id: int, username: str) -> None:
    """Take a delegation back (the owner, an administrator), or give it up (the delegate)."""
    async with core.write() as tx:
        s = tx.session
        mailbox = await s.get(Mailbox, mailbox_id)
        access = None if actor.is_admin else await mailboxes.access_of(s, actor, mailbox_id)
        renouncing = access == Access.DELEGATE and username == actor.username
        if not (actor.is_admin or access == Access.OWNER or renouncing) or mailbox is None:
            raise Forbidden(ONLY_OWNER)
        account_id = await s.scalar(sa.select(Account.id).join(
            MailboxAccess, MailboxAccess.account_id == Account.id).where(
            Account.username == username, MailboxAccess.mailbox_id == mailbox_id,
            MailboxAccess.access == Access.DELEGATE))
        if account_id is None:
            raise NotFound(f"aucune délégation de cette boîte à {username}")
        await mailboxes.revoke_in(tx, mailbox_id, account_id, actor)


async def mine(core: Core, actor: Actor) -> dict[str, Any]:
    """Both sides: the delegations of the mailboxes this account owns (``given``), and the
    mailboxes delegated to it (``received``)."""
    owner = aliased(Account)
    async with core.read() as s:
        owned = (await s.execute(
            sa.select(Mailbox.id, Mailbox.address, Mailbox.display_name)
            .join(MailboxAccess, MailboxAccess.mailbox_id == Mailbox.id)
            .where(MailboxAccess.account_id == actor.account_id, MailboxAccess.access == Access.OWNER,
                   Mailbox.kind == MailboxKind.PER).order_by(Mailbox.id))).all()
        delegates = await _delegates(s, [m.id for m in owned])
        received = (await s.execute(
            sa.select(Mailbox.id, Mailbox.address, Mailbox.display_name, MailboxAccess.rights,
                      MailboxAccess.created_at, owner.username, owner.civility, owner.first_name, owner.last_name)
            .join(MailboxAccess, MailboxAccess.mailbox_id == Mailbox.id)
            .outerjoin(owner, owner.id == Mailbox.owner_account_id)
            .where(MailboxAccess.account_id == actor.account_id, MailboxAccess.access == Access.DELEGATE)
            .order_by(Mailbox.display_name))).all()
        landing = await s.scalar(sa.select(Account.default_mailbox_id).where(Account.id == actor.account_id))
    return {
        "given": [{"mailbox": {"id": m.id, "address": m.address, "display_name": m.display_name},
                   "delegates": delegates[m.id]} for m in owned],
        "received": [{"mailbox": {"id": r.id, "address": r.address, "display_name": r.display_name},
                      "owner": {"username": r.username,
                                "name": _name(r.civility, r.first_name, r.last_name, r.username or "")}
                      if r.username else None,
                      "rights": delegation.as_list(delegation.decode(r.rights)),
                      "rights_label": delegation.describe(delegation.decode(r.rights)),
                      "granted_at": iso(r.created_at), "landing": r.id == landing} for r in received],
        "landing_mailbox_id": landing,
    }
