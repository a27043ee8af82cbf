"""QRESYNC's expunge history (issue 16): the uids that stopped naming a message, with the modseq
of their removal, and per mailbox the modseq from which that history is whole (today's, for
the mailboxes that exist now).

Revision ID: 0010_imap_vanished
Revises: 0010_imap_favorites
"""

import sqlalchemy as sa
from alembic import op

revision = "0010_imap_vanished"
down_revision = "0010_imap_favorites"
branch_labels = None
depends_on = None

UTC = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "imap_vanished",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("mailbox_id", sa.Integer(), nullable=False),
        sa.Column("uid", sa.BigInteger(), nullable=False),
        sa.Column("modseq", sa.BigInteger(), nullable=False),
        sa.Column("favorites_only", sa.Boolean(), nullable=False),
        sa.Column("removed_at", UTC, nullable=False),
        sa.ForeignKeyConstraint(["mailbox_id"], ["mailboxes.id"], name="fk_imap_vanished_mailbox_id_mailboxes",
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_imap_vanished"),
    )
    op.create_index("ix_imap_vanished_mailbox_modseq", "imap_vanished", ["mailbox_id", "modseq"])
    op.create_table(
        "imap_vanished_floor",
        sa.Column("mailbox_id", sa.Integer(), nullable=False),
        sa.Column("modseq", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["mailbox_id"], ["mailboxes.id"], name="fk_imap_vanished_floor_mailbox_id_mailboxes",
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("mailbox_id", name="pk_imap_vanished_floor"),
    )
    op.execute("INSERT INTO imap_vanished_floor (mailbox_id, modseq) SELECT id, modseq FROM mailboxes")


def downgrade() -> None:
    op.drop_table("imap_vanished_floor")
    op.drop_table("imap_vanished")
