"""Identity tables (issue 15, items 1-4): the second factor and its recovery codes, remembered
devices, how each session was opened, pending Pro Santé Connect logins, and the portal's OpenID
provider (clients, signing keys, codes, the sessions it opened at each service, access tokens).

Secrets are never stored as given: codes and tokens as their sha256, TOTP secrets and private
keys sealed with a key derived from the platform's secret key (``services/sealed.py``).
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from monsisra.store.models import UTC, Base, _now
from monsisra.store.types import Line, Prose


class SecondFactor(Base):
    """An account's TOTP: the confirmed secret, one being enrolled, the last time step used
    (a code is accepted once: only a later step may follow), and the demo exemption."""

    __tablename__ = "second_factors"

    account_id: Mapped[int] = mapped_column(sa.ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True)
    secret: Mapped[str | None] = mapped_column(Line(255))  # sealed
    pending_secret: Mapped[str | None] = mapped_column(Line(255))  # sealed, until confirmed
    pending_at: Mapped[datetime | None] = mapped_column(UTC)
    confirmed_at: Mapped[datetime | None] = mapped_column(UTC)
    last_step: Mapped[int | None] = mapped_column(sa.BigInteger)
    exempt: Mapped[bool] = mapped_column(default=False)


class RecoveryCode(Base):
    __tablename__ = "recovery_codes"
    __table_args__ = (sa.UniqueConstraint("account_id", "code_hash"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(sa.ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    code_hash: Mapped[str] = mapped_column(Line(64))
    pending: Mapped[bool] = mapped_column(default=True)  # issued with an enrolment not yet confirmed
    created_at: Mapped[datetime] = mapped_column(UTC, default=_now)
    used_at: Mapped[datetime | None] = mapped_column(UTC)


class RememberedDevice(Base):
    """A browser that passed the second factor and asked to be remembered, until ``expires_at``."""

    __tablename__ = "remembered_devices"

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(sa.ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    secret_hash: Mapped[str] = mapped_column(Line(64), unique=True)
    device_hash: Mapped[str] = mapped_column(Line(64))  # the device cookie it is bound to
    client: Mapped[str | None] = mapped_column(Line(120))
    created_at: Mapped[datetime] = mapped_column(UTC, default=_now)
    expires_at: Mapped[datetime] = mapped_column(UTC)
    revoked_at: Mapped[datetime | None] = mapped_column(UTC)


class SessionAuth(Base):
    """How a session (a ``tokens`` row) was opened: ``methods`` (pwd, otp, recovery, device,
    cps, psc) and whether it is limited to enrolling the second factor."""

    __tablename__ = "session_auth"

    token_id: Mapped[int] = mapped_column(sa.ForeignKey("tokens.id", ondelete="CASCADE"), primary_key=True)
    methods: Mapped[str] = mapped_column(Line(60))
    limited: Mapped[bool] = mapped_column(default=False)


class OidcLogin(Base):
    """A Pro Santé Connect login under way: what the return must match, used once."""

    __tablename__ = "oidc_logins"

    state_hash: Mapped[str] = mapped_column(Line(64), primary_key=True)
    nonce: Mapped[str] = mapped_column(Line(128))
    verifier: Mapped[str] = mapped_column(Line(128))  # PKCE code_verifier
    browser_hash: Mapped[str] = mapped_column(Line(64))  # the cookie that started it
    suite: Mapped[str] = mapped_column(Line(2000), default="/boite")
    created_at: Mapped[datetime] = mapped_column(UTC, default=_now, index=True)
    used_at: Mapped[datetime | None] = mapped_column(UTC)


class PortalClient(Base):
    """A service of the region that logs its users in through « Mon portail »."""

    __tablename__ = "portal_clients"

    id: Mapped[int] = mapped_column(primary_key=True)
    client_id: Mapped[str] = mapped_column(Line(80), unique=True)
    secret_hash: Mapped[str] = mapped_column(Line(64))
    name: Mapped[str] = mapped_column(Line(200))
    description: Mapped[str] = mapped_column(Prose, default="")
    redirect_uris: Mapped[list[str]] = mapped_column(sa.JSON)
    login_url: Mapped[str] = mapped_column(Line(2000))  # the tile opens it (OIDC initiate_login_uri)
    backchannel_logout_uri: Mapped[str | None] = mapped_column(Line(2000))
    frontchannel_logout_uri: Mapped[str | None] = mapped_column(Line(2000))
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(UTC, default=_now)


class PortalKey(Base):
    """A signing key of the provider: the newest active one signs; a retired one stays
    published (JWKS) until ``publish_until``, after every token it signed has expired."""

    __tablename__ = "portal_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    kid: Mapped[str] = mapped_column(Line(64), unique=True)
    private_key: Mapped[str] = mapped_column(Prose)  # sealed PEM
    public_jwk: Mapped[dict] = mapped_column(sa.JSON)
    created_at: Mapped[datetime] = mapped_column(UTC, default=_now)
    retired_at: Mapped[datetime | None] = mapped_column(UTC)
    publish_until: Mapped[datetime | None] = mapped_column(UTC)


class PortalCode(Base):
    """An authorisation code: single use, short-lived, bound to its client, redirect and PKCE."""

    __tablename__ = "portal_codes"

    code_hash: Mapped[str] = mapped_column(Line(64), primary_key=True)
    client_id: Mapped[str] = mapped_column(Line(80))
    account_id: Mapped[int] = mapped_column(sa.ForeignKey("accounts.id", ondelete="CASCADE"))
    session_id: Mapped[int] = mapped_column(sa.ForeignKey("portal_sessions.id", ondelete="CASCADE"))
    redirect_uri: Mapped[str] = mapped_column(Line(2000))
    scope: Mapped[str] = mapped_column(Line(400))
    nonce: Mapped[str | None] = mapped_column(Line(255))
    code_challenge: Mapped[str] = mapped_column(Line(128))
    code_challenge_method: Mapped[str] = mapped_column(Line(10))
    auth_time: Mapped[datetime] = mapped_column(UTC)
    created_at: Mapped[datetime] = mapped_column(UTC, default=_now)
    expires_at: Mapped[datetime] = mapped_column(UTC, index=True)
    used_at: Mapped[datetime | None] = mapped_column(UTC)


class PortalSession(Base):
    """One MonSisra session logged in at one service (``sid``): ended with the session."""

    __tablename__ = "portal_sessions"
    __table_args__ = (sa.UniqueConstraint("token_id", "client_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    sid: Mapped[str] = mapped_column(Line(64), unique=True)
    client_id: Mapped[str] = mapped_column(Line(80))
    account_id: Mapped[int] = mapped_column(sa.ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    token_id: Mapped[int | None] = mapped_column(sa.ForeignKey("tokens.id", ondelete="SET NULL"), index=True)
    issuer: Mapped[str] = mapped_column(Line(2000))  # as the service saw us (its logout token names it)
    created_at: Mapped[datetime] = mapped_column(UTC, default=_now)
    ended_at: Mapped[datetime | None] = mapped_column(UTC)
    logout_status: Mapped[str | None] = mapped_column(Line(200))  # what the back-channel call answered


class PortalToken(Base):
    """An access token the provider gave a service: it only reads the user info."""

    __tablename__ = "portal_tokens"

    token_hash: Mapped[str] = mapped_column(Line(64), primary_key=True)
    client_id: Mapped[str] = mapped_column(Line(80))
    account_id: Mapped[int] = mapped_column(sa.ForeignKey("accounts.id", ondelete="CASCADE"))
    session_id: Mapped[int] = mapped_column(sa.ForeignKey("portal_sessions.id", ondelete="CASCADE"), index=True)
    scope: Mapped[str] = mapped_column(Line(400))
    expires_at: Mapped[datetime] = mapped_column(UTC, index=True)
