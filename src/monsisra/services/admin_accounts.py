"""Administration of accounts and mailboxes: what ``monsisra account|mailbox`` does, for the
administrators' pages and API — the same services underneath (accounts, mailboxes, passwords),
with the administrator check first and every act in the audit log."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from monsisra.domain import delegation
from monsisra.domain.addresses import normalize_address
from monsisra.domain.clock import iso, utcnow
from monsisra.domain.delegation import BadRights
from monsisra.domain.model import Access, MailboxKind
from monsisra.domain.passwords import WeakPassword, check_strength
from monsisra.domain.text import fold
from monsisra.services import accounts, audit, mailboxes, passwords
from monsisra.services.core import Actor, Core
from monsisra.services.errors import Conflict, Forbidden, Invalid, NotFound
from monsisra.store.models import Account, Mailbox, MailboxAccess, Token

PAGE = 50
ACCESS_LABELS = {Access.OWNER: "titulaire", Access.MEMBER: "membre", Access.DELEGATE: "délégué"}


def require_admin(actor: Actor) -> None:
    if not actor.is_admin:
        raise Forbidden("réservé aux administrateurs de la plateforme")


def _like(q: str) -> str:
    return "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _account_view(a: Account, mailbox: str | None = None) -> dict[str, Any]:
    return {"username": a.username, "name": accounts.display_name(a), "civility": a.civility,
            "first_name": a.first_name, "last_name": a.last_name, "profession": a.profession,
            "specialty": a.specialty, "national_id": a.national_id, "email": a.email, "active": a.active,
            "is_admin": a.is_admin, "auth_source": a.auth_source, "created_at": iso(a.created_at),
            "last_login_at": iso(a.last_login_at), "password_changed_at": iso(a.password_changed_at),
            "mailbox": mailbox}


async def list_accounts(core: Core, actor: Actor, q: str = "", offset: int = 0, limit: int = PAGE) -> dict[str, Any]:
    """Accounts, by name, filtered by a text (identifier, name, RPPS, address)."""
    require_admin(actor)
    limit = max(1, min(limit, 200))
    offset = max(0, min(offset, 1_000_000))
    own = sa.select(Mailbox.address).where(Mailbox.owner_account_id == Account.id, Mailbox.kind == MailboxKind.PER) \
        .order_by(Mailbox.id).limit(1).scalar_subquery()
    stmt = sa.select(Account, own.label("mailbox"))
    q = (q or "").strip()[:120]
    if q:
        pattern = _like(q.lower())
        stmt = stmt.where(sa.or_(sa.func.lower(Account.username).like(pattern, escape="\\"),
                                 sa.func.lower(Account.last_name).like(pattern, escape="\\"),
                                 sa.func.lower(Account.first_name).like(pattern, escape="\\"),
                                 Account.national_id.like(pattern, escape="\\"),
                                 sa.func.lower(own).like(pattern, escape="\\"),
                                 sa.func.lower(Account.last_name).like(_like(fold(q)), escape="\\")))
    async with core.read() as s:
        rows = (await s.execute(stmt.order_by(Account.last_name, Account.first_name, Account.username)
                                .offset(offset).limit(limit + 1))).all()
    items = [_account_view(a, m) for a, m in rows[:limit]]
    return {"items": items, "next_offset": offset + limit if len(rows) > limit else None}


async def _account(s: Any, username: str) -> Account:
    account = await s.scalar(sa.select(Account).where(Account.username == (username or "").strip()))
    if account is None:
        raise NotFound(f"compte {username} introuvable")
    return account


def _access_view(m: Mailbox, access: str, rights: str | None) -> dict[str, Any]:
    r = delegation.decode(rights)
    return {"mailbox": {"id": m.id, "address": m.address, "kind": m.kind, "display_name": m.display_name},
            "access": access, "access_label": ACCESS_LABELS.get(access, access),
            "rights": delegation.as_list(r), "rights_label": delegation.describe(r)}


async def account_detail(core: Core, actor: Actor, username: str) -> dict[str, Any]:
    """One account: its fields, the mailboxes it may use (and how), its live sessions."""
    require_admin(actor)
    async with core.read() as s:
        account = await _account(s, username)
        rows = (await s.execute(sa.select(Mailbox, MailboxAccess.access, MailboxAccess.rights)
                                .join(MailboxAccess, MailboxAccess.mailbox_id == Mailbox.id)
                                .where(MailboxAccess.account_id == account.id).order_by(Mailbox.display_name))).all()
        sessions = await s.scalar(sa.select(sa.func.count()).select_from(Token).where(
            Token.account_id == account.id, Token.revoked_at.is_(None), Token.expires_at > utcnow()))
    own = next((m.address for m, a, _ in rows if a == Access.OWNER and m.kind == MailboxKind.PER), None)
    view = _account_view(account, own)
    view.update(accesses=[_access_view(m, a, r) for m, a, r in rows], sessions=sessions)
    return view


@dataclass
class AccountForm:
    username: str
    first_name: str = ""
    last_name: str = ""
    civility: str = ""
    profession: str = ""
    specialty: str = ""
    national_id: str | None = None
    email: str | None = None
    is_admin: bool = False
    personal_mailbox: bool = True
    password: str | None = None  # None: a link to choose it is sent to ``email``


async def create_account(core: Core, actor: Actor, form: AccountForm) -> dict[str, Any]:
    """Create an account (with its PER mailbox when asked). With a password, it must meet the rule;
    without one, a link to choose it goes to the account's e-mail."""
    require_admin(actor)
    email = None
    if form.email:
        email = normalize_address(form.email)
        if email is None:
            raise Invalid(f"adresse e-mail invalide : {form.email}")
    if form.password:
        try:
            check_strength(form.password, [form.username, form.first_name, form.last_name, email or ""])
        except WeakPassword as exc:
            raise Invalid(str(exc)) from None
    elif email is None:
        raise Invalid("sans mot de passe initial, indiquez l'e-mail où envoyer le lien pour le choisir")
    account, mailbox = await accounts.create_account(core, accounts.NewAccount(
        username=form.username.strip(), password=form.password or None, first_name=form.first_name.strip(),
        last_name=form.last_name.strip(), civility=form.civility.strip(), profession=form.profession.strip(),
        specialty=form.specialty.strip(), national_id=(form.national_id or "").strip() or None, email=email,
        is_admin=form.is_admin, personal_mailbox=form.personal_mailbox), actor)
    if not form.password:
        await passwords.send_link(core, account.username, actor.client)
    return {"username": account.username, "mailbox": mailbox.address if mailbox else None,
            "link_sent": not form.password}


async def set_active(core: Core, actor: Actor, username: str, active: bool) -> None:
    """Deactivate (every session ends at once) or reactivate an account; not one's own."""
    require_admin(actor)
    if username == actor.username and not active:
        raise Invalid("vous ne pouvez pas désactiver votre propre compte")
    async with core.read() as s:
        await _account(s, username)
    await accounts.set_active(core, username, active, actor)


async def send_link(core: Core, actor: Actor, username: str) -> None:
    """Send the account a link to choose a (new) password, as « Mot de passe oublié ? » would."""
    require_admin(actor)
    async with core.read() as s:
        await _account(s, username)
    await passwords.send_link(core, username, actor.client)


# --- mailboxes ------------------------------------------------------------------------------------


async def list_mailboxes(core: Core, actor: Actor, q: str = "", kind: str = "services", offset: int = 0,
                         limit: int = PAGE) -> dict[str, Any]:
    """Mailboxes (service and application ones by default; ``kind=all`` for every one)."""
    require_admin(actor)
    limit = max(1, min(limit, 200))
    offset = max(0, min(offset, 1_000_000))
    members = sa.select(sa.func.count()).select_from(MailboxAccess).where(
        MailboxAccess.mailbox_id == Mailbox.id).scalar_subquery()
    stmt = sa.select(Mailbox, members.label("people"))
    if kind != "all":
        stmt = stmt.where(Mailbox.kind != MailboxKind.PER)
    q = (q or "").strip()[:120]
    if q:
        pattern = _like(q.lower())
        stmt = stmt.where(sa.or_(sa.func.lower(Mailbox.address).like(pattern, escape="\\"),
                                 sa.func.lower(Mailbox.display_name).like(pattern, escape="\\"),
                                 sa.func.lower(Mailbox.organisation).like(pattern, escape="\\")))
    async with core.read() as s:
        rows = (await s.execute(stmt.order_by(Mailbox.display_name, Mailbox.id).offset(offset).limit(limit + 1))).all()
    items = [_mailbox_view(m) | {"people": n} for m, n in rows[:limit]]
    return {"items": items, "next_offset": offset + limit if len(rows) > limit else None}


def _mailbox_view(m: Mailbox) -> dict[str, Any]:
    return {"id": m.id, "address": m.address, "kind": m.kind, "display_name": m.display_name,
            "organisation": m.organisation, "finess": m.finess, "is_expert": m.is_expert,
            "is_resource_team": m.is_resource_team, "active": m.active, "description": m.description}


async def mailbox_detail(core: Core, actor: Actor, mailbox_id: int) -> dict[str, Any]:
    """A mailbox and everyone who may use it (owner, members, delegates with their rights)."""
    require_admin(actor)
    async with core.read() as s:
        mailbox = await s.get(Mailbox, mailbox_id)
        if mailbox is None:
            raise NotFound("boîte aux lettres introuvable")
        rows = (await s.execute(sa.select(Account, MailboxAccess.access, MailboxAccess.rights, MailboxAccess.created_at)
                                .join(MailboxAccess, MailboxAccess.account_id == Account.id)
                                .where(MailboxAccess.mailbox_id == mailbox_id)
                                .order_by(MailboxAccess.access.desc(), Account.last_name, Account.username))).all()
    people = []
    for a, access, rights, since in rows:
        r = delegation.decode(rights)
        people.append({"username": a.username, "name": accounts.display_name(a), "active": a.active,
                       "access": access, "access_label": ACCESS_LABELS.get(access, access),
                       "rights": delegation.as_list(r), "rights_label": delegation.describe(r), "since": iso(since)})
    return _mailbox_view(mailbox) | {"people": people}


async def create_mailbox(core: Core, actor: Actor, *, local: str, display_name: str, kind: str = MailboxKind.ORG,
                         organisation: str = "", finess: str | None = None, is_expert: bool = False,
                         is_resource_team: bool = False, description: str = "") -> dict[str, Any]:
    """A service (ORG), application (APP) or practice (CAB) mailbox ``local@domain``."""
    require_admin(actor)
    if finess and not (finess.isdigit() and len(finess) == 9):
        raise Invalid("numéro FINESS invalide (9 chiffres)")
    mailbox = await mailboxes.create_service_mailbox(
        core, local=local, display_name=display_name, kind=kind, organisation=organisation, finess=finess or None,
        is_expert=is_expert, is_resource_team=is_resource_team, description=description, actor=actor)
    return _mailbox_view(mailbox)


async def grant(core: Core, actor: Actor, mailbox_id: int, username: str, access: str,
                rights: list[str] | None = None) -> bool:
    """Give an account access: member of a service mailbox, delegate of a personal one."""
    require_admin(actor)
    try:
        wanted = delegation.parse(rights)
    except BadRights as exc:
        raise Invalid(str(exc)) from None
    async with core.read() as s:
        mailbox = await s.get(Mailbox, mailbox_id)
        if mailbox is None:
            raise NotFound("boîte aux lettres introuvable")
        account = await _account(s, username)
        held = await s.scalar(sa.select(MailboxAccess.access).where(MailboxAccess.mailbox_id == mailbox_id,
                                                                    MailboxAccess.account_id == account.id))
    if access not in (Access.MEMBER, Access.DELEGATE):
        raise Invalid("accès inconnu : membre ou délégué")
    if mailbox.kind == MailboxKind.PER and access != Access.DELEGATE:
        raise Invalid("une boîte personnelle n'a pas de membres : déléguez-la")
    if not account.active:
        raise Invalid(f"le compte {username} est désactivé")
    if held is not None and held != access:
        raise Conflict(f"{username} a déjà accès à cette boîte ({ACCESS_LABELS.get(held, held)})")
    return await mailboxes.grant(core, mailbox_id, account.id, access, actor,
                                 wanted if access == Access.DELEGATE else None)


async def set_manager(core: Core, actor: Actor, mailbox_id: int, username: str, manager: bool) -> None:
    """Make a member of a service mailbox one of its managers (its card, its expert declaration)."""
    require_admin(actor)
    async with core.read() as s:
        account = await _account(s, username)
    await mailboxes.set_manager(core, mailbox_id, account.id, manager, actor)


async def revoke(core: Core, actor: Actor, mailbox_id: int, username: str) -> None:
    """Take back a membership or delegation (the owner's access cannot be taken)."""
    require_admin(actor)
    async with core.read() as s:
        account = await _account(s, username)
    await mailboxes.revoke(core, mailbox_id, account.id, actor)


async def end_sessions(core: Core, actor: Actor, username: str) -> None:
    """Close every session of an account (its live sockets too), e.g. a lost phone."""
    require_admin(actor)
    async with core.write() as tx:
        account = await _account(tx.session, username)
        await accounts.end_sessions_in(tx, account.id, None, "session terminée par un administrateur")
        audit.record(tx.session, actor.account_id, "session.revoke", object_type="account", object_id=account.id,
                     client=actor.client, detail={"username": username, "all": True})
