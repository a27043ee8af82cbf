"""Tables of reaching professionals outside the web page (issue 16): the virtual printer's
workstations and jobs, notification preferences and their batching state, Web Push
subscriptions, app passwords of mail clients."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from monsisra.store.models import UTC, Base, _now
from monsisra.store.types import Line


class PrintWorkstation(Base):
    """A workstation whose MonSisra printer sends jobs for one account: only the SHA-256 of
    its token is kept."""

    __tablename__ = "print_workstations"

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(sa.ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(Line(120), default="")
    token_hash: Mapped[str] = mapped_column(Line(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTC, default=_now)
    last_used_at: Mapped[datetime | None] = mapped_column(UTC)
    revoked_at: Mapped[datetime | None] = mapped_column(UTC)


class PrintJob(Base):
    """A printed document turned into a draft, with what its text suggested (patient,
    recipients) for the user to confirm."""

    __tablename__ = "print_jobs"

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(sa.ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    workstation_id: Mapped[int | None] = mapped_column(sa.ForeignKey("print_workstations.id", ondelete="SET NULL"))
    mailbox_id: Mapped[int] = mapped_column(sa.ForeignKey("mailboxes.id", ondelete="CASCADE"))
    message_id: Mapped[int | None] = mapped_column(sa.Integer, index=True)
    title: Mapped[str] = mapped_column(Line(255), default="")
    suggestions: Mapped[dict | None] = mapped_column(sa.JSON)
    created_at: Mapped[datetime] = mapped_column(UTC, default=_now)


class NotifyPrefs(Base):
    """How a person wants to hear of new messages while away: channels and quiet hours."""

    __tablename__ = "notify_prefs"

    account_id: Mapped[int] = mapped_column(sa.ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True)
    email: Mapped[bool] = mapped_column(default=True)
    sms: Mapped[bool] = mapped_column(default=False)
    push: Mapped[bool] = mapped_column(default=True)
    quiet_start: Mapped[str | None] = mapped_column(Line(5))  # "HH:MM", Europe/Paris
    quiet_end: Mapped[str | None] = mapped_column(Line(5))
    updated_at: Mapped[datetime] = mapped_column(UTC, default=_now)


class NotifyState(Base):
    """New messages not yet announced, per channel, and when each channel last spoke.
    Row ``account_id = 0`` is not an account: its ``cursor`` is the last delivery scanned."""

    __tablename__ = "notify_state"

    account_id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    cursor: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    pending_email: Mapped[int] = mapped_column(default=0)
    pending_sms: Mapped[int] = mapped_column(default=0)
    pending_push: Mapped[int] = mapped_column(default=0)
    last_email_at: Mapped[datetime | None] = mapped_column(UTC)
    last_sms_at: Mapped[datetime | None] = mapped_column(UTC)
    last_push_at: Mapped[datetime | None] = mapped_column(UTC)


class PushSubscription(Base):
    """A browser or phone subscribed to Web Push (RFC 8030), with its keys (RFC 8291)."""

    __tablename__ = "push_subscriptions"

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(sa.ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    endpoint: Mapped[str] = mapped_column(Line(1000), unique=True)
    p256dh: Mapped[str] = mapped_column(Line(200))
    auth: Mapped[str] = mapped_column(Line(100))
    user_agent: Mapped[str | None] = mapped_column(Line(255))
    created_at: Mapped[datetime] = mapped_column(UTC, default=_now)


class AppPassword(Base):
    """A « mot de passe d'application »: a server-generated secret that lets one mail client
    (IMAP, SMTP submission) log in to an account protected by a second factor. Only its
    SHA-256 is kept (see ``services/app_passwords.py``)."""

    __tablename__ = "app_passwords"

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(sa.ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    label: Mapped[str] = mapped_column(Line(120), default="")
    secret_hash: Mapped[str] = mapped_column(Line(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTC, default=_now)
    last_used_at: Mapped[datetime | None] = mapped_column(UTC)
    last_used_via: Mapped[str | None] = mapped_column(Line(20))  # imap, submission
    last_used_client: Mapped[str | None] = mapped_column(Line(120))
    revoked_at: Mapped[datetime | None] = mapped_column(UTC)


class ImapVanished(Base):
    """A uid that stopped naming a message of a mailbox's IMAP folders (QRESYNC's expunge
    history, RFC 7162): ``favorites_only`` when it left Favoris alone (its uid there). Kept
    90 days; ``ImapVanishedFloor`` says from which modseq the history of a mailbox is whole."""

    __tablename__ = "imap_vanished"
    __table_args__ = (sa.Index("ix_imap_vanished_mailbox_modseq", "mailbox_id", "modseq"),)

    id: Mapped[int] = mapped_column(sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True)
    mailbox_id: Mapped[int] = mapped_column(sa.ForeignKey("mailboxes.id", ondelete="CASCADE"))
    uid: Mapped[int] = mapped_column(sa.BigInteger)
    modseq: Mapped[int] = mapped_column(sa.BigInteger)
    favorites_only: Mapped[bool] = mapped_column(default=False)
    removed_at: Mapped[datetime] = mapped_column(UTC, default=_now)


class ImapVanishedFloor(Base):
    """The modseq below which a mailbox's removals are no longer all known (history pruned, or
    removals before the history began); no row: whole since the mailbox was created."""

    __tablename__ = "imap_vanished_floor"

    mailbox_id: Mapped[int] = mapped_column(sa.ForeignKey("mailboxes.id", ondelete="CASCADE"), primary_key=True)
    modseq: Mapped[int] = mapped_column(sa.BigInteger)
