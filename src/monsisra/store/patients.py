"""Patient tables (issue 13): the care team (« acteurs de la prise en charge »), the
professionals who registered a patient, and support requests to resource teams.

The patient itself is ``models.Patient``; messages point at it through ``messages.patient_id``.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from monsisra.store.models import UTC, Base, _now
from monsisra.store.types import Line, Prose


class CareTeamMember(Base):
    """A professional who declared they follow a patient: one row per (patient, account)."""

    __tablename__ = "care_team"

    patient_id: Mapped[int] = mapped_column(sa.ForeignKey("patients.id", ondelete="CASCADE"), primary_key=True)
    # The account's patients (« mes patients », the icons of a list) read by this index.
    account_id: Mapped[int] = mapped_column(sa.ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True,
                                            index=True)
    since: Mapped[datetime] = mapped_column(UTC, default=_now)


class PatientContact(Base):
    """A professional who registered (``POST /patients``) a patient: enough to see the identity,
    never the record."""

    __tablename__ = "patient_contacts"

    patient_id: Mapped[int] = mapped_column(sa.ForeignKey("patients.id", ondelete="CASCADE"), primary_key=True)
    account_id: Mapped[int] = mapped_column(sa.ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True,
                                            index=True)
    created_at: Mapped[datetime] = mapped_column(UTC, default=_now)


class SupportRequest(Base):
    """A « demande d'appui » from a mailbox to a resource team's mailbox: new → taken → closed."""

    __tablename__ = "support_requests"
    __table_args__ = (sa.Index("ix_support_requests_to_state", "to_mailbox_id", "state", "id"),
                      sa.Index("ix_support_requests_from_state", "from_mailbox_id", "state", "id"))

    id: Mapped[int] = mapped_column(primary_key=True)
    from_mailbox_id: Mapped[int] = mapped_column(sa.ForeignKey("mailboxes.id"))
    to_mailbox_id: Mapped[int] = mapped_column(sa.ForeignKey("mailboxes.id"))
    author_account_id: Mapped[int | None] = mapped_column(sa.ForeignKey("accounts.id"))
    patient_id: Mapped[int | None] = mapped_column(sa.ForeignKey("patients.id"), index=True)
    reason: Mapped[str] = mapped_column(Prose, default="")
    urgency: Mapped[str] = mapped_column(Line(8), default="normal")
    state: Mapped[str] = mapped_column(Line(8), default="new")
    created_at: Mapped[datetime] = mapped_column(UTC, default=_now)
    taken_by: Mapped[int | None] = mapped_column(sa.ForeignKey("accounts.id"))
    taken_at: Mapped[datetime | None] = mapped_column(UTC)
    closed_by: Mapped[int | None] = mapped_column(sa.ForeignKey("accounts.id"))
    closed_at: Mapped[datetime | None] = mapped_column(UTC)
    # The letter that carried it into the team's mailbox (category « support »).
    message_id: Mapped[int | None] = mapped_column(sa.ForeignKey("messages.id"))
    # The conversation attached (issue 13 item 1); NULL until conversations exist.
    conversation_id: Mapped[int | None] = mapped_column(sa.BigInteger)
