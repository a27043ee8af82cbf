"""What every tele-expertise verb shares: loading a request with the actor's side(s), the API
shape of a request, the live event, and the expert mailboxes."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from monsisra.domain import teleexpertise as rules
from monsisra.domain.clock import as_utc, iso, utcnow
from monsisra.services import mailboxes, patients
from monsisra.services.care_team import person_name
from monsisra.services.core import Actor
from monsisra.services.errors import NotFound
from monsisra.store.directory import DirProfile
from monsisra.store.models import Account, Mailbox, MailboxAccess, Patient
from monsisra.store.teleexpertise import ServiceExpert, Teleexpertise, TeleexpertiseStep

EVENT = "teleexpertise.updated"
CONTEXT = "teleexpertise"
NOT_FOUND = "téléexpertise introuvable"
DEFAULT_ANSWER_DAYS = 7


def account_name(a: Account | None) -> str:
    return person_name(a) if a is not None else ""


async def declaration(s: AsyncSession, box: Mailbox) -> dict[str, Any]:
    """The expert declaration of a mailbox: its owner's card, or the service's (managers')."""
    if box.owner_account_id:
        profile = await s.get(DirProfile, box.owner_account_id)
        return dict((profile.expert or {}) if profile is not None else {})
    row = await s.get(ServiceExpert, box.id)
    return dict(row.declaration) if row is not None else {}


async def answer_days(s: AsyncSession, box: Mailbox) -> int:
    """The expected answer time the expert declared (days), else the default."""
    decl = await declaration(s, box)
    try:
        return max(1, min(int(decl.get("answer_days") or DEFAULT_ANSWER_DAYS), 90))
    except (TypeError, ValueError):
        return DEFAULT_ANSWER_DAYS


async def sides_of(s: AsyncSession, actor: Actor, row: Teleexpertise) -> set[str]:
    boxes = set(await s.scalars(sa.select(MailboxAccess.mailbox_id).where(
        MailboxAccess.account_id == actor.account_id,
        MailboxAccess.mailbox_id.in_([row.requester_mailbox_id, row.expert_mailbox_id]))))
    return {side for side, box in (("requester", row.requester_mailbox_id), ("expert", row.expert_mailbox_id))
            if box in boxes}


async def load(s: AsyncSession, actor: Actor, te_id: int, *, lock: bool = False) -> tuple[Teleexpertise, set[str]]:
    """The request and the actor's side(s); 404 to anyone on neither side."""
    stmt = sa.select(Teleexpertise).where(Teleexpertise.id == te_id)
    if lock and s.bind.dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    row = await s.scalar(stmt)
    if row is None:
        raise NotFound(NOT_FOUND)
    sides = await sides_of(s, actor, row)
    if not sides:
        raise NotFound(NOT_FOUND)
    return row, sides


async def emit(tx: Any, row: Teleexpertise) -> None:
    owners = await mailboxes.accounts_of(tx.session, [row.requester_mailbox_id, row.expert_mailbox_id])
    accounts = {a for ids in owners.values() for a in ids}
    tx.emit(EVENT, accounts, id=row.id, state=row.state, awaited=rules.awaited(row.state),
            requester_mailbox_id=row.requester_mailbox_id, expert_mailbox_id=row.expert_mailbox_id)


_REQ_BOX, _EXP_BOX = aliased(Mailbox), aliased(Mailbox)
_REQUESTER, _ASSIGNEE, _ANSWERER = aliased(Account), aliased(Account), aliased(Account)


def select_rows() -> sa.Select:
    return (sa.select(Teleexpertise, _REQ_BOX, _EXP_BOX, _REQUESTER, _ASSIGNEE, _ANSWERER, Patient)
            .join(_REQ_BOX, _REQ_BOX.id == Teleexpertise.requester_mailbox_id)
            .join(_EXP_BOX, _EXP_BOX.id == Teleexpertise.expert_mailbox_id)
            .join(_REQUESTER, _REQUESTER.id == Teleexpertise.requester_account_id)
            .outerjoin(_ASSIGNEE, _ASSIGNEE.id == Teleexpertise.assigned_to)
            .outerjoin(_ANSWERER, _ANSWERER.id == Teleexpertise.answered_by)
            .join(Patient, Patient.id == Teleexpertise.patient_id))


def _person(a: Account | None) -> dict[str, Any] | None:
    return None if a is None else {"account_id": a.id, "name": account_name(a), "national_id": a.national_id}


AWAITED_LABELS = {"expert": "En attente de l'expert", "requester": "En attente du requérant"}


OVERDUE_LABEL = "En retard"


def is_overdue(r: Teleexpertise) -> bool:
    """Still awaiting the expert past the expected answer time."""
    return r.state == "submitted" and r.due_at is not None and as_utc(r.due_at) < utcnow()


def item(full: Any, sides: set[str]) -> dict[str, Any]:
    r, req_box, exp_box, requester, assignee, answerer, patient = full
    awaited = rules.awaited(r.state)
    if r.state == "answered":
        awaited_label = "Réponse reçue : à clôturer"
    else:
        awaited_label = AWAITED_LABELS.get(awaited or "", "Terminée")
    overdue = is_overdue(r)
    actions = [a for a, (side, froms, _to) in rules.TRANSITIONS.items()
               if r.state in froms and (side == "either" or side in sides)]
    if "assign" in actions and r.assigned_to is not None:
        actions.remove("assign")
    return {"id": r.id, "state": r.state, "state_label": rules.STATE_LABELS[r.state], "awaited": awaited,
            "awaited_label": awaited_label, "question": r.question, "created_at": iso(r.created_at),
            "updated_at": iso(r.updated_at), "due_at": iso(r.due_at),
            "overdue": overdue, "overdue_label": OVERDUE_LABEL if overdue else None, "reminded_at": iso(r.reminded_at),
            "consent": {"given": True, "by": r.consent_by, "at": iso(r.consent_at)},
            "billing_number": r.billing_number if "requester" in sides else None,
            "requester": {"mailbox_id": req_box.id, "address": req_box.address, "name": req_box.display_name,
                          "account": _person(requester)},
            "expert": {"mailbox_id": exp_box.id, "address": exp_box.address, "name": exp_box.display_name,
                       "kind": exp_box.kind},
            "assigned_to": _person(assignee), "assigned_at": iso(r.assigned_at),
            "answered_by": _person(answerer), "answered_at": iso(r.answered_at),
            "closed_at": iso(r.closed_at), "decline_reason": r.decline_reason,
            "patient": patients.patient_dict(patient), "message_id": r.message_id,
            "report_message_id": r.report_message_id, "report_attachment_id": r.report_attachment_id,
            "summary_message_id": r.summary_message_id, "role": sorted(sides), "actions": actions}


async def steps_of(s: AsyncSession, te_id: int) -> list[dict[str, Any]]:
    rows = (await s.scalars(sa.select(TeleexpertiseStep).where(TeleexpertiseStep.teleexpertise_id == te_id)
                            .order_by(TeleexpertiseStep.id))).all()
    return [{"id": st.id, "action": st.action, "author": st.author_name, "body": st.body,
             "attachments": st.attachments or [], "message_id": st.message_id, "at": iso(st.created_at)}
            for st in rows]
