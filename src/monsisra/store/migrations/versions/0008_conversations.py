"""Conversations: conversations, their participant mailboxes (joined, left, read state), their
messages and attachments; absence settings (auto-reply to conversation messages)

Revision ID: 0008_conversations
Revises: 0007_core_counts
"""

import sqlalchemy as sa
from alembic import op

revision = "0008_conversations"
down_revision = "0007_core_counts"
branch_labels = None
depends_on = None

UTC = sa.DateTime(timezone=True)
BIGID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _fk(table: str, column: str, target: str, ondelete: str | None = None) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint([column], [target], name=f"fk_{table}_{column}_{target.split('.')[0]}",
                                   ondelete=ondelete)


def upgrade() -> None:
    op.create_table(
        "conversations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("state", sa.String(8), nullable=False),
        sa.Column("patient_id", sa.Integer(), nullable=True),
        sa.Column("created_by", sa.Integer(), nullable=True),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("closed_at", UTC, nullable=True),
        sa.Column("closed_by", sa.Integer(), nullable=True),
        sa.Column("last_message_id", sa.BigInteger(), nullable=True),
        sa.Column("last_message_at", UTC, nullable=True),
        _fk("conversations", "patient_id", "patients.id"),
        _fk("conversations", "created_by", "accounts.id"),
        _fk("conversations", "closed_by", "accounts.id"),
        sa.PrimaryKeyConstraint("id", name="pk_conversations"),
    )
    op.create_index("ix_conversations_patient_id", "conversations", ["patient_id"])
    op.create_table(
        "conversation_participants",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("conversation_id", sa.Integer(), nullable=False),
        sa.Column("mailbox_id", sa.Integer(), nullable=False),
        sa.Column("joined_at", UTC, nullable=False),
        sa.Column("left_at", UTC, nullable=True),
        sa.Column("added_by", sa.Integer(), nullable=True),
        sa.Column("last_read_message_id", sa.BigInteger(), nullable=True),
        sa.Column("last_read_at", UTC, nullable=True),
        sa.Column("last_read_by", sa.Integer(), nullable=True),
        _fk("conversation_participants", "conversation_id", "conversations.id", "CASCADE"),
        _fk("conversation_participants", "mailbox_id", "mailboxes.id", "CASCADE"),
        _fk("conversation_participants", "added_by", "accounts.id"),
        _fk("conversation_participants", "last_read_by", "accounts.id"),
        sa.PrimaryKeyConstraint("id", name="pk_conversation_participants"),
        sa.UniqueConstraint("conversation_id", "mailbox_id",
                            name="uq_conversation_participants_conversation_id_mailbox_id"),
    )
    op.create_index("ix_conversation_participants_conversation_id", "conversation_participants",
                    ["conversation_id"])
    op.create_index("ix_conversation_participants_mailbox_id", "conversation_participants", ["mailbox_id"])
    op.create_table(
        "conversation_messages",
        sa.Column("id", BIGID, nullable=False),
        sa.Column("conversation_id", sa.Integer(), nullable=False),
        sa.Column("mailbox_id", sa.Integer(), nullable=True),
        sa.Column("author_account_id", sa.Integer(), nullable=True),
        sa.Column("author_name", sa.String(300), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        _fk("conversation_messages", "conversation_id", "conversations.id", "CASCADE"),
        _fk("conversation_messages", "mailbox_id", "mailboxes.id"),
        _fk("conversation_messages", "author_account_id", "accounts.id"),
        sa.PrimaryKeyConstraint("id", name="pk_conversation_messages"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_conversation_messages_conversation_id_id", "conversation_messages",
                    ["conversation_id", "id"])
    op.create_table(
        "conversation_attachments",
        sa.Column("message_id", BIGID, nullable=False),
        sa.Column("attachment_id", sa.String(32), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("thumbnail_id", sa.String(32), nullable=True),
        _fk("conversation_attachments", "message_id", "conversation_messages.id", "CASCADE"),
        _fk("conversation_attachments", "attachment_id", "attachments.id"),
        _fk("conversation_attachments", "thumbnail_id", "attachments.id"),
        sa.PrimaryKeyConstraint("message_id", "attachment_id", name="pk_conversation_attachments"),
    )
    op.create_index("ix_conversation_attachments_attachment_id", "conversation_attachments", ["attachment_id"])
    op.create_table(
        "absence_settings",
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("autoreply", sa.Boolean(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        _fk("absence_settings", "account_id", "accounts.id", "CASCADE"),
        sa.PrimaryKeyConstraint("account_id", name="pk_absence_settings"),
    )


def downgrade() -> None:
    op.drop_table("absence_settings")
    op.drop_table("conversation_attachments")
    op.drop_table("conversation_messages")
    op.drop_table("conversation_participants")
    op.drop_table("conversations")
