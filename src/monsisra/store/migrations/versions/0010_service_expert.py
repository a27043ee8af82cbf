"""A service mailbox's expert declaration (specialties, documents, urgent contact, answer time)

Revision ID: 0010_service_expert
Revises: 0009_teleexpertise, 0009_video
"""

import sqlalchemy as sa
from alembic import op

revision = "0010_service_expert"
down_revision = ("0009_teleexpertise", "0009_video")
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "service_experts",
        sa.Column("mailbox_id", sa.Integer(), nullable=False),
        sa.Column("declaration", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["mailbox_id"], ["mailboxes.id"], name="fk_service_experts_mailbox_id_mailboxes",
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["updated_by"], ["accounts.id"], name="fk_service_experts_updated_by_accounts"),
        sa.PrimaryKeyConstraint("mailbox_id", name="pk_service_experts"),
    )


def downgrade() -> None:
    op.drop_table("service_experts")
