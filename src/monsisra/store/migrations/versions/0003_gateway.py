"""MSSanté gateway: trusted domains, inbound audit/idempotence, outbound attempts, MDN jobs

Revision ID: 0003_gateway
Revises: 0001_core
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_gateway"
down_revision = "0001_core"
branch_labels = None
depends_on = None

UTC = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "gw_trusted_domains",
        sa.Column("domain", sa.String(253), nullable=False),
        sa.Column("note", sa.String(200), nullable=False),
        sa.Column("added_at", UTC, nullable=False),
        sa.PrimaryKeyConstraint("domain", name="pk_gw_trusted_domains"),
    )
    op.create_table(
        "gw_inbound",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("mailbox_id", sa.Integer(), nullable=False),
        sa.Column("rfc_message_id", sa.String(255), nullable=False),
        sa.Column("message_id", sa.Integer(), nullable=True),
        sa.Column("raw_sha256", sa.String(64), nullable=False),
        sa.Column("raw_size", sa.BigInteger(), nullable=False),
        sa.Column("mail_from", sa.String(254), nullable=False),
        sa.Column("peer", sa.String(80), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("received_at", UTC, nullable=False),
        sa.ForeignKeyConstraint(["mailbox_id"], ["mailboxes.id"], name="fk_gw_inbound_mailbox_id_mailboxes",
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["message_id"], ["messages.id"], name="fk_gw_inbound_message_id_messages",
                                ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name="pk_gw_inbound"),
        sa.UniqueConstraint("mailbox_id", "rfc_message_id", name="uq_gw_inbound_mailbox_id_rfc_message_id"),
    )
    op.create_index("ix_gw_inbound_message_id", "gw_inbound", ["message_id"])
    op.create_table(
        "gw_mdn",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("message_id", sa.Integer(), nullable=False),
        sa.Column("mailbox_id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=True),
        sa.Column("notify_to", sa.String(254), nullable=False),
        sa.Column("status", sa.String(10), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", UTC, nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("created_at", UTC, nullable=False),
        sa.ForeignKeyConstraint(["message_id"], ["messages.id"], name="fk_gw_mdn_message_id_messages",
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["mailbox_id"], ["mailboxes.id"], name="fk_gw_mdn_mailbox_id_mailboxes",
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name="fk_gw_mdn_account_id_accounts"),
        sa.PrimaryKeyConstraint("id", name="pk_gw_mdn"),
        sa.UniqueConstraint("message_id", "mailbox_id", name="uq_gw_mdn_message_id_mailbox_id"),
    )
    op.create_index("ix_gw_mdn_due", "gw_mdn", ["next_attempt_at"],
                    sqlite_where=sa.text("status IN ('queued', 'retrying')"),
                    postgresql_where=sa.text("status IN ('queued', 'retrying')"))
    op.create_table(
        "gw_attempts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("recipient_id", sa.Integer(), nullable=True),
        sa.Column("mdn_id", sa.Integer(), nullable=True),
        sa.Column("at", UTC, nullable=False),
        sa.Column("host", sa.String(260), nullable=False),
        sa.Column("code", sa.Integer(), nullable=True),
        sa.Column("outcome", sa.String(12), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["recipient_id"], ["recipients.id"], name="fk_gw_attempts_recipient_id_recipients",
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["mdn_id"], ["gw_mdn.id"], name="fk_gw_attempts_mdn_id_gw_mdn", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_gw_attempts"),
    )
    op.create_index("ix_gw_attempts_recipient_id", "gw_attempts", ["recipient_id"])
    op.create_index("ix_gw_attempts_mdn_id", "gw_attempts", ["mdn_id"])


def downgrade() -> None:
    op.drop_table("gw_attempts")
    op.drop_table("gw_mdn")
    op.drop_table("gw_inbound")
    op.drop_table("gw_trusted_domains")
