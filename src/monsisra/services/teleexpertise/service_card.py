"""A service mailbox's card (« Fiche de la boîte de service ») and its expert declaration, made
by the service's managers (members holding the ``manage`` right, domain.delegation) with the
same fields as a person's card: specialties, description, documents, urgent contact, answer time."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from monsisra.domain import delegation
from monsisra.domain.clock import utcnow
from monsisra.domain.delegation import Right
from monsisra.domain.model import Access, MailboxKind
from monsisra.services import audit, mailboxes
from monsisra.services.care_team import person_name
from monsisra.services.core import Actor, Core
from monsisra.services.directory.cards import check_expert_declaration, clean_expert_declaration
from monsisra.services.directory.local import sync_local
from monsisra.services.errors import Invalid, NotFound
from monsisra.store.models import Account, Mailbox, MailboxAccess
from monsisra.store.teleexpertise import ServiceExpert

NOT_SERVICE = "boîte de service introuvable"


async def service_card(core: Core, actor: Actor, mailbox_id: int) -> dict[str, Any]:
    """The card of a service mailbox the actor is a member of (404 otherwise), whether they may
    manage it, its members (managers marked) and its expert declaration (None: not expert)."""
    async with core.read() as s:
        _access, rights = await mailboxes.rights_of(s, actor, mailbox_id)
        box = await s.get(Mailbox, mailbox_id)
        if box is None or box.kind == MailboxKind.PER:
            raise NotFound(NOT_SERVICE)
        decl = await s.get(ServiceExpert, mailbox_id)
        rows = (await s.execute(sa.select(Account, MailboxAccess.rights).join(
            MailboxAccess, MailboxAccess.account_id == Account.id).where(
            MailboxAccess.mailbox_id == mailbox_id, MailboxAccess.access == Access.MEMBER)
            .order_by(Account.last_name, Account.first_name))).all()
    members = [{"account_id": a.id, "name": person_name(a),
                "manager": Right.MANAGE in delegation.decode(r)} for a, r in rows]
    return {"mailbox": {"id": box.id, "address": box.address, "name": box.display_name, "kind": box.kind,
                        "organisation": box.organisation},
            "can_manage": Right.MANAGE in rights, "members": members,
            "expert": dict(decl.declaration) if box.is_expert and decl is not None else None}


async def declare_expert(core: Core, actor: Actor, mailbox_id: int, decl: dict[str, Any] | None) -> dict[str, Any]:
    """Declare the service expert (or withdraw with None): its managers only (403 for another
    member, 404 for anyone else); nothing changes on a refusal."""
    cleaned = check_expert_declaration(clean_expert_declaration(decl)) if decl is not None else None
    async with core.write() as tx:
        s = tx.session
        await mailboxes.require_right(s, actor, mailbox_id, Right.MANAGE)
        box = await s.get(Mailbox, mailbox_id)
        if box is None or box.kind == MailboxKind.PER:
            raise NotFound(NOT_SERVICE)
        if not box.active:
            raise Invalid("cette boîte de service est désactivée")
        row = await s.get(ServiceExpert, mailbox_id)
        if cleaned is None:
            box.is_expert = False
            if row is not None:
                await s.delete(row)
        else:
            if row is None:
                row = ServiceExpert(mailbox_id=mailbox_id, declaration=cleaned)
                s.add(row)
            row.declaration, row.updated_at, row.updated_by = cleaned, utcnow(), actor.account_id
            box.is_expert = True
            box.description = cleaned["description"]
        audit.record(s, actor.account_id, "mailbox.expert", object_type="mailbox", object_id=mailbox_id,
                     mailbox_id=mailbox_id, client=actor.client, detail={"expert": cleaned is not None})
    await sync_local(core, force=True)
    return await service_card(core, actor, mailbox_id)
