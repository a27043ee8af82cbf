"""SQLAlchemy 2 models of the core: accounts, mailboxes, messages and per-mailbox state.

Following Zulip's split, a message is stored once and each mailbox it sits in gets one
``Delivery`` row holding that mailbox's state (read, flags, IMAP uid, modseq).
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from monsisra.store.types import Line, Prose

# SQL fragments shared by the partial indexes and the queries that must use them: SQLite
# only picks a partial index when the query repeats its WHERE terms literally.
NOT_DELETED = "deleted = false"
VIEW_SQL = {
    "inbox": "role = 'in' AND archived = false AND deleted = false",
    "unread": "role = 'in' AND read = false AND deleted = false",
    "all": "role = 'in' AND deleted = false",
    "sent": "role = 'sent' AND deleted = false",
    "drafts": "role = 'draft' AND deleted = false",
    "favorites": "favorite = true AND deleted = false",
    "todo": "todo = true AND deleted = false",
    "archived": "archived = true AND deleted = false",
    # The bin (corbeille): listed newest-deleted first, through its own index (see Delivery).
    "trash": "deleted = true",
}
TRASH_VIEW = "trash"

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING)


def _now() -> datetime:
    from monsisra.domain.clock import utcnow

    return utcnow()


UTC = sa.DateTime(timezone=True)


class Account(Base):
    __tablename__ = "accounts"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(Line(120), unique=True)
    password_hash: Mapped[str | None] = mapped_column(Line(255))
    is_admin: Mapped[bool] = mapped_column(default=False)
    active: Mapped[bool] = mapped_column(default=True)
    civility: Mapped[str] = mapped_column(Line(20), default="")
    first_name: Mapped[str] = mapped_column(Line(120), default="")
    last_name: Mapped[str] = mapped_column(Line(120), default="")
    profession_code: Mapped[str | None] = mapped_column(Line(8))
    profession: Mapped[str] = mapped_column(Line(120), default="")
    specialty: Mapped[str] = mapped_column(Line(160), default="")
    national_id: Mapped[str | None] = mapped_column(Line(20), index=True)
    email: Mapped[str | None] = mapped_column(Line(254))
    phone: Mapped[str | None] = mapped_column(Line(40))
    appear_absent: Mapped[bool] = mapped_column(default=False)
    # Categories shown in the inbox; NULL means all of them.
    inbox_categories: Mapped[list[str] | None] = mapped_column(sa.JSON)
    totp_secret: Mapped[str | None] = mapped_column(Line(64))
    created_at: Mapped[datetime] = mapped_column(UTC, default=_now)
    last_login_at: Mapped[datetime | None] = mapped_column(UTC)
    # "local" (password checked here) or "ldap" (an establishment's directory checks it).
    auth_source: Mapped[str] = mapped_column(Line(10), default="local", server_default="local")
    password_changed_at: Mapped[datetime | None] = mapped_column(UTC)
    # The mailbox the inbox opens on (a secretary lands in the doctor's); NULL: the first one.
    default_mailbox_id: Mapped[int | None] = mapped_column()


class Token(Base):
    __tablename__ = "tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(sa.ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(Line(64), unique=True)
    kind: Mapped[str] = mapped_column(Line(16), default="api")
    created_at: Mapped[datetime] = mapped_column(UTC, default=_now)
    expires_at: Mapped[datetime] = mapped_column(UTC)
    revoked_at: Mapped[datetime | None] = mapped_column(UTC)
    client: Mapped[str | None] = mapped_column(Line(120))
    user_agent: Mapped[str | None] = mapped_column(Line(255))
    last_used_at: Mapped[datetime | None] = mapped_column(UTC)


class LoginThrottle(Base):
    """Failed logins per key (``account:<name>`` or ``ip:<addr>``) in the current window."""

    __tablename__ = "login_throttle"

    key: Mapped[str] = mapped_column(Line(200), primary_key=True)
    failures: Mapped[int] = mapped_column(default=0)
    window_start: Mapped[datetime] = mapped_column(UTC)
    locked_until: Mapped[datetime | None] = mapped_column(UTC)


class Mailbox(Base):
    __tablename__ = "mailboxes"

    id: Mapped[int] = mapped_column(primary_key=True)
    address: Mapped[str] = mapped_column(Line(254), unique=True)
    kind: Mapped[str] = mapped_column(Line(3))
    display_name: Mapped[str] = mapped_column(Line(200))
    owner_account_id: Mapped[int | None] = mapped_column(sa.ForeignKey("accounts.id"), index=True)
    description: Mapped[str] = mapped_column(Prose, default="")
    organisation: Mapped[str] = mapped_column(Line(200), default="")
    finess: Mapped[str | None] = mapped_column(Line(20))
    is_expert: Mapped[bool] = mapped_column(default=False)
    is_resource_team: Mapped[bool] = mapped_column(default=False)
    active: Mapped[bool] = mapped_column(default=True)
    # IMAP-ready bookkeeping: uids are strictly increasing per mailbox, modseq bumps on change.
    uidvalidity: Mapped[int] = mapped_column(sa.BigInteger)
    next_uid: Mapped[int] = mapped_column(sa.BigInteger, default=1)
    modseq: Mapped[int] = mapped_column(sa.BigInteger, default=1)
    created_at: Mapped[datetime] = mapped_column(UTC, default=_now)
    last_opened_at: Mapped[datetime | None] = mapped_column(UTC)


class MailboxAccess(Base):
    """Who may use a mailbox: its owner, an ORG's members, a professional's delegates."""

    __tablename__ = "mailbox_access"

    mailbox_id: Mapped[int] = mapped_column(sa.ForeignKey("mailboxes.id", ondelete="CASCADE"), primary_key=True)
    account_id: Mapped[int] = mapped_column(
        sa.ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    access: Mapped[str] = mapped_column(Line(10))
    created_at: Mapped[datetime] = mapped_column(UTC, default=_now)
    # A delegate's rights (domain.delegation); NULL: all of them (owners, members).
    rights: Mapped[str | None] = mapped_column(Line(40))
    granted_by: Mapped[int | None] = mapped_column()


class Patient(Base):
    __tablename__ = "patients"

    id: Mapped[int] = mapped_column(primary_key=True)
    ins: Mapped[str] = mapped_column(Line(15), unique=True)
    ins_oid: Mapped[str] = mapped_column(Line(40))
    family_name: Mapped[str] = mapped_column(Line(120), default="")
    given_names: Mapped[str] = mapped_column(Line(200), default="")
    birth_date: Mapped[str | None] = mapped_column(Line(10))
    sex: Mapped[str | None] = mapped_column(Line(1))
    birthplace: Mapped[str | None] = mapped_column(Line(5))
    created_at: Mapped[datetime] = mapped_column(UTC, default=_now)
    # Folded (lower-case, accent-free) names and INS: « helene » finds « Hélène » on both engines.
    search_name: Mapped[str] = mapped_column(Line(400), default="", server_default="")


class Message(Base):
    __tablename__ = "messages"
    # Ids are never reused (drafts are deleted when sent): clients and cursors may keep them.
    __table_args__ = {"sqlite_autoincrement": True}  # noqa: RUF012 (read once by SQLAlchemy)

    id: Mapped[int] = mapped_column(primary_key=True)
    message_id: Mapped[str] = mapped_column(Line(255), index=True)  # RFC 5322 Message-ID
    thread_id: Mapped[int | None] = mapped_column(sa.BigInteger, index=True)
    in_reply_to_id: Mapped[int | None] = mapped_column(sa.ForeignKey("messages.id"))
    from_mailbox_id: Mapped[int | None] = mapped_column(sa.ForeignKey("mailboxes.id"))
    author_account_id: Mapped[int | None] = mapped_column(sa.ForeignKey("accounts.id"))
    sender_address: Mapped[str] = mapped_column(Line(254))
    sender_name: Mapped[str] = mapped_column(Line(200), default="")
    subject: Mapped[str] = mapped_column(Line(998), default="")
    body: Mapped[str] = mapped_column(Prose, default="")
    html: Mapped[str | None] = mapped_column(Prose)
    preview: Mapped[str] = mapped_column(Line(160), default="")
    category: Mapped[str] = mapped_column(Line(16))
    created_at: Mapped[datetime] = mapped_column(UTC, default=_now)
    sent_at: Mapped[datetime | None] = mapped_column(UTC)
    is_draft: Mapped[bool] = mapped_column(default=False)
    patient_id: Mapped[int | None] = mapped_column(sa.ForeignKey("patients.id"), index=True)
    has_attachments: Mapped[bool] = mapped_column(default=False)
    origin: Mapped[str] = mapped_column(Line(8), default="local")  # local | smtp
    raw_sha256: Mapped[str | None] = mapped_column(Line(64))
    headers: Mapped[dict | None] = mapped_column(sa.JSON)
    receipt_requested: Mapped[bool] = mapped_column(default=False)
    no_reply: Mapped[bool] = mapped_column(default=False)
    context_type: Mapped[str | None] = mapped_column(Line(20))  # conversation, teleexpertise…
    context_id: Mapped[int | None] = mapped_column(sa.BigInteger)
    search_text: Mapped[str] = mapped_column(Prose, default="")


class Recipient(Base):
    """An addressee of a message as written (local or external), with its delivery status."""

    __tablename__ = "recipients"

    id: Mapped[int] = mapped_column(primary_key=True)
    message_id: Mapped[int] = mapped_column(sa.ForeignKey("messages.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(Line(3))  # to | cc | bcc
    address: Mapped[str] = mapped_column(Line(254))
    display_name: Mapped[str] = mapped_column(Line(200), default="")
    mailbox_id: Mapped[int | None] = mapped_column(sa.ForeignKey("mailboxes.id"))
    status: Mapped[str] = mapped_column(Line(12), default="delivered")
    status_detail: Mapped[str | None] = mapped_column(Prose)
    status_at: Mapped[datetime | None] = mapped_column(UTC)
    read_at: Mapped[datetime | None] = mapped_column(UTC)  # from an MDN, for external recipients
    # Outbound queue bookkeeping for external recipients (status queued/retrying/sent/failed).
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTC)

    __table_args__ = (
        sa.Index(
            "ix_recipients_outbox",
            "next_attempt_at",
            sqlite_where=sa.text("status IN ('queued', 'retrying')"),
            postgresql_where=sa.text("status IN ('queued', 'retrying')"),
        ),
    )


class Delivery(Base):
    """One message in one mailbox, with that mailbox's state."""

    __tablename__ = "deliveries"

    id: Mapped[int] = mapped_column(sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True)
    mailbox_id: Mapped[int] = mapped_column(sa.ForeignKey("mailboxes.id", ondelete="CASCADE"))
    message_id: Mapped[int] = mapped_column(sa.ForeignKey("messages.id", ondelete="CASCADE"), index=True)
    uid: Mapped[int] = mapped_column(sa.BigInteger)
    role: Mapped[str] = mapped_column(Line(5))
    category: Mapped[str] = mapped_column(Line(16))
    created_at: Mapped[datetime] = mapped_column(UTC, default=_now)
    read: Mapped[bool] = mapped_column(default=False)
    favorite: Mapped[bool] = mapped_column(default=False)
    todo: Mapped[bool] = mapped_column(default=False)
    archived: Mapped[bool] = mapped_column(default=False)
    deleted: Mapped[bool] = mapped_column(default=False)
    deleted_at: Mapped[datetime | None] = mapped_column(UTC)  # when it went to the bin (purged after 30 days)
    modseq: Mapped[int] = mapped_column(sa.BigInteger, default=1)
    # Its uid in the IMAP folder Favoris, taken from the mailbox's uids each time it enters it
    # (NULL: ``uid``), so a message flagged long after it arrived is new there too.
    favorite_uid: Mapped[int | None] = mapped_column(sa.BigInteger)
    first_read_at: Mapped[datetime | None] = mapped_column(UTC)
    first_read_by: Mapped[int | None] = mapped_column(sa.ForeignKey("accounts.id"))

    __table_args__ = (
        sa.UniqueConstraint("mailbox_id", "uid"),
        sa.UniqueConstraint("mailbox_id", "message_id", "role"),
        *(
            sa.Index(
                f"ix_deliveries_view_{view}",
                "mailbox_id",
                "id",
                sqlite_where=sa.text(cond),
                postgresql_where=sa.text(cond),
            )
            for view, cond in VIEW_SQL.items() if view != TRASH_VIEW
        ),
        # The bin, newest-deleted first; the hourly purge walks it by date too.
        sa.Index(
            "ix_deliveries_view_trash",
            "mailbox_id",
            "deleted_at",
            "id",
            sqlite_where=sa.text(VIEW_SQL[TRASH_VIEW]),
            postgresql_where=sa.text(VIEW_SQL[TRASH_VIEW]),
        ),
        sa.Index(
            "ix_deliveries_category",
            "mailbox_id",
            "category",
            "id",
            sqlite_where=sa.text(VIEW_SQL["all"]),
            postgresql_where=sa.text(VIEW_SQL["all"]),
        ),
        # Covering index of the counts query (one pass over a mailbox's rows).
        sa.Index(
            "ix_deliveries_counts",
            "mailbox_id",
            "deleted",
            "role",
            "category",
            "read",
            "archived",
            "favorite",
            "todo",
        ),
        {"sqlite_autoincrement": True},
    )


class DeliveryCount(Base):
    """How many deliveries of a mailbox are in each state: kept by database triggers in the same
    transaction as every change to ``deliveries`` (migration ``0007_core_counts``), so that a
    mailbox's counts are read from a few rows whatever its size."""

    __tablename__ = "delivery_counts"

    mailbox_id: Mapped[int] = mapped_column(sa.ForeignKey("mailboxes.id", ondelete="CASCADE"), primary_key=True)
    deleted: Mapped[bool] = mapped_column(primary_key=True)
    role: Mapped[str] = mapped_column(Line(5), primary_key=True)
    category: Mapped[str] = mapped_column(Line(16), primary_key=True)
    read: Mapped[bool] = mapped_column(primary_key=True)
    archived: Mapped[bool] = mapped_column(primary_key=True)
    favorite: Mapped[bool] = mapped_column(primary_key=True)
    todo: Mapped[bool] = mapped_column(primary_key=True)
    n: Mapped[int] = mapped_column(sa.BigInteger, default=0)


class Attachment(Base):
    """An uploaded file: metadata here, bytes in the content-addressed blob store."""

    __tablename__ = "attachments"

    id: Mapped[str] = mapped_column(Line(32), primary_key=True)
    sha256: Mapped[str] = mapped_column(Line(64), index=True)
    size: Mapped[int] = mapped_column(sa.BigInteger)
    content_type: Mapped[str] = mapped_column(Line(127))
    filename: Mapped[str] = mapped_column(Line(255))
    uploaded_by: Mapped[int | None] = mapped_column(sa.ForeignKey("accounts.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTC, default=_now)


class MessageAttachment(Base):
    __tablename__ = "message_attachments"

    message_id: Mapped[int] = mapped_column(sa.ForeignKey("messages.id", ondelete="CASCADE"), primary_key=True)
    attachment_id: Mapped[str] = mapped_column(sa.ForeignKey("attachments.id"), primary_key=True, index=True)
    position: Mapped[int] = mapped_column(default=0)


class AuditEvent(Base):
    """Who touched what: every access to patient data and every security-relevant act."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True)
    at: Mapped[datetime] = mapped_column(UTC, default=_now, index=True)
    account_id: Mapped[int | None] = mapped_column(sa.ForeignKey("accounts.id"), index=True)
    action: Mapped[str] = mapped_column(Line(40))
    object_type: Mapped[str] = mapped_column(Line(30), default="")
    object_id: Mapped[str] = mapped_column(Line(64), default="")
    patient_id: Mapped[int | None] = mapped_column(sa.ForeignKey("patients.id"), index=True)
    client: Mapped[str | None] = mapped_column(Line(64))
    detail: Mapped[dict | None] = mapped_column(sa.JSON)
    # The mailbox acted in (« Journal d'accès » of its owner).
    mailbox_id: Mapped[int | None] = mapped_column()
    # The hash chain (domain.audit_chain): position, previous entry's hash, this entry's hash.
    seq: Mapped[int | None] = mapped_column(sa.BigInteger, unique=True)
    prev_hash: Mapped[str | None] = mapped_column(Line(64))
    hash: Mapped[str | None] = mapped_column(Line(64))

    __table_args__ = (sa.Index("ix_audit_log_mailbox", "mailbox_id", "id"),)
