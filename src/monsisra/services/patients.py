"""Patients: identity by INS (NIR or NIA, key checked), as linked to messages, conversations and
requests. Only the patient's identity lives here; who may see what about a patient is decided by
the care team and the record (issue 13)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from monsisra.domain.ins import KNOWN_OIDS, InvalidINS, PatientIdentity, validate_ins
from monsisra.services.errors import Invalid
from monsisra.store.models import Patient

PatientRef = PatientIdentity  # the patient as a client names it ({ins, oid, names, birth date, sex…})


async def resolve(session: AsyncSession, ref: PatientRef) -> Patient:
    """The patient with this INS, created when new; :class:`Invalid` (French) for a wrong INS or OID."""
    try:
        ins = validate_ins(ref.ins)
    except InvalidINS as exc:
        raise Invalid(f"patient : {exc}") from None
    if ref.oid not in KNOWN_OIDS:
        raise Invalid("patient : OID d'INS inconnu")
    patient = await session.scalar(sa.select(Patient).where(Patient.ins == ins))
    if patient is None:
        patient = Patient(ins=ins, ins_oid=ref.oid, family_name=ref.family_name.upper(),
                          given_names=ref.given_names, birth_date=ref.birth_date, sex=ref.sex,
                          birthplace=ref.birthplace)
        session.add(patient)
        await session.flush()
    return patient


def patient_dict(p: Patient) -> dict[str, Any]:
    """A patient as the API shows it."""
    return {"id": p.id, "ins": p.ins, "oid": p.ins_oid, "family_name": p.family_name,
            "given_names": p.given_names, "birth_date": p.birth_date, "sex": p.sex}
