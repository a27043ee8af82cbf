"""Video calls (issue 17): calls in a context (a conversation, a teleconsultation, later a
tele-expertise), who joined them, and teleconsultation appointments with their patient link.

No media is stored: only who was invited, joined, declined or left, and when.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from monsisra.store.models import UTC, Base, _now
from monsisra.store.types import Line


class Call(Base):
    __tablename__ = "calls"
    __table_args__ = (sa.Index("ix_calls_context", "context", "context_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    context: Mapped[str] = mapped_column(Line(20))  # conversation | teleconsultation | …
    context_id: Mapped[int] = mapped_column()
    patient_id: Mapped[int | None] = mapped_column(sa.ForeignKey("patients.id"), index=True)
    title: Mapped[str] = mapped_column(Line(200), default="")
    started_by: Mapped[int | None] = mapped_column(sa.ForeignKey("accounts.id"))
    started_at: Mapped[datetime] = mapped_column(UTC, default=_now)
    ended_at: Mapped[datetime | None] = mapped_column(UTC)
    ended_by: Mapped[int | None] = mapped_column(sa.ForeignKey("accounts.id"))


class CallMember(Base):
    """One person in one call: a professional (``account_id``) or the teleconsultation's patient."""

    __tablename__ = "call_members"
    __table_args__ = (sa.UniqueConstraint("call_id", "account_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    call_id: Mapped[int] = mapped_column(sa.ForeignKey("calls.id", ondelete="CASCADE"), index=True)
    account_id: Mapped[int | None] = mapped_column(sa.ForeignKey("accounts.id"))
    is_patient: Mapped[bool] = mapped_column(default=False)
    name: Mapped[str] = mapped_column(Line(300), default="")
    peer: Mapped[str] = mapped_column(Line(40), unique=True)  # the signalling address of this member
    joined_at: Mapped[datetime | None] = mapped_column(UTC)
    left_at: Mapped[datetime | None] = mapped_column(UTC)
    declined_at: Mapped[datetime | None] = mapped_column(UTC)


class Teleconsultation(Base):
    __tablename__ = "teleconsultations"

    id: Mapped[int] = mapped_column(primary_key=True)
    created_by: Mapped[int] = mapped_column(sa.ForeignKey("accounts.id"), index=True)
    patient_id: Mapped[int | None] = mapped_column(sa.ForeignKey("patients.id"))
    family_name: Mapped[str] = mapped_column(Line(100))
    given_names: Mapped[str] = mapped_column(Line(200))
    email: Mapped[str | None] = mapped_column(Line(320))
    phone: Mapped[str | None] = mapped_column(Line(30))
    at: Mapped[datetime] = mapped_column(UTC)
    token_hash: Mapped[str] = mapped_column(Line(64), unique=True)
    browser_hash: Mapped[str | None] = mapped_column(Line(64))  # the first browser that opened the link
    state: Mapped[str] = mapped_column(Line(10), default="booked")  # booked | waiting | admitted | ended
    waiting_since: Mapped[datetime | None] = mapped_column(UTC)
    call_id: Mapped[int | None] = mapped_column(sa.ForeignKey("calls.id"))
    expires_at: Mapped[datetime] = mapped_column(UTC)
    created_at: Mapped[datetime] = mapped_column(UTC, default=_now)
