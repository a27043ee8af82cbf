"""Tables of the MSSanté gateway: trusted domains, inbound audit and idempotence, outbound
attempts, read-receipt (MDN) jobs."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from monsisra.store.db import WAL_SIZE_LIMIT
from monsisra.store.models import UTC, Attachment, Base, Message, MessageAttachment, Recipient, _now
from monsisra.store.types import Line, Prose
from monsisra.store.unnest import ArrayRows, quote


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


_ARRAY_TABLES: dict[str, sa.Table] = {
    "m": Message.__table__, "a": Attachment.__table__, "l": MessageAttachment.__table__,  # type: ignore[dict-item]
    "r": Recipient.__table__, "g": InboundMessage.__table__, "w": RawMessage.__table__}  # type: ignore[dict-item]
_ARRAY_DEFAULT_KEYS = {
    "a": ("id", "sha256", "size", "content_type", "filename", "uploaded_by", "created_at"),
    "l": ("msg", "attachment_id", "position"),
    "r": ("msg", "kind", "address", "display_name", "mailbox_id", "status", "status_at"),
    "g": ("msg", "mailbox_id", "rfc_message_id", "raw_sha256", "raw_size", "mail_from", "peer", "kind", "received_at"),
    "w": ("sha256", "size", "data", "received_at"),
}
_array_statements: dict[tuple, tuple[sa.TextClause, dict[str, ArrayRows]]] = {}


BatchKeys = tuple[tuple[str, tuple[str, ...]], ...]


def inbound_batch_statement(keys: BatchKeys) -> tuple[sa.TextClause, dict[str, ArrayRows]]:
    """One PostgreSQL statement writing an inbound batch's rows, for rows with these keys (built
    once): ``m`` messages, ``a`` attachments, ``l`` their links, ``r`` recipients, ``g``
    ``gw_inbound``, ``w`` raw forms, each table's rows as arrays (:class:`ArrayRows`); it answers
    the new messages' ids, in the order of their rows (``services.inbound._write_arrays``).

    Each message's id is drawn first (``nextval``, in the order of the rows, as the multi-row
    INSERT draws them), so that a message starting its thread gets ``thread_id = id`` in its
    INSERT (no UPDATE afterwards, which would rewrite the row and its generated search vector);
    the rows of the other tables name their message by its rank (``msg``), joined to that id.
    Each INSERT takes its rows in their order (``ORDER BY ord``): their own ids are drawn in the
    same order as by the multi-row INSERTs. Foreign keys are checked at the statement's end."""
    hit = _array_statements.get(keys)
    if hit is not None:
        return hit
    given = dict(keys)
    if not given["m"]:  # no message in the batch (receipts only): the statement keeps its shape
        given["m"] = message_keys()
    for name in "alrgw":
        given[name] = given[name] or _ARRAY_DEFAULT_KEYS[name]
    shapes = {name: ArrayRows(_ARRAY_TABLES[name], given[name], extra={"msg": "INTEGER"})
              for name in _ARRAY_TABLES}

    def params(name: str) -> list[str]:
        return [f"{name}{i}" for i in range(len(shapes[name].names))]

    def insert(name: str, source: str, join: str = "", conflict: str = "") -> str:
        shape = shapes[name]
        cols = [c.key for c in shape.columns]
        values = []
        for col in cols:
            if name == "m" and col == "thread_id":
                values.append("COALESCE(x.thread_id, x.id)")
            else:
                values.append(shape.column("x", col))
        if name == "m":
            cols, values = ["id", *cols], ["x.id", *values]
        elif name in "lrg":  # the message, by its rank in the batch
            cols, values = ["message_id", *cols], ["u.id", *values]
        return (f"INSERT INTO {shape.table.name} ({', '.join(map(quote, cols))}) SELECT {', '.join(values)} "
                f"FROM {source} {join} ORDER BY x.ord {conflict}")

    m = shapes["m"]
    sql = (
        f"WITH u AS (SELECT nextval(pg_get_serial_sequence('messages', 'id')) AS id, x.* "
        f"FROM {m.unnest(params('m'), 'x')} ORDER BY x.ord), "
        f"ins_m AS ({insert('m', 'u AS x')}), "
        f"ins_a AS ({insert('a', shapes['a'].unnest(params('a'), 'x'))}), "
        f"ins_l AS ({insert('l', shapes['l'].unnest(params('l'), 'x'), 'JOIN u ON u.ord = x.msg')}), "
        f"ins_r AS ({insert('r', shapes['r'].unnest(params('r'), 'x'), 'JOIN u ON u.ord = x.msg')}), "
        f"ins_g AS ({insert('g', shapes['g'].unnest(params('g'), 'x'), 'LEFT JOIN u ON u.ord = x.msg')}), "
        f"ins_w AS ({insert('w', shapes['w'].unnest(params('w'), 'x'), conflict='ON CONFLICT (sha256) DO NOTHING')}) "
        "SELECT id FROM u ORDER BY ord")
    found = _array_statements[keys] = (sa.text(sql), shapes)
    return found


def message_keys() -> tuple[str, ...]:
    """The keys of a message row of ``services.inbound._new_message``."""
    return ("message_id", "sender_address", "sender_name", "subject", "body", "html", "preview", "category",
            "created_at", "sent_at", "patient_id", "has_attachments", "origin", "raw_sha256", "headers",
            "receipt_requested", "in_reply_to_id", "thread_id", "is_draft", "no_reply", "search_text")
