"""Care team (« acteurs de la prise en charge »): a professional declares or withdraws themselves
for a patient; the team list shows each member's profession and directory contact.

Declaring oneself needs a link to the patient already (a message, a request, a registration):
one cannot join the team of a patient one has never heard of, and so open their record.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from monsisra.domain.clock import iso
from monsisra.domain.model import Access, MailboxKind
from monsisra.services import audit, patients
from monsisra.services.core import Actor, Core
from monsisra.services.errors import NotFound
from monsisra.store.directory import DirCommune, DirProfile
from monsisra.store.models import Account, Mailbox, MailboxAccess, Patient
from monsisra.store.patients import CareTeamMember

PATIENT_CARE_TEAM = "patient.care_team"  # event type: someone joined or left a patient's team


def person_name(a: Any) -> str:
    return " ".join(x for x in (a.civility, a.first_name, (a.last_name or "").upper()) if x) or a.username


async def _require_patient(s: Any, actor: Actor, patient_id: int) -> Patient:
    patient = await s.get(Patient, patient_id)
    if patient is None or not await patients.may_see(s, actor.account_id, patient_id):
        raise NotFound("patient introuvable")
    return patient


async def _members(s: Any, patient_id: int) -> list[int]:
    return list(await s.scalars(sa.select(CareTeamMember.account_id).where(CareTeamMember.patient_id == patient_id)))


async def join(core: Core, actor: Actor, patient_id: int) -> dict[str, Any]:
    """``PUT …/care-team/me``: idempotent; the team is told live."""
    async with core.write() as tx:
        s = tx.session
        await _require_patient(s, actor, patient_id)
        if await s.get(CareTeamMember, (patient_id, actor.account_id)) is None:
            s.add(CareTeamMember(patient_id=patient_id, account_id=actor.account_id))
            audit.record(s, actor.account_id, "patient.care_team.join", object_type="patient", object_id=patient_id,
                         patient_id=patient_id, client=actor.client)
            await s.flush()
            tx.emit(PATIENT_CARE_TEAM, await _members(s, patient_id), patient_id=patient_id, member=True,
                    account_id=actor.account_id)
    return await team(core, actor, patient_id)


async def leave(core: Core, actor: Actor, patient_id: int) -> dict[str, Any]:
    """``DELETE …/care-team/me``: idempotent; the patient stays visible through the other links."""
    async with core.write() as tx:
        s = tx.session
        await _require_patient(s, actor, patient_id)
        row = await s.get(CareTeamMember, (patient_id, actor.account_id))
        if row is not None:
            others = await _members(s, patient_id)
            await s.delete(row)
            audit.record(s, actor.account_id, "patient.care_team.leave", object_type="patient", object_id=patient_id,
                         patient_id=patient_id, client=actor.client)
            tx.emit(PATIENT_CARE_TEAM, others, patient_id=patient_id, member=False, account_id=actor.account_id)
    return await team(core, actor, patient_id, audited=False)


async def team(core: Core, actor: Actor, patient_id: int, *, audited: bool = True) -> dict[str, Any]:
    """``GET …/care-team``: the members with profession, specialty and directory contact (their
    MSSanté address, commune), whoever may see the patient; ``me`` says whether the actor is one."""
    async with core.read() as s:
        await _require_patient(s, actor, patient_id)
        rows = (await s.execute(
            sa.select(Account.id, Account.username, Account.civility, Account.first_name, Account.last_name,
                      Account.profession, Account.specialty, CareTeamMember.since, DirProfile.postcode,
                      DirCommune.name.label("commune"))
            .join(CareTeamMember, CareTeamMember.account_id == Account.id)
            .outerjoin(DirProfile, DirProfile.account_id == Account.id)
            .outerjoin(DirCommune, DirCommune.code == DirProfile.commune_code)
            .where(CareTeamMember.patient_id == patient_id)
            .order_by(CareTeamMember.since, Account.id))).all()
        ids = [r.id for r in rows]
        addresses: dict[int, str] = {}
        if ids:
            for account_id, address in await s.execute(
                    sa.select(MailboxAccess.account_id, Mailbox.address)
                    .join(Mailbox, Mailbox.id == MailboxAccess.mailbox_id)
                    .where(MailboxAccess.account_id.in_(ids), MailboxAccess.access == Access.OWNER,
                           Mailbox.kind == MailboxKind.PER).order_by(Mailbox.id)):
                addresses.setdefault(account_id, address)
    items = [{"account_id": r.id, "name": person_name(r), "profession": r.profession, "specialty": r.specialty,
              "address": addresses.get(r.id), "postcode": r.postcode or None, "commune": r.commune,
              "since": iso(r.since), "me": r.id == actor.account_id} for r in rows]
    if audited:
        await audit.record_now(core, [audit.entry(actor.account_id, "patient.care_team.read", object_type="patient",
                                                  object_id=patient_id, patient_id=patient_id, client=actor.client)])
    return {"patient_id": patient_id, "me": actor.account_id in ids, "items": items}


async def is_member(s: Any, account_id: int, patient_id: int) -> bool:
    return await s.get(CareTeamMember, (patient_id, account_id)) is not None
