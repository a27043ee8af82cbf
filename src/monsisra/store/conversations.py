"""Conversations (issue 13): live threads between professionals' and services' mailboxes.

A conversation message is stored once; each participant mailbox has one row in
``conversation_participants`` holding its state (joined, left, last message read and by whom),
as deliveries do for mail. Attachments reuse the ``attachments`` table and the blob store.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from monsisra.store.models import UTC, Base, _now
from monsisra.store.types import Line, Prose


class Conversation(Base):
    __tablename__ = "conversations"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(Line(200), default="")
    state: Mapped[str] = mapped_column(Line(8), default="open")  # open | closed
    patient_id: Mapped[int | None] = mapped_column(sa.ForeignKey("patients.id"), index=True)
    created_by: Mapped[int | None] = mapped_column(sa.ForeignKey("accounts.id"))
    created_at: Mapped[datetime] = mapped_column(UTC, default=_now)
    closed_at: Mapped[datetime | None] = mapped_column(UTC)
    closed_by: Mapped[int | None] = mapped_column(sa.ForeignKey("accounts.id"))
    last_message_id: Mapped[int | None] = mapped_column(sa.BigInteger)
    last_message_at: Mapped[datetime | None] = mapped_column(UTC)


class ConversationParticipant(Base):
    """One mailbox in one conversation: every account that may use the mailbox sees it."""

    __tablename__ = "conversation_participants"
    __table_args__ = (sa.UniqueConstraint("conversation_id", "mailbox_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    conversation_id: Mapped[int] = mapped_column(sa.ForeignKey("conversations.id", ondelete="CASCADE"), index=True)
    mailbox_id: Mapped[int] = mapped_column(sa.ForeignKey("mailboxes.id", ondelete="CASCADE"), index=True)
    joined_at: Mapped[datetime] = mapped_column(UTC, default=_now)
    left_at: Mapped[datetime | None] = mapped_column(UTC)
    added_by: Mapped[int | None] = mapped_column(sa.ForeignKey("accounts.id"))
    last_read_message_id: Mapped[int | None] = mapped_column(sa.BigInteger)
    last_read_at: Mapped[datetime | None] = mapped_column(UTC)
    last_read_by: Mapped[int | None] = mapped_column(sa.ForeignKey("accounts.id"))


class ConversationMessage(Base):
    __tablename__ = "conversation_messages"
    __table_args__ = (sa.Index("ix_conversation_messages_conversation_id_id", "conversation_id", "id"),
                      {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True)
    conversation_id: Mapped[int] = mapped_column(sa.ForeignKey("conversations.id", ondelete="CASCADE"))
    mailbox_id: Mapped[int | None] = mapped_column(sa.ForeignKey("mailboxes.id"))  # posted as this participant
    author_account_id: Mapped[int | None] = mapped_column(sa.ForeignKey("accounts.id"))
    author_name: Mapped[str] = mapped_column(Line(300), default="")  # « Dr Bruno PETIT pour Avis Hémostase »
    kind: Mapped[str] = mapped_column(Line(8), default="text")  # text | system | auto (absence reply)
    body: Mapped[str] = mapped_column(Prose, default="")
    created_at: Mapped[datetime] = mapped_column(UTC, default=_now)


class ConversationAttachment(Base):
    __tablename__ = "conversation_attachments"

    message_id: Mapped[int] = mapped_column(
        sa.BigInteger().with_variant(sa.Integer, "sqlite"),
        sa.ForeignKey("conversation_messages.id", ondelete="CASCADE"), primary_key=True)
    attachment_id: Mapped[str] = mapped_column(sa.ForeignKey("attachments.id"), primary_key=True, index=True)
    position: Mapped[int] = mapped_column(default=0)
    thumbnail_id: Mapped[str | None] = mapped_column(sa.ForeignKey("attachments.id"))


class AbsenceSetting(Base):
    """« Apparaître absent » extras: answer new conversation messages with this text."""

    __tablename__ = "absence_settings"

    account_id: Mapped[int] = mapped_column(sa.ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True)
    autoreply: Mapped[bool] = mapped_column(default=False)
    message: Mapped[str] = mapped_column(Prose, default="")
