"""Identity: second factor, recovery codes, remembered devices, how sessions were opened, Pro Santé
Connect logins under way, and the portal's OpenID provider (clients, keys, codes, sessions, tokens)

Revision ID: 0007_authn_identity
Revises: 0006_web_trash
"""

import sqlalchemy as sa
from alembic import op

revision = "0007_authn_identity"
down_revision = "0006_web_trash"
branch_labels = None
depends_on = None

UTC = sa.DateTime(timezone=True)


def _fk(table: str, column: str, target: str, ondelete: str = "CASCADE") -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint([column], [target], name=f"fk_{table}_{column}_{target.split('.')[0]}",
                                   ondelete=ondelete)


def upgrade() -> None:
    op.create_table(
        "second_factors",
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("secret", sa.String(255), nullable=True),
        sa.Column("pending_secret", sa.String(255), nullable=True),
        sa.Column("pending_at", UTC, nullable=True),
        sa.Column("confirmed_at", UTC, nullable=True),
        sa.Column("last_step", sa.BigInteger(), nullable=True),
        sa.Column("exempt", sa.Boolean(), nullable=False),
        _fk("second_factors", "account_id", "accounts.id"),
        sa.PrimaryKeyConstraint("account_id", name="pk_second_factors"),
    )
    op.create_table(
        "recovery_codes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("code_hash", sa.String(64), nullable=False),
        sa.Column("pending", sa.Boolean(), nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("used_at", UTC, nullable=True),
        _fk("recovery_codes", "account_id", "accounts.id"),
        sa.PrimaryKeyConstraint("id", name="pk_recovery_codes"),
        sa.UniqueConstraint("account_id", "code_hash", name="uq_recovery_codes_account_id_code_hash"),
    )
    op.create_index("ix_recovery_codes_account_id", "recovery_codes", ["account_id"])
    op.create_table(
        "remembered_devices",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("device_hash", sa.String(64), nullable=False),
        sa.Column("client", sa.String(120), nullable=True),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("expires_at", UTC, nullable=False),
        sa.Column("revoked_at", UTC, nullable=True),
        _fk("remembered_devices", "account_id", "accounts.id"),
        sa.PrimaryKeyConstraint("id", name="pk_remembered_devices"),
        sa.UniqueConstraint("secret_hash", name="uq_remembered_devices_secret_hash"),
    )
    op.create_index("ix_remembered_devices_account_id", "remembered_devices", ["account_id"])
    op.create_table(
        "session_auth",
        sa.Column("token_id", sa.Integer(), nullable=False),
        sa.Column("methods", sa.String(60), nullable=False),
        sa.Column("limited", sa.Boolean(), nullable=False),
        _fk("session_auth", "token_id", "tokens.id"),
        sa.PrimaryKeyConstraint("token_id", name="pk_session_auth"),
    )
    op.create_table(
        "oidc_logins",
        sa.Column("state_hash", sa.String(64), nullable=False),
        sa.Column("nonce", sa.String(128), nullable=False),
        sa.Column("verifier", sa.String(128), nullable=False),
        sa.Column("browser_hash", sa.String(64), nullable=False),
        sa.Column("suite", sa.String(2000), nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("used_at", UTC, nullable=True),
        sa.PrimaryKeyConstraint("state_hash", name="pk_oidc_logins"),
    )
    op.create_index("ix_oidc_logins_created_at", "oidc_logins", ["created_at"])
    op.create_table(
        "portal_clients",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("client_id", sa.String(80), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("redirect_uris", sa.JSON(), nullable=False),
        sa.Column("login_url", sa.String(2000), nullable=False),
        sa.Column("backchannel_logout_uri", sa.String(2000), nullable=True),
        sa.Column("frontchannel_logout_uri", sa.String(2000), nullable=True),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_portal_clients"),
        sa.UniqueConstraint("client_id", name="uq_portal_clients_client_id"),
    )
    op.create_table(
        "portal_keys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kid", sa.String(64), nullable=False),
        sa.Column("private_key", sa.Text(), nullable=False),
        sa.Column("public_jwk", sa.JSON(), nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("retired_at", UTC, nullable=True),
        sa.Column("publish_until", UTC, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_portal_keys"),
        sa.UniqueConstraint("kid", name="uq_portal_keys_kid"),
    )
    op.create_table(
        "portal_sessions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sid", sa.String(64), nullable=False),
        sa.Column("client_id", sa.String(80), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("token_id", sa.Integer(), nullable=True),
        sa.Column("issuer", sa.String(2000), nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("ended_at", UTC, nullable=True),
        sa.Column("logout_status", sa.String(200), nullable=True),
        _fk("portal_sessions", "account_id", "accounts.id"),
        _fk("portal_sessions", "token_id", "tokens.id", "SET NULL"),
        sa.PrimaryKeyConstraint("id", name="pk_portal_sessions"),
        sa.UniqueConstraint("sid", name="uq_portal_sessions_sid"),
        sa.UniqueConstraint("token_id", "client_id", name="uq_portal_sessions_token_id_client_id"),
    )
    op.create_index("ix_portal_sessions_account_id", "portal_sessions", ["account_id"])
    op.create_index("ix_portal_sessions_token_id", "portal_sessions", ["token_id"])
    op.create_table(
        "portal_codes",
        sa.Column("code_hash", sa.String(64), nullable=False),
        sa.Column("client_id", sa.String(80), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("session_id", sa.Integer(), nullable=False),
        sa.Column("redirect_uri", sa.String(2000), nullable=False),
        sa.Column("scope", sa.String(400), nullable=False),
        sa.Column("nonce", sa.String(255), nullable=True),
        sa.Column("code_challenge", sa.String(128), nullable=False),
        sa.Column("code_challenge_method", sa.String(10), nullable=False),
        sa.Column("auth_time", UTC, nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("expires_at", UTC, nullable=False),
        sa.Column("used_at", UTC, nullable=True),
        _fk("portal_codes", "account_id", "accounts.id"),
        _fk("portal_codes", "session_id", "portal_sessions.id"),
        sa.PrimaryKeyConstraint("code_hash", name="pk_portal_codes"),
    )
    op.create_index("ix_portal_codes_expires_at", "portal_codes", ["expires_at"])
    op.create_table(
        "portal_tokens",
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("client_id", sa.String(80), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("session_id", sa.Integer(), nullable=False),
        sa.Column("scope", sa.String(400), nullable=False),
        sa.Column("expires_at", UTC, nullable=False),
        _fk("portal_tokens", "account_id", "accounts.id"),
        _fk("portal_tokens", "session_id", "portal_sessions.id"),
        sa.PrimaryKeyConstraint("token_hash", name="pk_portal_tokens"),
    )
    op.create_index("ix_portal_tokens_session_id", "portal_tokens", ["session_id"])
    op.create_index("ix_portal_tokens_expires_at", "portal_tokens", ["expires_at"])


def downgrade() -> None:
    for table in ("portal_tokens", "portal_codes", "portal_sessions", "portal_keys", "portal_clients",
                  "oidc_logins", "session_auth", "remembered_devices", "recovery_codes", "second_factors"):
        op.drop_table(table)
