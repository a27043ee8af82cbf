"""Support requests (« Demandes d'appui ») to resource teams (DAC, CPTS…): a request carries a
reason, an urgency, maybe a patient and documents; it arrives in the team's mailbox as a letter of
category « support » and moves new → taken (by one member of the team's mailbox, shown to all) →
closed, with a conversation attached when conversations are available.

Either side sees the request and its state: the sending mailbox's users and the team's members.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from monsisra.domain.addresses import normalize_address
from monsisra.domain.clock import iso, utcnow
from monsisra.domain.delegation import Right
from monsisra.domain.model import Category
from monsisra.domain.text import clean_multiline
from monsisra.services import audit, listing, mailboxes, messages, patients
from monsisra.services.care_team import person_name
from monsisra.services.core import Actor, Core
from monsisra.services.errors import Conflict, Forbidden, Invalid, NotFound
from monsisra.store.models import Account, Mailbox, MailboxAccess, Message, Patient
from monsisra.store.patients import SupportRequest

STATES = ("new", "taken", "closed")
STATE_LABELS = {"new": "Nouvelle", "taken": "Prise en charge", "closed": "Clôturée"}
URGENCIES = {"normal": "Normale", "urgent": "Urgente"}
MAX_REASON = 10_000
EVENT = "support_request.updated"
CONTEXT = "support_request"


@dataclass
class NewRequest:
    to: str
    reason: str
    urgency: str = "normal"
    patient: patients.PatientRef | None = None
    patient_id: int | None = None
    attachments: list[str] = field(default_factory=list)
    from_mailbox: int | None = None


async def _team_box(s: AsyncSession, address: str) -> Mailbox:
    norm = normalize_address(address or "")
    if norm is None:
        raise Invalid("destinataire : adresse mal formée", errors={"to": "adresse mal formée"})
    box = await s.scalar(sa.select(Mailbox).where(Mailbox.address == norm, Mailbox.active.is_(True)))
    if box is None or not box.is_resource_team:
        reason = "cette adresse n'est pas celle d'une équipe ressource (DAC, CPTS…) de la plateforme"
        raise Invalid(f"destinataire : {reason}", errors={"to": reason})
    return box


async def _from_box(core: Core, s: AsyncSession, actor: Actor, wanted: int | None) -> int:
    """The mailbox the request leaves from: the one asked for, else the landing one, else the own."""
    if wanted is not None:
        await mailboxes.require_right(s, actor, wanted, Right.SEND)
        return wanted
    boxes = [b for b in await mailboxes.list_for(core, actor) if b.may(Right.SEND)]
    if not boxes:
        raise Forbidden("aucune boîte aux lettres depuis laquelle envoyer une demande d'appui")
    landing = await mailboxes.landing(core, actor)
    return landing if landing in {b.id for b in boxes} else boxes[0].id


def _subject(urgency: str, patient: Patient | None, team: str) -> str:
    about = f" — {patients.display_name(patient)}" if patient is not None else ""
    return f"{'URGENT — ' if urgency == 'urgent' else ''}Demande d'appui à {team}{about}"


async def create(core: Core, actor: Actor, req: NewRequest) -> dict[str, Any]:
    """``POST /support-requests``: the letter into the team's mailbox, then the request itself."""
    reason = clean_multiline(req.reason or "").strip()
    if not reason:
        raise Invalid("motif de la demande obligatoire", errors={"reason": "décrivez le besoin"})
    if len(reason) > MAX_REASON:
        raise Invalid(f"motif trop long (au plus {MAX_REASON} caractères)", errors={"reason": "trop long"})
    if req.urgency not in URGENCIES:
        raise Invalid("urgence : « normal » ou « urgent »", errors={"urgency": "normal ou urgent"})
    if req.patient is not None:
        patients.check(req.patient)
    async with core.read() as s:
        team = await _team_box(s, req.to)
        from_id = await _from_box(core, s, actor, req.from_mailbox)
        if from_id == team.id:
            raise Invalid("une équipe ne s'adresse pas de demande d'appui à elle-même")
        patient = None
        if req.patient_id is not None:
            patient = await s.get(Patient, req.patient_id)
            if patient is None or not await patients.may_see(s, actor.account_id, req.patient_id):
                raise NotFound("patient introuvable")
            req.patient = patients.PatientRef(ins=patient.ins, oid=patient.ins_oid, family_name=patient.family_name,
                                              given_names=patient.given_names, birth_date=patient.birth_date,
                                              sex=patient.sex, birthplace=patient.birthplace)
    preview_patient = patient or (Patient(ins=req.patient.ins, family_name=req.patient.family_name,
                                          given_names=req.patient.given_names) if req.patient else None)
    letter = await messages.send(core, actor, messages.Compose(
        from_mailbox=from_id, to=[team.address], subject=_subject(req.urgency, preview_patient, team.display_name),
        body=reason, category=Category.SUPPORT, attachments=list(req.attachments), patient=req.patient,
        context_type=CONTEXT))
    async with core.write() as tx:
        s = tx.session
        message = await s.get(Message, letter["id"])
        assert message is not None
        row = SupportRequest(from_mailbox_id=from_id, to_mailbox_id=team.id, author_account_id=actor.account_id,
                             patient_id=message.patient_id, reason=reason, urgency=req.urgency, state="new",
                             created_at=utcnow(), message_id=message.id)
        s.add(row)
        await s.flush()
        message.context_id = row.id
        audit.record(s, actor.account_id, "support.create", object_type="support_request", object_id=row.id,
                     patient_id=row.patient_id, mailbox_id=from_id, client=actor.client,
                     detail={"to": team.address, "urgency": req.urgency})
        request_id = row.id
        await _emit(tx, row)
    conversation_id = await _attach_conversation(core, actor, request_id, from_id, team, reason, letter)
    if conversation_id is not None:
        async with core.write() as tx:
            row = await tx.session.get(SupportRequest, request_id)
            assert row is not None
            row.conversation_id = conversation_id
    return await get(core, actor, request_id)


async def _attach_conversation(core: Core, actor: Actor, request_id: int, from_id: int, team: Mailbox,
                               reason: str, letter: dict[str, Any]) -> int | None:
    """The conversation attached to the request: the requester's mailbox and the team's, about
    the same patient, opened with the reason."""
    from monsisra.services import conversations

    return await conversations.start(core, actor, from_mailbox=from_id, title=letter["subject"][:200],
                                     participants=[team.address], patient_id=(letter.get("patient") or {}).get("id"),
                                     body=reason)


async def _emit(tx: Any, row: SupportRequest) -> None:
    owners = await mailboxes.accounts_of(tx.session, [row.from_mailbox_id, row.to_mailbox_id])
    accounts = {a for ids in owners.values() for a in ids}
    tx.emit(EVENT, accounts, id=row.id, state=row.state, from_mailbox_id=row.from_mailbox_id,
            to_mailbox_id=row.to_mailbox_id)


async def _sides(s: AsyncSession, actor: Actor, row: SupportRequest) -> set[str]:
    boxes = set(await s.scalars(sa.select(MailboxAccess.mailbox_id).where(
        MailboxAccess.account_id == actor.account_id,
        MailboxAccess.mailbox_id.in_([row.from_mailbox_id, row.to_mailbox_id]))))
    return {side for side, box in (("sent", row.from_mailbox_id), ("received", row.to_mailbox_id)) if box in boxes}


async def _load(s: AsyncSession, actor: Actor, request_id: int, *,
                lock: bool = False) -> tuple[SupportRequest, set[str]]:
    stmt = sa.select(SupportRequest).where(SupportRequest.id == request_id)
    if lock and s.bind.dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    row = await s.scalar(stmt)
    if row is None:
        raise NotFound("demande d'appui introuvable")
    sides = await _sides(s, actor, row)
    if not sides:
        raise NotFound("demande d'appui introuvable")
    return row, sides


async def take(core: Core, actor: Actor, request_id: int) -> dict[str, Any]:
    """``POST …/{id}/take``: one member of the team takes it in charge; a second time is a 409."""
    async with core.write() as tx:
        s = tx.session
        row, sides = await _load(s, actor, request_id, lock=True)
        if "received" not in sides:
            raise Forbidden("seuls les membres de l'équipe destinataire prennent une demande en charge")
        await mailboxes.require_right(s, actor, row.to_mailbox_id, Right.SEND)
        if row.state != "new":
            who = await s.get(Account, row.taken_by) if row.taken_by else None
            raise Conflict(f"demande déjà prise en charge par {person_name(who)}" if row.state == "taken" and who
                           else "demande déjà clôturée" if row.state == "closed" else "demande déjà prise en charge",
                           state=row.state)
        # Guarded update: of two members taking it at once, exactly one wins (SQLite serialises
        # writers; PostgreSQL holds the row lock taken above).
        done = await s.execute(sa.update(SupportRequest).where(SupportRequest.id == row.id,
                                                              SupportRequest.state == "new")
                               .values(state="taken", taken_by=actor.account_id, taken_at=utcnow()))
        if done.rowcount != 1:
            raise Conflict("demande déjà prise en charge", state="taken")
        await s.refresh(row)
        audit.record(s, actor.account_id, "support.take", object_type="support_request", object_id=row.id,
                     patient_id=row.patient_id, mailbox_id=row.to_mailbox_id, client=actor.client)
        await _emit(tx, row)
    return await get(core, actor, request_id)


async def close(core: Core, actor: Actor, request_id: int) -> dict[str, Any]:
    """``POST …/{id}/close``: either side closes it; closing what is closed is a 409."""
    async with core.write() as tx:
        s = tx.session
        row, sides = await _load(s, actor, request_id, lock=True)
        box = row.to_mailbox_id if "received" in sides else row.from_mailbox_id
        await mailboxes.require_right(s, actor, box, Right.SEND)
        if row.state == "closed":
            raise Conflict("demande déjà clôturée", state="closed")
        done = await s.execute(sa.update(SupportRequest).where(SupportRequest.id == row.id,
                                                              SupportRequest.state != "closed")
                               .values(state="closed", closed_by=actor.account_id, closed_at=utcnow()))
        if done.rowcount != 1:
            raise Conflict("demande déjà clôturée", state="closed")
        await s.refresh(row)
        audit.record(s, actor.account_id, "support.close", object_type="support_request", object_id=row.id,
                     patient_id=row.patient_id, mailbox_id=box, client=actor.client)
        await _emit(tx, row)
    return await get(core, actor, request_id)


_FROM, _TO = aliased(Mailbox), aliased(Mailbox)
_TAKER, _CLOSER, _AUTHOR = aliased(Account), aliased(Account), aliased(Account)


def _select() -> sa.Select:
    return (sa.select(SupportRequest, _FROM, _TO, _TAKER, _CLOSER, _AUTHOR, Patient)
            .join(_FROM, _FROM.id == SupportRequest.from_mailbox_id)
            .join(_TO, _TO.id == SupportRequest.to_mailbox_id)
            .outerjoin(_TAKER, _TAKER.id == SupportRequest.taken_by)
            .outerjoin(_CLOSER, _CLOSER.id == SupportRequest.closed_by)
            .outerjoin(_AUTHOR, _AUTHOR.id == SupportRequest.author_account_id)
            .outerjoin(Patient, Patient.id == SupportRequest.patient_id))


def _person(a: Account | None) -> dict[str, Any] | None:
    return None if a is None else {"account_id": a.id, "name": person_name(a)}


def _item(row: Any, sides: set[str]) -> dict[str, Any]:
    r, frm, to, taker, closer, author, patient = row
    return {"id": r.id, "state": r.state, "state_label": STATE_LABELS[r.state], "urgency": r.urgency,
            "urgency_label": URGENCIES.get(r.urgency, r.urgency), "reason": r.reason,
            "created_at": iso(r.created_at),
            "from": {"mailbox_id": frm.id, "address": frm.address, "name": frm.display_name},
            "to": {"mailbox_id": to.id, "address": to.address, "name": to.display_name},
            "author": _person(author), "taken_by": _person(taker), "taken_at": iso(r.taken_at),
            "closed_by": _person(closer), "closed_at": iso(r.closed_at),
            "patient": patients.patient_dict(patient) if patient is not None else None,
            "message_id": r.message_id, "conversation_id": r.conversation_id, "role": sorted(sides),
            "may_take": "received" in sides and r.state == "new",
            "may_close": r.state != "closed"}


async def get(core: Core, actor: Actor, request_id: int) -> dict[str, Any]:
    async with core.read() as s:
        _row, sides = await _load(s, actor, request_id)
        full = (await s.execute(_select().where(SupportRequest.id == request_id))).one()
    return _item(full, sides)


async def list_requests(core: Core, actor: Actor, *, role: str = "received", state: str | None = None,
                        limit: int = 100) -> dict[str, Any]:
    """``GET /support-requests?role=sent|received&state=``, newest first."""
    if role not in ("sent", "received"):
        raise Invalid("role : « sent » ou « received »")
    if state is not None and state not in STATES:
        raise Invalid("état : « new », « taken » ou « closed »")
    rows = await listing.by_side(core, actor, _select(), role=role, state=state, limit=limit,
                                 sides={"sent": SupportRequest.from_mailbox_id,
                                        "received": SupportRequest.to_mailbox_id},
                                 newest=SupportRequest.id, state_column=SupportRequest.state)
    items = [_item(row, sides) for row, sides in rows]
    return {"items": items}
