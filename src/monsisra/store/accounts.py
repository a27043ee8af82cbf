"""Tables of identity and access beyond the core: password reset links, ended accesses (to
recognise a revoked delegation still used), remembered devices and live sockets (the sessions
page)."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from monsisra.store.models import UTC, Base, _now
from monsisra.store.types import Line


class PasswordReset(Base):
    """A « Mot de passe oublié ? » link: only the SHA-256 of its secret part is kept."""

    __tablename__ = "password_resets"

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(sa.ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(Line(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTC, default=_now)
    expires_at: Mapped[datetime] = mapped_column(UTC)
    used_at: Mapped[datetime | None] = mapped_column(UTC)
    client: Mapped[str | None] = mapped_column(Line(64))


class RevokedAccess(Base):
    """An access to a mailbox that was taken back (a delegation, a membership): kept so that a
    later attempt through it is recognised and audited (it still answers 404)."""

    __tablename__ = "revoked_access"

    mailbox_id: Mapped[int] = mapped_column(sa.ForeignKey("mailboxes.id", ondelete="CASCADE"), primary_key=True)
    account_id: Mapped[int] = mapped_column(sa.ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True,
                                            index=True)
    access: Mapped[str] = mapped_column(Line(10))
    revoked_at: Mapped[datetime] = mapped_column(UTC, default=_now)
    revoked_by: Mapped[int | None] = mapped_column()


class Device(Base):
    """A browser remembered for a login (its device cookie, web/session.py): listed on the sessions
    page and revocable; a revoked or expired one is a stranger again."""

    __tablename__ = "devices"

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(sa.ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    device_hash: Mapped[str] = mapped_column(Line(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTC, default=_now)
    last_used_at: Mapped[datetime | None] = mapped_column(UTC)
    expires_at: Mapped[datetime] = mapped_column(UTC)
    revoked_at: Mapped[datetime | None] = mapped_column(UTC)
    client: Mapped[str | None] = mapped_column(Line(64))
    user_agent: Mapped[str | None] = mapped_column(Line(255))


class LiveSocket(Base):
    """An open WebSocket (/api/v1/events), whichever process holds it; ``seen_at`` is refreshed by
    its periodic session check, so a row left by a process that died ages out of the list."""

    __tablename__ = "live_sockets"

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(sa.ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    token_id: Mapped[int | None] = mapped_column(sa.ForeignKey("tokens.id", ondelete="CASCADE"), index=True)
    opened_at: Mapped[datetime] = mapped_column(UTC, default=_now)
    seen_at: Mapped[datetime] = mapped_column(UTC, default=_now)
    client: Mapped[str | None] = mapped_column(Line(64))
    user_agent: Mapped[str | None] = mapped_column(Line(255))
