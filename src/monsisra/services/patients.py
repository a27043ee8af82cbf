"""Patients: identity by INS (NIR or NIA, key checked), as linked to messages, conversations and
requests, and who may see a patient at all.

A professional sees a patient only when they have a link to them: a member of the care team, the
one who registered them, a user of a mailbox holding a message about them, a party to a support
request (or conversation) about them. The record (``patient_record``) is stricter: care team only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from monsisra.domain.ins import InvalidINS as InvalidINS
from monsisra.domain.ins import PatientIdentity, format_ins, identity_errors, is_nia, validate_ins
from monsisra.domain.text import fold, search_terms
from monsisra.services import audit
from monsisra.services.core import Actor, Core
from monsisra.services.errors import Invalid, NotFound
from monsisra.store.conversations import Conversation, ConversationParticipant
from monsisra.store.models import Delivery, MailboxAccess, Message, Patient
from monsisra.store.patients import CareTeamMember, PatientContact, SupportRequest

PatientRef = PatientIdentity  # the patient as a client names it ({ins, oid, names, birth date, sex…})
SEARCH_MAX = 50


def search_name(p: Patient) -> str:
    return fold(f"{p.family_name} {p.given_names} {p.ins}")[:400]


def search_text(p: Patient | None) -> str:
    """What a message linked to ``p`` is also found by in its mailboxes: names and INS."""
    return "" if p is None else f"{p.family_name} {p.given_names} {p.ins}"


def check(ref: PatientRef) -> PatientRef:
    """``ref`` normalised, or :class:`Invalid` whose ``errors`` name each wrong field (French)."""
    errors = identity_errors(ref)
    if errors:
        first = next(iter(errors.items()))
        label = {"ins": "INS", "oid": "OID", "family_name": "nom de naissance", "given_names": "prénoms",
                 "birth_date": "date de naissance", "sex": "sexe", "birthplace": "lieu de naissance"}[first[0]]
        raise Invalid(f"patient : {first[1]}" if first[0] in ("ins", "oid") else f"patient, {label} : {first[1]}",
                      errors=errors)
    return ref


async def resolve(session: AsyncSession, ref: PatientRef) -> Patient:
    """The patient with this INS, created when new; :class:`Invalid` (French) for a wrong INS or OID.

    Known traits are kept (the first qualified identity wins); missing ones are filled in."""
    check(ref)
    patient = await session.scalar(sa.select(Patient).where(Patient.ins == ref.ins))
    if patient is None:
        patient = Patient(ins=ref.ins, ins_oid=ref.oid, family_name=ref.family_name,
                          given_names=ref.given_names, birth_date=ref.birth_date, sex=ref.sex,
                          birthplace=ref.birthplace)
        patient.search_name = search_name(patient)
        session.add(patient)
        await session.flush()
    else:
        changed = False
        for attr in ("family_name", "given_names", "birth_date", "sex", "birthplace"):
            if not getattr(patient, attr) and getattr(ref, attr):
                setattr(patient, attr, getattr(ref, attr))
                changed = True
        if changed:
            patient.search_name = search_name(patient)
    return patient


def patient_dict(p: Patient) -> dict[str, Any]:
    """A patient as the API shows it (the ``patient`` shape of messages, plus ``id``)."""
    return {"id": p.id, "ins": p.ins, "oid": p.ins_oid, "family_name": p.family_name,
            "given_names": p.given_names, "birth_date": p.birth_date, "sex": p.sex,
            "birthplace": p.birthplace, "ins_display": format_ins(p.ins), "nia": is_nia(p.ins, p.ins_oid),
            "display_name": display_name(p)}


def display_name(p: Patient) -> str:
    given = " ".join(w.capitalize() for w in p.given_names.split()[:1])
    return " ".join(x for x in (p.family_name, given) if x) or format_ins(p.ins)


# --- who may see a patient --------------------------------------------------------------------

# Each link kind: ``(account_id) -> SELECT patient_id`` of the patients it gives access to. Other
# capabilities (conversations, tele-expertise) add theirs with :func:`register_link`.
LinkSource = Callable[[int], sa.Select]
LINKS: dict[str, LinkSource] = {}


def register_link(name: str, source: LinkSource) -> None:
    LINKS[name] = source


def _mailboxes_of(account_id: int) -> sa.Select:
    return sa.select(MailboxAccess.mailbox_id).where(MailboxAccess.account_id == account_id)


register_link("care_team", lambda a: sa.select(CareTeamMember.patient_id).where(CareTeamMember.account_id == a))
register_link("registered", lambda a: sa.select(PatientContact.patient_id).where(PatientContact.account_id == a))
# A message about the patient in a mailbox the account may use (not one in the bin only).
register_link("message", lambda a: sa.select(Message.patient_id)
              .join(Delivery, Delivery.message_id == Message.id)
              .where(Message.patient_id.is_not(None), Delivery.deleted.is_(False),
                     Delivery.mailbox_id.in_(_mailboxes_of(a))))
register_link("support_request", lambda a: sa.select(SupportRequest.patient_id).where(
    SupportRequest.patient_id.is_not(None),
    sa.or_(SupportRequest.from_mailbox_id.in_(_mailboxes_of(a)), SupportRequest.to_mailbox_id.in_(_mailboxes_of(a)))))

# A conversation about the patient one of the account's mailboxes takes part in (or took part in).
register_link("conversation", lambda a: sa.select(Conversation.patient_id)
              .join(ConversationParticipant, ConversationParticipant.conversation_id == Conversation.id)
              .where(Conversation.patient_id.is_not(None), ConversationParticipant.mailbox_id.in_(_mailboxes_of(a))))


def visible_ids(account_id: int) -> sa.Select:
    """SELECT of the ids of every patient this account has a link to."""
    return sa.union(*(source(account_id) for source in LINKS.values())).subquery().select()


async def may_see(session: AsyncSession, account_id: int, patient_id: int) -> bool:
    for source in LINKS.values():
        sub = source(account_id).subquery()
        found = await session.scalar(sa.select(sa.literal(1)).select_from(sub)
                                     .where(sub.c[0] == patient_id).limit(1))
        if found:
            return True
    return False


async def _visible(session: AsyncSession, actor: Actor, patient_id: int) -> Patient:
    """The patient, or 404 (never reveal that an unlinked patient exists)."""
    patient = await session.get(Patient, patient_id)
    if patient is None or not await may_see(session, actor.account_id, patient_id):
        raise NotFound("patient introuvable")
    return patient


async def care_team_flags(session: AsyncSession, account_id: int, patient_ids: list[int]) -> dict[int, bool]:
    """patient id → is this account in its care team (the green/grey icon)."""
    if not patient_ids:
        return {}
    mine = set(await session.scalars(sa.select(CareTeamMember.patient_id).where(
        CareTeamMember.account_id == account_id, CareTeamMember.patient_id.in_(set(patient_ids)))))
    return {pid: pid in mine for pid in patient_ids}


async def care_team_marks(core: Core, actor: Actor, patient_ids: list[int]) -> dict[int, bool]:
    """patient id → whether the actor follows them, for every patient of a page at once (the
    rows of a message or conversation list: one query, never one per row)."""
    if not patient_ids:
        return {}
    async with core.read() as s:
        return await care_team_flags(s, actor.account_id, patient_ids)


async def in_care_team(core: Core, actor: Actor, patient_id: int) -> bool:
    async with core.read() as s:
        return (await care_team_flags(s, actor.account_id, [patient_id]))[patient_id]


async def _with_flags(session: AsyncSession, actor: Actor, rows: list[Patient]) -> list[dict[str, Any]]:
    flags = await care_team_flags(session, actor.account_id, [p.id for p in rows])
    counts = dict((await session.execute(
        sa.select(CareTeamMember.patient_id, sa.func.count()).where(
            CareTeamMember.patient_id.in_([p.id for p in rows])).group_by(CareTeamMember.patient_id))).all()) \
        if rows else {}
    return [patient_dict(p) | {"care_team": {"me": flags.get(p.id, False), "count": counts.get(p.id, 0)}}
            for p in rows]


# --- the API's verbs ------------------------------------------------------------------------


async def register(core: Core, actor: Actor, ref: PatientRef) -> tuple[dict[str, Any], bool]:
    """``POST /patients``: the patient with this INS (created when new) and whether it was created.

    The professional who registers a patient is linked to them (they see the identity; the record
    stays for the care team)."""
    check(ref)
    async with core.write() as tx:
        s = tx.session
        existed = await s.scalar(sa.select(Patient.id).where(Patient.ins == ref.ins))
        patient = await resolve(s, ref)
        if not await s.get(PatientContact, (patient.id, actor.account_id)):
            s.add(PatientContact(patient_id=patient.id, account_id=actor.account_id))
        audit.record(s, actor.account_id, "patient.register", object_type="patient", object_id=patient.id,
                     patient_id=patient.id, client=actor.client, detail={"created": existed is None})
        await s.flush()
        [item] = await _with_flags(s, actor, [patient])
    return item, existed is None


async def get(core: Core, actor: Actor, patient_id: int) -> dict[str, Any]:
    """One patient the actor has a link to (404 otherwise); the access is audited."""
    async with core.read() as s:
        patient = await _visible(s, actor, patient_id)
        [item] = await _with_flags(s, actor, [patient])
    await audit.record_now(core, [audit.entry(actor.account_id, "patient.view", object_type="patient",
                                              object_id=patient_id, patient_id=patient_id, client=actor.client)])
    return item


async def search(core: Core, actor: Actor, *, ins: str | None = None, q: str | None = None,
                 limit: int = 20) -> dict[str, Any]:
    """``GET /patients?ins=`` (exact INS, spaces accepted) or ``?q=`` (fragments of names or INS),
    among the patients the actor has a link to."""
    limit = max(1, min(limit, SEARCH_MAX))
    stmt = sa.select(Patient).where(Patient.id.in_(visible_ids(actor.account_id)))
    if ins is not None:
        try:
            stmt = stmt.where(Patient.ins == validate_ins(ins))
        except InvalidINS as exc:
            raise Invalid(f"INS : {exc}", errors={"ins": str(exc)}) from None
    elif q is not None:
        terms = search_terms(q)
        compact = "".join(q.split()).upper()
        if len(compact) == 15 and compact[:13].replace("A", "").replace("B", "").isdigit():
            terms = [compact.lower()]
        if not terms:
            return {"items": []}
        for term in terms:
            stmt = stmt.where(Patient.search_name.contains(term, autoescape=True))
    else:
        raise Invalid("précisez « ins » ou « q »")
    async with core.read() as s:
        rows = list(await s.scalars(stmt.order_by(Patient.family_name, Patient.given_names, Patient.id).limit(limit)))
        items = await _with_flags(s, actor, rows)
    if rows:
        await audit.record_now(core, [audit.entry(actor.account_id, "patient.search", object_type="patient",
                                                  object_id=",".join(str(p.id) for p in rows[:8]), client=actor.client,
                                                  detail={"results": len(rows)})])
    return {"items": items}


async def mine(core: Core, actor: Actor, limit: int = 200) -> list[dict[str, Any]]:
    """The patients this account has a link to (« Mes patients »), by name."""
    async with core.read() as s:
        rows = list(await s.scalars(sa.select(Patient).where(Patient.id.in_(visible_ids(actor.account_id)))
                                    .order_by(Patient.family_name, Patient.given_names, Patient.id).limit(limit)))
        return await _with_flags(s, actor, rows)
