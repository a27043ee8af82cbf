"""The lifecycle verbs of a tele-expertise (contract of issue 14):

submitted → (request-elements ⇄ provide-elements) → answered → closed; also declined (reason)
and cancelled (by the requester, before the answer); assign is « Je prends en charge » by one
member of the expert's mailbox, shown to the others. A step with a text or documents also goes
as a letter to the other side (their documents become readable there). Each step is one
transaction: the guarded state change, its letter (answering: the two billing lines, RQD and TE2,
unique per act, and the report; closing: the summary) and its events, published after the commit.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

import monsisra.services.teleexpertise.report as report
from monsisra.domain import teleexpertise as rules
from monsisra.domain.clock import in_paris, iso, utcnow
from monsisra.domain.delegation import Right
from monsisra.domain.model import Category
from monsisra.domain.text import clean_multiline
from monsisra.services import audit, mailboxes, messages
from monsisra.services.core import Actor, Core
from monsisra.services.errors import Conflict, Forbidden, Invalid
from monsisra.services.teleexpertise.common import CONTEXT, account_name, answer_days, emit, load, steps_of
from monsisra.services.teleexpertise.requests import get
from monsisra.store.models import Account, Mailbox, Patient
from monsisra.store.teleexpertise import BillingLine, Teleexpertise, TeleexpertiseStep

MAX_BODY = 20_000
STEP_SUBJECTS = {"request_elements": "Téléexpertise : éléments demandés",
                 "provide_elements": "Téléexpertise : éléments fournis",
                 "answer": "Téléexpertise : réponse de l'expert", "decline": "Téléexpertise refusée"}
SIDE_REFUSALS = {"expert": "seul l'expert ou un membre du service expert peut {verb} cette téléexpertise",
                 "requester": "seul le demandeur peut {verb} cette téléexpertise"}


def _clean(text: str | None, label: str, required: bool) -> str:
    value = clean_multiline(text or "").strip()
    if required and not value:
        raise Invalid(f"{label} obligatoire", errors={"body": "obligatoire"})
    if len(value) > MAX_BODY:
        raise Invalid(f"{label} trop long (au plus {MAX_BODY} caractères)")
    return value


async def _check(s: AsyncSession, actor: Actor, row: Teleexpertise, sides: set[str], action: str) -> int:
    """The mailbox the actor acts from; 403 (French) for the wrong side, 409 for the wrong state."""
    side, _froms, _to = rules.TRANSITIONS[action]
    verb = rules.ACTION_LABELS[action]
    if side != "either" and side not in sides:
        raise Forbidden(SIDE_REFUSALS[side].format(verb=verb))
    acting = side if side != "either" else ("expert" if "expert" in sides else "requester")
    box_id = row.expert_mailbox_id if acting == "expert" else row.requester_mailbox_id
    await mailboxes.require_right(s, actor, box_id, Right.SEND)
    try:
        rules.next_state(action, row.state)
    except ValueError as exc:
        raise Conflict(str(exc), state=row.state) from None
    if action == "assign" and row.assigned_to is not None:
        who = await s.get(Account, row.assigned_to)
        raise Conflict(f"téléexpertise déjà prise en charge par {account_name(who)}", state=row.state)
    if action in ("answer", "request_elements", "decline") and row.assigned_to not in (None, actor.account_id):
        who = await s.get(Account, row.assigned_to)
        raise Conflict(f"téléexpertise prise en charge par {account_name(who)} : c'est à lui ou elle d'agir",
                       state=row.state)
    return box_id


async def _last_expert_number(s: AsyncSession, account_id: int) -> str | None:
    return await s.scalar(sa.select(BillingLine.billing_number).where(
        BillingLine.account_id == account_id, BillingLine.code == "TE2").order_by(BillingLine.id.desc()).limit(1))


async def act(core: Core, actor: Actor, te_id: int, action: str, *, body: str | None = None,
              attachments: list[str] | None = None, billing_number: str | None = None) -> dict[str, Any]:
    """One transition; validation first (nothing written on a refusal), then one transaction."""
    attachments = list(attachments or [])
    required = action in ("request_elements", "answer", "decline")
    label = {"decline": "motif du refus", "answer": "réponse", "request_elements": "demande d'éléments",
             "provide_elements": "éléments"}.get(action, "texte")
    text = _clean(body, label, required)
    if action == "provide_elements" and not text and not attachments:
        raise Invalid("éléments : un texte ou une pièce jointe est attendu")
    async with core.read() as s:
        row, sides = await load(s, actor, te_id)
        box_id = await _check(s, actor, row, sides, action)
        me = await s.get(Account, actor.account_id)
        number = None
        if action == "answer":
            code = rules.profession_code(me.profession_code, me.profession) if me else None
            if not rules.may_answer(code):
                raise Forbidden("seuls les médecins et les sages-femmes peuvent répondre à une téléexpertise")
            number = billing_number or await _last_expert_number(s, actor.account_id)
            error = rules.billing_number_error(number)
            if error:
                raise Invalid(f"{error} (celui de l'expert qui répond)", errors={"billing_number": error})
            number = rules.normalize_billing_number(number or "")
        other = row.requester_mailbox_id if box_id == row.expert_mailbox_id else row.expert_mailbox_id
        other_box = await s.get(Mailbox, other)
        parent = row.message_id
        days = await answer_days(s, await s.get(Mailbox, row.expert_mailbox_id))
    now = utcnow()
    # The PDFs are rendered before the transaction (no write lock held while fpdf works); a step
    # that then loses its race removes them again.
    pdf_blob = await _report_pdf(core, te_id, actor, text, now) if action == "answer" else None
    summary_blob = await _summary_pdf(core, te_id, me, now) if action == "close" else None
    try:
        async with core.write() as tx:
            s = tx.session
            row, sides = await load(s, actor, te_id, lock=True)
            await _check(s, actor, row, sides, action)
            new_state = rules.next_state(action, row.state)
            values: dict[str, Any] = {"state": new_state, "updated_at": now}
            if action == "assign":
                values.update(assigned_to=actor.account_id, assigned_at=now)
            elif action == "answer":
                values.update(answered_by=actor.account_id, answered_at=now, expert_billing_number=number)
                if row.assigned_to is None:
                    values.update(assigned_to=actor.account_id, assigned_at=now)
            elif action == "provide_elements":
                # The expert's expected answer time starts again with the elements (and so may a reminder).
                values.update(due_at=now + timedelta(days=days), reminded_at=None)
            elif action in ("close", "cancel", "decline"):
                values.update(closed_at=now)
                if action == "decline":
                    values["decline_reason"] = text
            # Guarded update: of two concurrent steps from the same state exactly one wins.
            done = await s.execute(sa.update(Teleexpertise).where(Teleexpertise.id == row.id,
                                                                 Teleexpertise.state == row.state)
                                   .values(**values))
            if done.rowcount != 1:
                raise Conflict("la téléexpertise vient de changer d'état : rechargez-la")
            await s.refresh(row)
            # The step's letter to the other side joins this transaction: a step that loses leaves no letter.
            step_message = None
            if (text or attachments) and action in STEP_SUBJECTS:
                step_message = await messages.send(core, actor, messages.Compose(
                    from_mailbox=box_id, to=[other_box.address], subject=STEP_SUBJECTS[action], body=text,
                    category=Category.TELEEXPERTISE, attachments=attachments, in_reply_to=parent,
                    context_type=CONTEXT, context_id=te_id), tx=tx)
            s.add(TeleexpertiseStep(teleexpertise_id=row.id, action=action, account_id=actor.account_id,
                                    author_name=account_name(me)[:200], body=text,
                                    attachments=[a["id"] for a in (step_message or {}).get("attachments") or []],
                                    message_id=(step_message or {}).get("id"), created_at=now))
            if action == "answer":
                await _bill(s, row, actor.account_id, number or "", now)
                await _send_report(core, tx, actor, row, me, pdf_blob, now)
            elif action == "close":
                await _send_summary(core, tx, actor, row, me, summary_blob, now)
            audit.record(s, actor.account_id, f"teleexpertise.{action}", object_type="teleexpertise", object_id=row.id,
                         patient_id=row.patient_id, mailbox_id=box_id, client=actor.client,
                         detail={"state": new_state})
            await emit(tx, row)
    except BaseException:
        # Lost its race (or failed): the PDFs rendered for it are nobody's.
        await report.discard_unused(core, pdf_blob, summary_blob)
        raise
    return await get(core, actor, te_id)


async def _bill(s: AsyncSession, row: Teleexpertise, expert_account: int, expert_number: str, now: datetime) -> None:
    """The two lines of the act; a second bill of the same act breaks the unique constraint."""
    patient = await s.get(Patient, row.patient_id)
    assert patient is not None
    day = in_paris(now).date().isoformat()
    exists = await s.scalar(sa.select(BillingLine.id).where(BillingLine.teleexpertise_id == row.id).limit(1))
    if exists is not None:
        raise Conflict("cette téléexpertise est déjà facturée")
    s.add_all([BillingLine(teleexpertise_id=row.id, code="RQD", amount_eur=rules.RQD_EUR,
                           account_id=row.requester_account_id, act_date=day, patient_nir=patient.ins,
                           billing_number=row.billing_number, created_at=now),
               BillingLine(teleexpertise_id=row.id, code="TE2", amount_eur=rules.TE2_EUR, account_id=expert_account,
                           act_date=day, patient_nir=patient.ins, billing_number=expert_number, created_at=now)])
    await s.flush()


async def _report_pdf(core: Core, te_id: int, actor: Actor, answer: str, now: datetime) -> tuple[str, int]:
    async with core.read() as s:
        row = await s.get(Teleexpertise, te_id)
        assert row is not None
        patient = await s.get(Patient, row.patient_id)
        requester = await s.get(Account, row.requester_account_id)
        expert = await s.get(Account, actor.account_id)
        req_box = await s.get(Mailbox, row.requester_mailbox_id)
        exp_box = await s.get(Mailbox, row.expert_mailbox_id)
    header = [("Patient", report.patient_line(patient)),
              ("Demandeur", report.professional(account_name(requester), requester.national_id, req_box)),
              ("Expert", report.professional(account_name(expert), expert.national_id, exp_box)),
              ("Demande du", report.when(row.created_at)), ("Réponse du", report.when(now)),
              ("Consentement", f"donné par {'le patient' if row.consent_by == 'patient' else 'son représentant'}"
                               f" le {report.when(row.consent_at)}")]
    pdf = report.render_pdf("Compte rendu de téléexpertise", header, report.report_sections(row.question, answer))
    return await report.store_pdf(core, pdf)


async def _send_report(core: Core, tx: Any, actor: Actor, row: Teleexpertise, me: Account | None,
                       blob: tuple[str, int] | None, now: datetime) -> None:
    s = tx.session
    exp_box = await s.get(Mailbox, row.expert_mailbox_id)
    req_box = await s.get(Mailbox, row.requester_mailbox_id)
    assert blob is not None and exp_box is not None and req_box is not None
    body = ("Compte rendu de téléexpertise\n\nL'expert a répondu à votre demande de téléexpertise. Le compte "
            "rendu (patient, question, réponse, professionnels, dates) est joint en PDF ; il est aussi "
            "rangé dans le dossier partagé du patient.")
    message_id, att_id = await report.deliver(
        core, tx, actor, sender=exp_box, sender_name=account_name(me), to=[req_box],
        subject="Compte rendu de téléexpertise", body=body, patient_id=row.patient_id, blob=blob,
        filename=f"Compte rendu teleexpertise {row.id}.pdf", te_id=row.id, now=now)
    row.report_message_id, row.report_attachment_id = message_id, att_id


async def _summary_pdf(core: Core, te_id: int, me: Account | None, now: datetime) -> tuple[str, int]:
    """The summary of the exchange (every step, in order, ending with this closing)."""
    async with core.read() as s:
        row = await s.get(Teleexpertise, te_id)
        assert row is not None
        steps = await steps_of(s, te_id)
        patient = await s.get(Patient, row.patient_id)
    steps.append({"action": "close", "author": account_name(me), "body": "", "attachments": [], "at": iso(now)})
    pdf = report.render_pdf("Synthèse de la téléexpertise", [("Patient", report.patient_line(patient)),
                                                             ("Question", row.question[:300])],
                            report.summary_sections(steps))
    return await report.store_pdf(core, pdf)


async def _send_summary(core: Core, tx: Any, actor: Actor, row: Teleexpertise, me: Account | None,
                        blob: tuple[str, int] | None, now: datetime) -> None:
    """Closing sends both sides the summary of the exchange, in the closing transaction."""
    s = tx.session
    assert blob is not None
    sender = await s.get(Mailbox, await _sender_side(s, actor, row))
    boxes = [await s.get(Mailbox, row.requester_mailbox_id), await s.get(Mailbox, row.expert_mailbox_id)]
    message_id, _ = await report.deliver(
        core, tx, actor, sender=sender, sender_name=account_name(me), to=[b for b in boxes if b is not None],
        subject="Synthèse de la téléexpertise", body="Synthèse de la téléexpertise close : l'échange complet "
        "est joint en PDF.", patient_id=row.patient_id, blob=blob,
        filename=f"Synthese teleexpertise {row.id}.pdf", te_id=row.id, now=now)
    row.summary_message_id = message_id


async def _sender_side(s: AsyncSession, actor: Actor, row: Teleexpertise) -> int:
    mine = set(await mailboxes.usable_mailbox_ids(s, actor.account_id))
    return row.requester_mailbox_id if row.requester_mailbox_id in mine else row.expert_mailbox_id
