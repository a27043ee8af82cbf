"""Video calls and teleconsultations (issue 17).

Revision ID: 0009_video
Revises: 0008_patients, 0008_reach
"""

import sqlalchemy as sa
from alembic import op

revision = "0009_video"
down_revision = ("0008_patients", "0008_reach")
branch_labels = None
depends_on = None

UTC = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "calls",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("context", sa.String(20), nullable=False),
        sa.Column("context_id", sa.Integer(), nullable=False),
        sa.Column("patient_id", sa.Integer(), nullable=True),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("started_by", sa.Integer(), nullable=True),
        sa.Column("started_at", UTC, nullable=False),
        sa.Column("ended_at", UTC, nullable=True),
        sa.Column("ended_by", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["patient_id"], ["patients.id"], name="fk_calls_patient_id_patients"),
        sa.ForeignKeyConstraint(["started_by"], ["accounts.id"], name="fk_calls_started_by_accounts"),
        sa.ForeignKeyConstraint(["ended_by"], ["accounts.id"], name="fk_calls_ended_by_accounts"),
        sa.PrimaryKeyConstraint("id", name="pk_calls"),
    )
    op.create_index("ix_calls_context", "calls", ["context", "context_id"])
    op.create_index("ix_calls_patient_id", "calls", ["patient_id"])
    op.create_table(
        "call_members",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("call_id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=True),
        sa.Column("is_patient", sa.Boolean(), nullable=False),
        sa.Column("name", sa.String(300), nullable=False),
        sa.Column("peer", sa.String(40), nullable=False),
        sa.Column("joined_at", UTC, nullable=True),
        sa.Column("left_at", UTC, nullable=True),
        sa.Column("declined_at", UTC, nullable=True),
        sa.ForeignKeyConstraint(["call_id"], ["calls.id"], name="fk_call_members_call_id_calls", ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name="fk_call_members_account_id_accounts"),
        sa.PrimaryKeyConstraint("id", name="pk_call_members"),
        sa.UniqueConstraint("call_id", "account_id", name="uq_call_members_call_id_account_id"),
        sa.UniqueConstraint("peer", name="uq_call_members_peer"),
    )
    op.create_index("ix_call_members_call_id", "call_members", ["call_id"])
    op.create_table(
        "teleconsultations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("created_by", sa.Integer(), nullable=False),
        sa.Column("patient_id", sa.Integer(), nullable=True),
        sa.Column("family_name", sa.String(100), nullable=False),
        sa.Column("given_names", sa.String(200), nullable=False),
        sa.Column("email", sa.String(320), nullable=True),
        sa.Column("phone", sa.String(30), nullable=True),
        sa.Column("at", UTC, nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("browser_hash", sa.String(64), nullable=True),
        sa.Column("state", sa.String(10), nullable=False),
        sa.Column("waiting_since", UTC, nullable=True),
        sa.Column("call_id", sa.Integer(), nullable=True),
        sa.Column("expires_at", UTC, nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        sa.ForeignKeyConstraint(["created_by"], ["accounts.id"], name="fk_teleconsultations_created_by_accounts"),
        sa.ForeignKeyConstraint(["patient_id"], ["patients.id"], name="fk_teleconsultations_patient_id_patients"),
        sa.ForeignKeyConstraint(["call_id"], ["calls.id"], name="fk_teleconsultations_call_id_calls"),
        sa.PrimaryKeyConstraint("id", name="pk_teleconsultations"),
        sa.UniqueConstraint("token_hash", name="uq_teleconsultations_token_hash"),
    )
    op.create_index("ix_teleconsultations_created_by", "teleconsultations", ["created_by"])


def downgrade() -> None:
    op.drop_table("teleconsultations")
    op.drop_table("call_members")
    op.drop_table("calls")
