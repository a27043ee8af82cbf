"""Making a tele-expertise request, reading one, listing them (``POST/GET /teleexpertises``).

Eligibility is checked and explained before anything is written: the requester's profession may
request, a personal expert's may answer, the patient has a NIR (billing), consent was given, the
numéro AM is valid, and fewer than 4 requests for this patient by this requester in 12 months.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from monsisra.domain import teleexpertise as rules
from monsisra.domain.addresses import normalize_address
from monsisra.domain.clock import utcnow
from monsisra.domain.ins import is_nia
from monsisra.domain.model import Category
from monsisra.domain.text import clean_multiline
from monsisra.services import audit, listing, messages, patients
from monsisra.services.core import Actor, Core
from monsisra.services.errors import Conflict, Forbidden, Invalid, NotFound
from monsisra.services.teleexpertise.common import (
    CONTEXT,
    account_name,
    answer_days,
    declaration,
    emit,
    item,
    load,
    select_rows,
    steps_of,
)
from monsisra.store.models import Account, Mailbox, Message, Patient
from monsisra.store.teleexpertise import Teleexpertise, TeleexpertiseStep

MAX_QUESTION = 20_000
CONSENT_BY = {"patient": "le patient", "representative": "son représentant"}
COUNTED = ("submitted", "elements_requested", "answered", "closed")


@dataclass
class NewTeleexpertise:
    expert: str
    patient: patients.PatientRef | None
    consent: dict[str, Any] | None
    question: str
    billing_number: str
    attachments: list[str] = field(default_factory=list)


def _consent(raw: dict[str, Any] | None) -> tuple[str, datetime]:
    if not raw or raw.get("given") is not True:
        raise Invalid("consentement du patient requis : une téléexpertise ne se demande qu'avec l'accord du "
                      "patient (ou de son représentant)", errors={"consent": "consentement requis"})
    by = raw.get("by") or "patient"
    if by not in CONSENT_BY:
        raise Invalid("consentement : « by » vaut « patient » ou « representative »", errors={"consent": "by"})
    try:
        at = datetime.fromisoformat(str(raw.get("at") or "").replace("Z", "+00:00"))
    except ValueError:
        raise Invalid("consentement : date et heure (« at ») au format ISO attendues",
                      errors={"consent": "at"}) from None
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    if at > utcnow() + timedelta(minutes=10):
        raise Invalid("consentement : la date du consentement est dans le futur", errors={"consent": "at"})
    return by, at


def check_request(req: NewTeleexpertise) -> tuple[patients.PatientRef, str, datetime, str, str]:
    """Everything that needs no database, in the order a form shows it (French errors)."""
    if req.patient is None or not (req.patient.ins or "").strip():
        raise Invalid("patient : INS obligatoire (le NIR est requis pour la facturation)",
                      errors={"patient": "INS obligatoire"})
    ref = patients.check(req.patient)
    if is_nia(ref.ins, ref.oid):
        raise Invalid("patient : un NIA ne permet pas de facturer la téléexpertise, le NIR du patient est requis",
                      errors={"patient": "NIR requis"})
    by, at = _consent(req.consent)
    question = clean_multiline(req.question or "").strip()
    if not question:
        raise Invalid("question clinique obligatoire", errors={"question": "obligatoire"})
    if len(question) > MAX_QUESTION:
        raise Invalid(f"question trop longue (au plus {MAX_QUESTION} caractères)", errors={"question": "trop long"})
    error = rules.billing_number_error(req.billing_number)
    if error:
        raise Invalid(error, errors={"billing_number": error})
    return ref, by, at, question, rules.normalize_billing_number(req.billing_number)


async def expert_box(s: AsyncSession, address: str) -> Mailbox:
    norm = normalize_address(address or "")
    if norm is None:
        raise Invalid("expert : adresse mal formée", errors={"expert": "adresse mal formée"})
    box = await s.scalar(sa.select(Mailbox).where(Mailbox.address == norm, Mailbox.active.is_(True)))
    if box is None or not box.is_expert:
        reason = "cette adresse n'est pas celle d'un expert déclaré en téléexpertise"
        raise Invalid(f"expert : {reason}", errors={"expert": reason})
    if box.owner_account_id:
        owner = await s.get(Account, box.owner_account_id)
        code = rules.profession_code(owner.profession_code, owner.profession) if owner else None
        if not rules.may_answer(code):
            raise Invalid("expert : seuls les médecins et les sages-femmes peuvent répondre à une téléexpertise",
                          errors={"expert": "profession non éligible"})
    return box


async def expert_card(core: Core, actor: Actor, address: str) -> dict[str, Any]:
    """What an expert offers (« fiche d'expertise »): description, documents to provide, urgent
    contact, specialties and expected answer time; 404 for an address that is no declared expert."""
    async with core.read() as s:
        try:
            box = await expert_box(s, address)
        except Invalid:
            raise NotFound("expert introuvable") from None
        decl = await declaration(s, box)
        days = await answer_days(s, box)
    return {"address": box.address, "name": box.display_name, "kind": box.kind,
            "description": decl.get("description") or box.description or "",
            "documents": decl.get("documents") or "", "urgent_contact": decl.get("urgent_contact") or "",
            "specialties": decl.get("specialties") or [], "answer_days": days}


async def _requester_box(s: AsyncSession, actor: Actor) -> tuple[Account, Mailbox]:
    account = await s.get(Account, actor.account_id)
    assert account is not None
    code = rules.profession_code(account.profession_code, account.profession)
    if not rules.may_request(code):
        raise Forbidden(f"votre profession ({account.profession or 'non renseignée'}) ne peut pas demander de "
                        f"téléexpertise : seuls les {rules.requesters_text()} le peuvent")
    box = await s.scalar(sa.select(Mailbox).where(Mailbox.owner_account_id == actor.account_id,
                                                  Mailbox.kind == "PER", Mailbox.active.is_(True))
                         .order_by(Mailbox.id))
    if box is None:
        raise Forbidden("une boîte aux lettres personnelle est nécessaire pour demander une téléexpertise")
    return account, box


async def count_recent(s: AsyncSession, patient_id: int, account_id: int) -> int:
    since = utcnow() - timedelta(days=365)
    return int(await s.scalar(sa.select(sa.func.count()).select_from(Teleexpertise).where(
        Teleexpertise.patient_id == patient_id, Teleexpertise.requester_account_id == account_id,
        Teleexpertise.created_at >= since, Teleexpertise.state.in_(COUNTED))) or 0)


def _too_many() -> Conflict:
    return Conflict(f"ce patient a déjà bénéficié de {rules.MAX_PER_PATIENT_YEAR} téléexpertises demandées par "
                    f"vous sur les 12 derniers mois : une cinquième n'est pas possible (règle de l'Assurance "
                    f"Maladie)")


async def create(core: Core, actor: Actor, req: NewTeleexpertise) -> dict[str, Any]:
    """``POST /teleexpertises``: the letter into the expert's mailbox, then the request (201)."""
    ref, by, at, question, number = check_request(req)
    async with core.read() as s:
        account, from_box = await _requester_box(s, actor)
        box = await expert_box(s, req.expert)
        if box.id == from_box.id:
            raise Invalid("on ne se demande pas une téléexpertise à soi-même")
        known = await s.scalar(sa.select(Patient.id).where(Patient.ins == ref.ins))
        if known is not None and await count_recent(s, known, actor.account_id) >= rules.MAX_PER_PATIENT_YEAR:
            raise _too_many()
        days = await answer_days(s, box)
    subject = f"Demande de téléexpertise — {ref.family_name} {ref.given_names}".strip()
    body = (f"{question}\n\nConsentement donné par {CONSENT_BY[by]} le {at.strftime('%d/%m/%Y %H:%M')} (UTC)."
            f"\nDemandeur : {account_name(account)}.")
    now = utcnow()
    async with core.write() as tx:
        s = tx.session
        if known is not None:
            # Requests for one patient count one at a time, the patient's row locked first: two
            # sent together on PostgreSQL would otherwise both count 3 and make a fifth. NO KEY
            # UPDATE: rows that merely refer to the patient (audit entries written while this is
            # held) must not wait for it, or the audit chain's head lock closes a deadlock.
            await s.execute(sa.select(Patient.id).where(Patient.id == known).with_for_update(key_share=True))
            if await count_recent(s, known, actor.account_id) >= rules.MAX_PER_PATIENT_YEAR:
                raise _too_many()
        # The letter and the request commit together (a refused request leaves no letter).
        letter = await messages.send(core, actor, messages.Compose(
            from_mailbox=from_box.id, to=[box.address], subject=subject[:200], body=body,
            category=Category.TELEEXPERTISE, attachments=list(req.attachments), patient=ref,
            context_type=CONTEXT), tx=tx)
        message = await s.get(Message, letter["id"])
        assert message is not None and message.patient_id is not None
        if await count_recent(s, message.patient_id, actor.account_id) >= rules.MAX_PER_PATIENT_YEAR:
            raise _too_many()
        row = Teleexpertise(requester_mailbox_id=from_box.id, requester_account_id=actor.account_id,
                            expert_mailbox_id=box.id, patient_id=message.patient_id, question=question,
                            consent_by=by, consent_at=at, billing_number=number, state="submitted",
                            created_at=now, updated_at=now, due_at=now + timedelta(days=days),
                            message_id=message.id)
        s.add(row)
        await s.flush()
        message.context_id = row.id
        s.add(TeleexpertiseStep(teleexpertise_id=row.id, action="submit", account_id=actor.account_id,
                                author_name=account_name(account)[:200], body=question,
                                attachments=[a["id"] for a in letter.get("attachments") or []],
                                message_id=message.id, created_at=now))
        audit.record(s, actor.account_id, "teleexpertise.create", object_type="teleexpertise", object_id=row.id,
                     patient_id=row.patient_id, mailbox_id=from_box.id, client=actor.client,
                     detail={"expert": box.address})
        te_id = row.id
        await emit(tx, row)
    return await get(core, actor, te_id)


async def get(core: Core, actor: Actor, te_id: int, *, with_steps: bool = True) -> dict[str, Any]:
    """``GET /teleexpertises/{id}`` (404 outside both sides); the access is audited."""
    async with core.read() as s:
        _row, sides = await load(s, actor, te_id)
        full = (await s.execute(select_rows().where(Teleexpertise.id == te_id))).one()
        out = item(full, sides)
        if with_steps:
            out["steps"] = await steps_of(s, te_id)
    await audit.record_now(core, [audit.entry(actor.account_id, "teleexpertise.view", object_type="teleexpertise",
                                              object_id=te_id, patient_id=out["patient"]["id"],
                                              client=actor.client)])
    return out


async def list_requests(core: Core, actor: Actor, *, role: str = "requester", state: str | None = None,
                        limit: int = 100) -> dict[str, Any]:
    """``GET /teleexpertises?role=requester|expert&state=``, newest first."""
    if role not in ("requester", "expert"):
        raise Invalid("rôle : « requester » ou « expert »")
    if state is not None and state not in rules.STATES:
        raise Invalid("état inconnu : " + ", ".join(rules.STATES))
    rows = await listing.by_side(core, actor, select_rows(), role=role, state=state, limit=limit,
                                 sides={"requester": Teleexpertise.requester_mailbox_id,
                                        "expert": Teleexpertise.expert_mailbox_id},
                                 newest=Teleexpertise.id, state_column=Teleexpertise.state)
    items = [item(full, sides) for full, sides in rows]
    return {"items": items}
