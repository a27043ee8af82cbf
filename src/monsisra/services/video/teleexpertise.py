"""Calls on a tele-expertise (issue 17, synchronous tele-expertise): who may join (the two sides of
the request, as for the request itself; 404 to anyone else), who is rung (the requester, and the
expert: the owner of a personal mailbox; for a service, the member who took the request in
charge, else every member), and the call written on the request's exchange as a step; the call
carries the request's patient, so it also shows on the patient record."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from monsisra.services import mailboxes
from monsisra.services.core import Actor, Tx
from monsisra.services.teleexpertise import common
from monsisra.services.video.calls import Invitation, register_context
from monsisra.store.models import Account, Mailbox, Patient
from monsisra.store.teleexpertise import Teleexpertise, TeleexpertiseStep
from monsisra.store.video import Call

CONTEXT = "teleexpertise"
STEP = "visio"  # the action of the exchange's step a call writes
ENDED = {"closed": "cette téléexpertise est clôturée : on n'y lance plus de visio",
         "cancelled": "cette téléexpertise a été annulée : on n'y lance plus de visio",
         "declined": "cette téléexpertise a été refusée : on n'y lance plus de visio"}


async def _ringed(s: AsyncSession, row: Teleexpertise) -> list[int]:
    ring = [row.requester_account_id]
    box = await s.get(Mailbox, row.expert_mailbox_id)
    if box is not None and box.kind == "PER" and box.owner_account_id:
        ring.append(box.owner_account_id)
    elif row.assigned_to is not None:
        ring.append(row.assigned_to)
    else:
        ring += (await mailboxes.accounts_of(s, [row.expert_mailbox_id])).get(row.expert_mailbox_id, [])
    return list(dict.fromkeys(ring))


async def _teleexpertise(s: AsyncSession, actor: Actor, te_id: int) -> Invitation:
    row, _sides = await common.load(s, actor, te_id)
    me = await s.get(Account, actor.account_id)
    patient = await s.get(Patient, row.patient_id)
    who = f"{patient.family_name.upper()} {patient.given_names}" if patient is not None else "patient"
    return Invitation(title=f"Téléexpertise — {who}", name=common.account_name(me) or actor.username,
                      accounts=await _ringed(s, row), patient_id=row.patient_id,
                      ended=ENDED.get(row.state))


async def _record(tx: Tx, call: Call, what: str, text: str) -> None:
    row = await tx.session.get(Teleexpertise, call.context_id)
    if row is None:
        return
    author = await tx.session.get(Account, call.started_by) if call.started_by else None
    tx.session.add(TeleexpertiseStep(teleexpertise_id=row.id, action=STEP, account_id=call.started_by,
                                     author_name=common.account_name(author) or "MonSisra", body=text))
    await common.emit(tx, row)


register_context(CONTEXT, _teleexpertise, _record)
