"""Tables of the MSSanté gateway: trusted domains, inbound audit and idempotence, outbound
attempts, read-receipt (MDN) jobs."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from monsisra.store.db import WAL_SIZE_LIMIT
from monsisra.store.models import UTC, Base, _now
from monsisra.store.types import Line, Prose


class TrustedDomain(Base):
    """A domain of the MSSanté trust space: mail from or to any other domain is refused.

    ``*.example.fr`` entries trust every sub-domain of ``example.fr``.
    """

    __tablename__ = "gw_trusted_domains"

    domain: Mapped[str] = mapped_column(Line(253), primary_key=True)
    note: Mapped[str] = mapped_column(Line(200), default="")
    added_at: Mapped[datetime] = mapped_column(UTC, default=_now)


class InboundMessage(Base):
    """One accepted SMTP message for one local mailbox: the raw form kept for audit, and the
    key of idempotence — the same Message-ID delivered twice to a mailbox is stored once."""

    __tablename__ = "gw_inbound"

    id: Mapped[int] = mapped_column(primary_key=True)
    mailbox_id: Mapped[int] = mapped_column(sa.ForeignKey("mailboxes.id", ondelete="CASCADE"))
    rfc_message_id: Mapped[str] = mapped_column(Line(255))
    message_id: Mapped[int | None] = mapped_column(sa.ForeignKey("messages.id", ondelete="SET NULL"), index=True)
    raw_sha256: Mapped[str] = mapped_column(Line(64))
    raw_size: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    mail_from: Mapped[str] = mapped_column(Line(254), default="")
    peer: Mapped[str] = mapped_column(Line(80), default="")
    kind: Mapped[str] = mapped_column(Line(8), default="message")  # message | mdn
    received_at: Mapped[datetime] = mapped_column(UTC, default=_now)

    __table_args__ = (sa.UniqueConstraint("mailbox_id", "rfc_message_id"),)


class RawMessage(Base):
    """The raw form of an inbound message, kept for audit, stored once per content.

    It lives in the database rather than the blob store: it is written in the same
    transaction (and fsync) as the message it proves, instead of costing two more fsyncs.
    """

    __tablename__ = "gw_raw"

    sha256: Mapped[str] = mapped_column(Line(64), primary_key=True)
    size: Mapped[int] = mapped_column(sa.BigInteger)
    data: Mapped[bytes] = mapped_column(sa.LargeBinary)
    received_at: Mapped[datetime] = mapped_column(UTC, default=_now)


class OutboundAttempt(Base):
    """One SMTP delivery attempt of one external recipient (the outbox's history)."""

    __tablename__ = "gw_attempts"

    id: Mapped[int] = mapped_column(primary_key=True)
    recipient_id: Mapped[int | None] = mapped_column(sa.ForeignKey("recipients.id", ondelete="CASCADE"),
                                                     index=True)
    mdn_id: Mapped[int | None] = mapped_column(sa.ForeignKey("gw_mdn.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(UTC, default=_now)
    host: Mapped[str] = mapped_column(Line(260), default="")
    code: Mapped[int | None] = mapped_column()
    outcome: Mapped[str] = mapped_column(Line(12))  # sent | retry | failed
    detail: Mapped[str] = mapped_column(Prose, default="")


class MdnJob(Base):
    """A read receipt we owe a remote sender (status ``ask`` waits for the user's consent)."""

    __tablename__ = "gw_mdn"

    id: Mapped[int] = mapped_column(primary_key=True)
    message_id: Mapped[int] = mapped_column(sa.ForeignKey("messages.id", ondelete="CASCADE"))
    mailbox_id: Mapped[int] = mapped_column(sa.ForeignKey("mailboxes.id", ondelete="CASCADE"))
    account_id: Mapped[int | None] = mapped_column(sa.ForeignKey("accounts.id"))
    notify_to: Mapped[str] = mapped_column(Line(254))
    status: Mapped[str] = mapped_column(Line(10))  # ask | queued | retrying | sent | failed | declined
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTC)
    detail: Mapped[str | None] = mapped_column(Prose)
    created_at: Mapped[datetime] = mapped_column(UTC, default=_now)

    __table_args__ = (
        sa.UniqueConstraint("message_id", "mailbox_id"),
        sa.Index("ix_gw_mdn_due", "next_attempt_at",
                 sqlite_where=sa.text("status IN ('queued', 'retrying')"),
                 postgresql_where=sa.text("status IN ('queued', 'retrying')")),
    )


def sync_sqlite_engine(url: str) -> sa.Engine:
    """A synchronous engine on the same SQLite file, with the settings of ``store.db``'s async
    one (WAL, ``synchronous=FULL``, foreign keys, ``BEGIN IMMEDIATE``): the inbound gateway
    writes whole batches with it from one thread."""
    engine = sa.create_engine(url.replace("+aiosqlite", ""), connect_args={"timeout": 30,
                                                                          "check_same_thread": False})

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON", "busy_timeout=30000",
                       "cache_size=-65536", "temp_store=MEMORY", f"journal_size_limit={WAL_SIZE_LIMIT}"):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine
