"""Tele-expertise tables (issue 14): the requests, each step of their exchange, and the billing
lines they create (one per act and code: a unique constraint makes billing twice impossible)."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from monsisra.store.models import UTC, Base, _now
from monsisra.store.types import Line, Prose


class Teleexpertise(Base):
    """A request from a requester's mailbox to an expert's (person or service) mailbox."""

    __tablename__ = "teleexpertises"
    __table_args__ = (sa.Index("ix_teleexpertises_expert_state", "expert_mailbox_id", "state", "id"),
                      sa.Index("ix_teleexpertises_requester_state", "requester_mailbox_id", "state", "id"),
                      # The 4-per-year rule reads (patient, requester, created_at).
                      sa.Index("ix_teleexpertises_patient_requester", "patient_id", "requester_account_id",
                               "created_at"))

    id: Mapped[int] = mapped_column(primary_key=True)
    requester_mailbox_id: Mapped[int] = mapped_column(sa.ForeignKey("mailboxes.id"))
    requester_account_id: Mapped[int] = mapped_column(sa.ForeignKey("accounts.id"))
    expert_mailbox_id: Mapped[int] = mapped_column(sa.ForeignKey("mailboxes.id"))
    patient_id: Mapped[int] = mapped_column(sa.ForeignKey("patients.id"))
    question: Mapped[str] = mapped_column(Prose, default="")
    consent_by: Mapped[str] = mapped_column(Line(16), default="patient")
    consent_at: Mapped[datetime] = mapped_column(UTC)
    billing_number: Mapped[str] = mapped_column(Line(9))
    state: Mapped[str] = mapped_column(Line(20), default="submitted")
    created_at: Mapped[datetime] = mapped_column(UTC, default=_now)
    updated_at: Mapped[datetime] = mapped_column(UTC, default=_now)
    due_at: Mapped[datetime | None] = mapped_column(UTC)
    reminded_at: Mapped[datetime | None] = mapped_column(UTC)
    assigned_to: Mapped[int | None] = mapped_column(sa.ForeignKey("accounts.id"))
    assigned_at: Mapped[datetime | None] = mapped_column(UTC)
    answered_by: Mapped[int | None] = mapped_column(sa.ForeignKey("accounts.id"))
    answered_at: Mapped[datetime | None] = mapped_column(UTC)
    expert_billing_number: Mapped[str | None] = mapped_column(Line(9))
    closed_at: Mapped[datetime | None] = mapped_column(UTC)
    decline_reason: Mapped[str | None] = mapped_column(Prose)
    message_id: Mapped[int | None] = mapped_column(sa.ForeignKey("messages.id"))
    report_message_id: Mapped[int | None] = mapped_column(sa.ForeignKey("messages.id"))
    report_attachment_id: Mapped[str | None] = mapped_column(Line(64))
    summary_message_id: Mapped[int | None] = mapped_column(sa.ForeignKey("messages.id"))


class TeleexpertiseStep(Base):
    """One step of the exchange: submitted, elements requested/provided, answer, decline…"""

    __tablename__ = "teleexpertise_steps"

    id: Mapped[int] = mapped_column(primary_key=True)
    teleexpertise_id: Mapped[int] = mapped_column(sa.ForeignKey("teleexpertises.id", ondelete="CASCADE"),
                                                  index=True)
    action: Mapped[str] = mapped_column(Line(20))
    account_id: Mapped[int | None] = mapped_column(sa.ForeignKey("accounts.id"))
    author_name: Mapped[str] = mapped_column(Line(200), default="")
    body: Mapped[str] = mapped_column(Prose, default="")
    attachments: Mapped[list] = mapped_column(sa.JSON, default=list)
    message_id: Mapped[int | None] = mapped_column(sa.ForeignKey("messages.id"))
    created_at: Mapped[datetime] = mapped_column(UTC, default=_now)


class BillingLine(Base):
    """An act to bill: RQD for the requester, TE2 for the professional who answered."""

    __tablename__ = "billing_lines"
    __table_args__ = (sa.UniqueConstraint("teleexpertise_id", "code", name="uq_billing_lines_act_code"),
                      sa.Index("ix_billing_lines_account_date", "account_id", "act_date"))

    id: Mapped[int] = mapped_column(primary_key=True)
    teleexpertise_id: Mapped[int] = mapped_column(sa.ForeignKey("teleexpertises.id"))
    code: Mapped[str] = mapped_column(Line(4))
    amount_eur: Mapped[str] = mapped_column(Line(10))
    account_id: Mapped[int] = mapped_column(sa.ForeignKey("accounts.id"))
    act_date: Mapped[str] = mapped_column(Line(10))  # YYYY-MM-DD (Paris)
    patient_nir: Mapped[str] = mapped_column(Line(15))
    billing_number: Mapped[str] = mapped_column(Line(9))
    created_at: Mapped[datetime] = mapped_column(UTC, default=_now)


class ServiceExpert(Base):
    """A service mailbox's expert declaration, made by its managers (a person's is on their card)."""

    __tablename__ = "service_experts"

    mailbox_id: Mapped[int] = mapped_column(sa.ForeignKey("mailboxes.id", ondelete="CASCADE"), primary_key=True)
    declaration: Mapped[dict] = mapped_column(sa.JSON)
    updated_at: Mapped[datetime] = mapped_column(UTC, default=_now)
    updated_by: Mapped[int | None] = mapped_column(sa.ForeignKey("accounts.id"))
