"""Billing lines of tele-expertise acts (« Facturation »), their CSV export, an expert service's
monthly statistics, and the reminder when the expected answer time has passed."""

from __future__ import annotations

import csv
import io
import re
import statistics
from collections.abc import Callable
from datetime import datetime
from typing import Any

import sqlalchemy as sa

import monsisra.services.teleexpertise.report as report
from monsisra.domain.clock import in_paris, utcnow
from monsisra.services import audit
from monsisra.services.core import Actor, Core
from monsisra.services.errors import Invalid, NotFound
from monsisra.services.teleexpertise.common import emit
from monsisra.store.models import Mailbox, MailboxAccess, Patient
from monsisra.store.teleexpertise import BillingLine, Teleexpertise, TeleexpertiseStep

CSV_COLUMNS = ["date", "code", "amount_eur", "patient_nir", "billing_number", "teleexpertise_id", "account_id"]


def check_month(month: str | None) -> str:
    if not month or not re.fullmatch(r"\d{4}-(0[1-9]|1[0-2])", month):
        raise Invalid("mois attendu au format AAAA-MM (par exemple 2026-03)", errors={"month": "AAAA-MM"})
    return month


def _line(b: BillingLine) -> dict[str, Any]:
    return {"code": b.code, "amount_eur": float(b.amount_eur), "date": b.act_date, "patient_nir": b.patient_nir,
            "teleexpertise_id": b.teleexpertise_id, "billing_number": b.billing_number}


async def lines(core: Core, actor: Actor, month: str) -> dict[str, Any]:
    """``GET /billing?month=``: the acting professional's own lines of the month (audited: NIRs)."""
    month = check_month(month)
    async with core.read() as s:
        rows = (await s.scalars(sa.select(BillingLine).where(
            BillingLine.account_id == actor.account_id, BillingLine.act_date.startswith(month))
            .order_by(BillingLine.act_date, BillingLine.id))).all()
    items = [_line(b) for b in rows]
    if items:
        await audit.record_now(core, [audit.entry(actor.account_id, "billing.view", object_type="billing",
                                                  object_id=month, client=actor.client,
                                                  detail={"lines": len(items)})])
    return {"month": month, "items": items, "total_eur": sum(i["amount_eur"] for i in items)}


async def export_csv(core: Core, month: str, progress: Callable[[int, int], None] | None = None) -> str:
    """Every billing line of the month as CSV (the operator's export, ``monsisra billing export``)."""
    month = check_month(month)
    async with core.read() as s:
        rows = (await s.scalars(sa.select(BillingLine).where(BillingLine.act_date.startswith(month))
                                .order_by(BillingLine.act_date, BillingLine.id))).all()
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for i, b in enumerate(rows, 1):
        writer.writerow([b.act_date, b.code, b.amount_eur, b.patient_nir, b.billing_number, b.teleexpertise_id,
                         b.account_id])
        if progress is not None and (i % 500 == 0 or i == len(rows)):
            progress(i, len(rows))
    return out.getvalue()


async def stats(core: Core, actor: Actor, mailbox_id: int | None = None) -> dict[str, Any]:
    """``GET /teleexpertises/stats``: per month, received / answered / declined and the median
    answer time (hours) of the expert mailboxes the actor uses (or the one asked for)."""
    async with core.read() as s:
        mine = set(await s.scalars(sa.select(MailboxAccess.mailbox_id).where(
            MailboxAccess.account_id == actor.account_id)))
        if mailbox_id is not None:
            if mailbox_id not in mine:
                raise NotFound("boîte aux lettres introuvable")
            boxes = {mailbox_id}
        else:
            boxes = mine
        rows = (await s.execute(sa.select(Teleexpertise.created_at, Teleexpertise.state, Teleexpertise.answered_at)
                                .where(Teleexpertise.expert_mailbox_id.in_(boxes or {-1})))).all()
    months: dict[str, dict[str, Any]] = {}
    delays: dict[str, list[float]] = {}
    for created, state, answered in rows:
        key = created.strftime("%Y-%m")
        m = months.setdefault(key, {"month": key, "received": 0, "answered": 0, "declined": 0})
        m["received"] += 1
        if answered is not None:
            m["answered"] += 1
            delays.setdefault(key, []).append((answered - created).total_seconds() / 3600)
        if state == "declined":
            m["declined"] += 1
    items = []
    for key in sorted(months, reverse=True):
        m = months[key]
        d = delays.get(key)
        m["median_answer_hours"] = round(statistics.median(d), 2) if d else None
        items.append(m)
    return {"items": items}


async def remind_overdue(core: Core, limit: int = 200, now: datetime | None = None) -> int:
    """A sweep (services/maintenance.py): each request still awaiting the expert past its expected
    answer time is reminded once: a step, a letter into the expert's mailbox (from the requester's,
    so it also sits in their « Envoyés »; the notification worker tells members who are away) and
    a live event to both sides. A second sweep finds nothing. Returns how many were reminded."""
    now = now or utcnow()
    reminded = 0
    async with core.write() as tx:
        s = tx.session
        rows = (await s.scalars(sa.select(Teleexpertise).where(
            Teleexpertise.state == "submitted", Teleexpertise.due_at < now, Teleexpertise.reminded_at.is_(None))
            .order_by(Teleexpertise.id).limit(limit))).all()
        for row in rows:
            # Guarded: of two sweeps (two processes) only one reminds.
            done = await s.execute(sa.update(Teleexpertise).where(
                Teleexpertise.id == row.id, Teleexpertise.state == "submitted",
                Teleexpertise.reminded_at.is_(None)).values(reminded_at=now))
            if done.rowcount != 1:
                continue
            await s.refresh(row)
            req_box = await s.get(Mailbox, row.requester_mailbox_id)
            exp_box = await s.get(Mailbox, row.expert_mailbox_id)
            patient = await s.get(Patient, row.patient_id)
            assert req_box is not None and exp_box is not None and patient is not None
            since = in_paris(row.due_at).strftime("%d/%m/%Y %H:%M") if row.due_at else "—"
            text = (f"Relance : la demande de téléexpertise du {in_paris(row.created_at).strftime('%d/%m/%Y')} "
                    f"pour {patient.family_name} {patient.given_names}".rstrip() + " attend votre réponse ; le délai "
                    f"de réponse annoncé est dépassé depuis le {since}.\n\n"
                    f"Question : {row.question[:500]}\n\n"
                    f"Pour répondre : {core.settings.base_url}/teleexpertises/{row.id}")
            s.add(TeleexpertiseStep(teleexpertise_id=row.id, action="remind", account_id=None,
                                    author_name="MonSisra", created_at=now,
                                    body="Relance : le délai de réponse annoncé par l'expert est dépassé.",
                                    attachments=[]))
            await report.deliver(core, tx, None, sender=req_box, sender_name=f"MonSisra pour {req_box.display_name}",
                                 to=[exp_box], subject=f"Relance : téléexpertise n° {row.id} en retard",
                                 body=text, patient_id=row.patient_id, blob=None, filename="", te_id=row.id,
                                 now=now)
            await emit(tx, row)
            reminded += 1
    return reminded
