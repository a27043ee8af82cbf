"""Reaching professionals outside the web page (issue 16): the virtual printer's workstations and
jobs, notification preferences and batching state, Web Push subscriptions.

Revision ID: 0008_reach
Revises: 0007_core_counts
"""

import sqlalchemy as sa
from alembic import op

revision = "0008_reach"
down_revision = "0007_core_counts"
branch_labels = None
depends_on = None

UTC = sa.DateTime(timezone=True)


def _account_fk(table: str, ondelete: str = "CASCADE") -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name=f"fk_{table}_account_id_accounts",
                                   ondelete=ondelete)


def upgrade() -> None:
    op.create_table(
        "print_workstations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(120), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("last_used_at", UTC, nullable=True),
        sa.Column("revoked_at", UTC, nullable=True),
        _account_fk("print_workstations"),
        sa.PrimaryKeyConstraint("id", name="pk_print_workstations"),
        sa.UniqueConstraint("token_hash", name="uq_print_workstations_token_hash"),
    )
    op.create_index("ix_print_workstations_account_id", "print_workstations", ["account_id"])
    op.create_table(
        "print_jobs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("workstation_id", sa.Integer(), nullable=True),
        sa.Column("mailbox_id", sa.Integer(), nullable=False),
        sa.Column("message_id", sa.Integer(), nullable=True),
        sa.Column("title", sa.String(255), nullable=False),
        sa.Column("suggestions", sa.JSON(), nullable=True),
        sa.Column("created_at", UTC, nullable=False),
        _account_fk("print_jobs"),
        sa.ForeignKeyConstraint(["workstation_id"], ["print_workstations.id"],
                                name="fk_print_jobs_workstation_id_print_workstations", ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["mailbox_id"], ["mailboxes.id"], name="fk_print_jobs_mailbox_id_mailboxes",
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_print_jobs"),
    )
    op.create_index("ix_print_jobs_account_id", "print_jobs", ["account_id"])
    op.create_index("ix_print_jobs_message_id", "print_jobs", ["message_id"])
    op.create_table(
        "notify_prefs",
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("email", sa.Boolean(), nullable=False),
        sa.Column("sms", sa.Boolean(), nullable=False),
        sa.Column("push", sa.Boolean(), nullable=False),
        sa.Column("quiet_start", sa.String(5), nullable=True),
        sa.Column("quiet_end", sa.String(5), nullable=True),
        sa.Column("updated_at", UTC, nullable=False),
        _account_fk("notify_prefs"),
        sa.PrimaryKeyConstraint("account_id", name="pk_notify_prefs"),
    )
    op.create_table(
        "notify_state",
        sa.Column("account_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("cursor", sa.BigInteger(), nullable=False),
        sa.Column("pending_email", sa.Integer(), nullable=False),
        sa.Column("pending_sms", sa.Integer(), nullable=False),
        sa.Column("pending_push", sa.Integer(), nullable=False),
        sa.Column("last_email_at", UTC, nullable=True),
        sa.Column("last_sms_at", UTC, nullable=True),
        sa.Column("last_push_at", UTC, nullable=True),
        sa.PrimaryKeyConstraint("account_id", name="pk_notify_state"),
    )
    op.create_table(
        "push_subscriptions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("endpoint", sa.String(1000), nullable=False),
        sa.Column("p256dh", sa.String(200), nullable=False),
        sa.Column("auth", sa.String(100), nullable=False),
        sa.Column("user_agent", sa.String(255), nullable=True),
        sa.Column("created_at", UTC, nullable=False),
        _account_fk("push_subscriptions"),
        sa.PrimaryKeyConstraint("id", name="pk_push_subscriptions"),
        sa.UniqueConstraint("endpoint", name="uq_push_subscriptions_endpoint"),
    )
    op.create_index("ix_push_subscriptions_account_id", "push_subscriptions", ["account_id"])


def downgrade() -> None:
    for table in ("push_subscriptions", "notify_state", "notify_prefs", "print_jobs", "print_workstations"):
        op.drop_table(table)
