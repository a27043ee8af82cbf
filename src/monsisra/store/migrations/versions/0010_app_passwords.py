"""App passwords (« mots de passe d'application ») for mail clients of accounts with a second
factor (issue 16).

Revision ID: 0010_app_passwords
Revises: 0004_gateway_raw, 0009_teleexpertise, 0009_video
"""

import sqlalchemy as sa
from alembic import op

revision = "0010_app_passwords"
down_revision = ("0004_gateway_raw", "0009_teleexpertise", "0009_video")
branch_labels = None
depends_on = None

UTC = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "app_passwords",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("label", sa.String(120), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("last_used_at", UTC, nullable=True),
        sa.Column("last_used_via", sa.String(20), nullable=True),
        sa.Column("last_used_client", sa.String(120), nullable=True),
        sa.Column("revoked_at", UTC, nullable=True),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name="fk_app_passwords_account_id_accounts",
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_app_passwords"),
        sa.UniqueConstraint("secret_hash", name="uq_app_passwords_secret_hash"),
    )
    op.create_index("ix_app_passwords_account_id", "app_passwords", ["account_id"])


def downgrade() -> None:
    op.drop_table("app_passwords")
