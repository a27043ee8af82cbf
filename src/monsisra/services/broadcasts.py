"""DGS-Urgent: health-authority alerts broadcast to professionals (everyone, or by profession
and department). Sent by an administrator or by a user of the configured national address
(``MONSISRA_DGS_ADDRESS``); they land in each professional's mailbox in the « DGS Urgent »
category, show a banner until read, and cannot be answered (``no_reply``: the reply is refused
in ``messages.compose``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from monsisra.domain.clock import iso, utcnow
from monsisra.domain.model import Category, MailboxKind, Role
from monsisra.domain.text import TextRefused, check_line, clean_multiline, preview
from monsisra.services import audit
from monsisra.services.core import Actor, Core
from monsisra.services.errors import Forbidden, Invalid
from monsisra.services.messages.placement import Placement, build_search_text, new_message_id, place
from monsisra.store.directory import DirProfile
from monsisra.store.models import Account, Delivery, Mailbox, MailboxAccess, Message

SENDER_NAME = "DGS Urgent"
MAX_FILTERS = 120
_DEPARTMENT = re.compile(r"^(?:0[1-9]|[1-8][0-9]|9[0-5]|2A|2B|97[1-6])$")


@dataclass
class Broadcast:
    subject: str
    body: str
    professions: list[str] = field(default_factory=list)  # codes ("10") or labels ("Médecin")
    departments: list[str] = field(default_factory=list)  # "63", "2A", "974"


def department_of(postcode: str, commune_code: str = "") -> str | None:
    """The department of a postcode (or, failing that, of an INSEE commune code)."""
    code = (commune_code or "").strip().upper()
    if len(code) == 5 and code[:2] in ("2A", "2B"):
        return code[:2]
    pc = (postcode or "").strip()
    if len(pc) == 5 and pc.isdigit():
        if pc.startswith("97"):
            return pc[:3]
        if pc.startswith("20"):
            return "2A" if int(pc) < 20200 else "2B"
        return pc[:2]
    if len(code) == 5 and code.isdigit():
        return code[:3] if code.startswith("97") else code[:2]
    return None


def _check(req: Broadcast) -> Broadcast:
    try:
        subject = check_line(req.subject or "", "objet").strip()
    except TextRefused as exc:
        raise Invalid(str(exc)) from None
    if not subject:
        raise Invalid("l'objet de l'alerte est obligatoire")
    if len(subject) > 998:
        raise Invalid("objet trop long (au plus 998 caractères)")
    body = clean_multiline(req.body or "").strip()
    if not body:
        raise Invalid("le texte de l'alerte est obligatoire")
    if len(req.professions) > MAX_FILTERS or len(req.departments) > MAX_FILTERS:
        raise Invalid(f"trop de filtres (au plus {MAX_FILTERS})")
    departments = []
    for d in req.departments:
        value = str(d).strip().upper()
        if not _DEPARTMENT.match(value):
            raise Invalid(f"département inconnu : {str(d)[:10]}")
        departments.append(value)
    professions = [p for p in (str(x).strip() for x in req.professions) if p]
    return Broadcast(subject, body, professions, departments)


async def _sender(s: AsyncSession, core: Core, actor: Actor) -> Mailbox | None:
    """The national mailbox the broadcast goes out from (when configured); 403 for anyone who is
    neither an administrator nor one of its users."""
    national = (core.settings.dgs_address or "").strip().lower()
    box = await s.scalar(sa.select(Mailbox).where(Mailbox.address == national)) if national else None
    if box is not None:
        uses = await s.scalar(sa.select(MailboxAccess.access).where(
            MailboxAccess.mailbox_id == box.id, MailboxAccess.account_id == actor.account_id))
        if uses is not None:
            return box
    if actor.is_admin:
        return box
    raise Forbidden("seuls un administrateur et l'adresse nationale DGS-Urgent peuvent diffuser une alerte")


async def may_broadcast(core: Core, actor: Actor) -> bool:
    async with core.read() as s:
        try:
            await _sender(s, core, actor)
        except Forbidden:
            return False
    return True


async def _targets(s: AsyncSession, req: Broadcast) -> list[int]:
    """Personal mailboxes of active professionals matching the filters (none: everyone)."""
    rows = (await s.execute(
        sa.select(Mailbox.id, Account.profession_code, Account.profession, DirProfile.postcode,
                  DirProfile.commune_code)
        .join(Account, Account.id == Mailbox.owner_account_id)
        .outerjoin(DirProfile, DirProfile.account_id == Account.id)
        .where(Mailbox.kind == MailboxKind.PER, Mailbox.active.is_(True), Account.active.is_(True))
        .order_by(Mailbox.id))).all()
    wanted_prof = {p.casefold() for p in req.professions}
    wanted_dep = set(req.departments)
    out = []
    for r in rows:
        if wanted_prof and not ({(r.profession_code or "").casefold(), (r.profession or "").casefold()} & wanted_prof):
            continue
        if wanted_dep and department_of(r.postcode or "", r.commune_code or "") not in wanted_dep:
            continue
        out.append(r.id)
    return out


async def send(core: Core, actor: Actor, req: Broadcast) -> dict[str, Any]:
    """Broadcast an alert; returns ``{id, subject, recipients, created_at}``. One message, one
    delivery per professional's mailbox, all in one transaction; events after commit."""
    req = _check(req)
    async with core.write() as tx:
        s = tx.session
        sender = await _sender(s, core, actor)
        targets = [m for m in await _targets(s, req) if sender is None or m != sender.id]
        if not targets:
            raise Invalid("aucun professionnel ne correspond à ces critères")
        now = utcnow()
        address = sender.address if sender else (core.settings.dgs_address or f"dgs-urgent@{core.settings.domain}")
        message = Message(
            message_id=new_message_id(core.settings.domain), from_mailbox_id=sender.id if sender else None,
            author_account_id=actor.account_id, sender_address=address, sender_name=SENDER_NAME,
            subject=req.subject, body=req.body, preview=preview(req.body), category=Category.DGS_URGENT,
            created_at=now, sent_at=now, origin="local", no_reply=True,
            headers={"broadcast": {"professions": req.professions, "departments": req.departments,
                                   "recipients": len(targets)}},
            search_text=build_search_text(req.subject, req.body, SENDER_NAME, address, []))
        s.add(message)
        await s.flush()
        message.thread_id = message.id
        placements = [Placement(message.id, m, Role.IN, Category.DGS_URGENT, now, req.subject, SENDER_NAME)
                      for m in targets]
        if sender is not None:
            placements.append(Placement(message.id, sender.id, Role.SENT, Category.DGS_URGENT, now, req.subject,
                                        SENDER_NAME))
        await place(tx, placements)
        audit.record(s, actor.account_id, "broadcast.send", object_type="message", object_id=message.id,
                     mailbox_id=sender.id if sender else None, client=actor.client,
                     detail={"recipients": len(targets), "professions": req.professions,
                             "departments": req.departments})
        message_pk = message.id
    return {"id": message_pk, "subject": req.subject, "recipients": len(targets), "created_at": iso(now)}


async def unread_alerts(core: Core, actor: Actor, limit: int = 3) -> list[dict[str, Any]]:
    """The DGS-Urgent alerts not yet read in the mailboxes the account owns or belongs to
    (the banner), newest first."""
    async with core.read() as s:
        rows = (await s.execute(
            sa.select(Delivery.mailbox_id, Delivery.message_id, Message.subject, Message.created_at)
            .join(Message, Message.id == Delivery.message_id)
            .join(MailboxAccess, MailboxAccess.mailbox_id == Delivery.mailbox_id)
            .where(MailboxAccess.account_id == actor.account_id, MailboxAccess.access != "delegate",
                   Delivery.category == Category.DGS_URGENT, Delivery.role == Role.IN,
                   Delivery.read.is_(False), Delivery.deleted.is_(False))
            .order_by(Delivery.id.desc()).limit(limit))).all()
    return [{"mailbox_id": r.mailbox_id, "message_id": r.message_id, "subject": r.subject,
             "created_at": iso(r.created_at)} for r in rows]
