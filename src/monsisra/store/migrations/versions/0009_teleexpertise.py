"""Tele-expertise: requests, the steps of their exchange, billing lines (unique per act and code)

Revision ID: 0009_teleexpertise
Revises: 0007_accounts_access, 0007_authn_identity, 0008_patients, 0008_reach
"""

import sqlalchemy as sa
from alembic import op

revision = "0009_teleexpertise"
down_revision = ("0007_accounts_access", "0007_authn_identity", "0008_patients", "0008_reach")
branch_labels = None
depends_on = None

UTC = sa.DateTime(timezone=True)


def _fk(table: str, column: str, target: str, ondelete: str | None = None) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint([column], [target], name=f"fk_{table}_{column}_{target.split('.')[0]}",
                                   ondelete=ondelete)


def upgrade() -> None:
    t = "teleexpertises"
    op.create_table(
        t,
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("requester_mailbox_id", sa.Integer(), nullable=False),
        sa.Column("requester_account_id", sa.Integer(), nullable=False),
        sa.Column("expert_mailbox_id", sa.Integer(), nullable=False),
        sa.Column("patient_id", sa.Integer(), nullable=False),
        sa.Column("question", sa.Text(), nullable=False),
        sa.Column("consent_by", sa.String(16), nullable=False),
        sa.Column("consent_at", UTC, nullable=False),
        sa.Column("billing_number", sa.String(9), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("updated_at", UTC, nullable=False),
        sa.Column("due_at", UTC, nullable=True),
        sa.Column("reminded_at", UTC, nullable=True),
        sa.Column("assigned_to", sa.Integer(), nullable=True),
        sa.Column("assigned_at", UTC, nullable=True),
        sa.Column("answered_by", sa.Integer(), nullable=True),
        sa.Column("answered_at", UTC, nullable=True),
        sa.Column("expert_billing_number", sa.String(9), nullable=True),
        sa.Column("closed_at", UTC, nullable=True),
        sa.Column("decline_reason", sa.Text(), nullable=True),
        sa.Column("message_id", sa.Integer(), nullable=True),
        sa.Column("report_message_id", sa.Integer(), nullable=True),
        sa.Column("report_attachment_id", sa.String(64), nullable=True),
        sa.Column("summary_message_id", sa.Integer(), nullable=True),
        _fk(t, "requester_mailbox_id", "mailboxes.id"),
        _fk(t, "requester_account_id", "accounts.id"),
        _fk(t, "expert_mailbox_id", "mailboxes.id"),
        _fk(t, "patient_id", "patients.id"),
        _fk(t, "assigned_to", "accounts.id"),
        _fk(t, "answered_by", "accounts.id"),
        _fk(t, "message_id", "messages.id"),
        _fk(t, "report_message_id", "messages.id"),
        _fk(t, "summary_message_id", "messages.id"),
        sa.PrimaryKeyConstraint("id", name="pk_teleexpertises"),
    )
    op.create_index("ix_teleexpertises_expert_state", t, ["expert_mailbox_id", "state", "id"])
    op.create_index("ix_teleexpertises_requester_state", t, ["requester_mailbox_id", "state", "id"])
    op.create_index("ix_teleexpertises_patient_requester", t, ["patient_id", "requester_account_id", "created_at"])
    s = "teleexpertise_steps"
    op.create_table(
        s,
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("teleexpertise_id", sa.Integer(), nullable=False),
        sa.Column("action", sa.String(20), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=True),
        sa.Column("author_name", sa.String(200), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("attachments", sa.JSON(), nullable=False),
        sa.Column("message_id", sa.Integer(), nullable=True),
        sa.Column("created_at", UTC, nullable=False),
        _fk(s, "teleexpertise_id", "teleexpertises.id", "CASCADE"),
        _fk(s, "account_id", "accounts.id"),
        _fk(s, "message_id", "messages.id"),
        sa.PrimaryKeyConstraint("id", name="pk_teleexpertise_steps"),
    )
    op.create_index("ix_teleexpertise_steps_teleexpertise_id", s, ["teleexpertise_id"])
    b = "billing_lines"
    op.create_table(
        b,
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("teleexpertise_id", sa.Integer(), nullable=False),
        sa.Column("code", sa.String(4), nullable=False),
        sa.Column("amount_eur", sa.String(10), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("act_date", sa.String(10), nullable=False),
        sa.Column("patient_nir", sa.String(15), nullable=False),
        sa.Column("billing_number", sa.String(9), nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        _fk(b, "teleexpertise_id", "teleexpertises.id"),
        _fk(b, "account_id", "accounts.id"),
        sa.PrimaryKeyConstraint("id", name="pk_billing_lines"),
        sa.UniqueConstraint("teleexpertise_id", "code", name="uq_billing_lines_act_code"),
    )
    op.create_index("ix_billing_lines_account_date", b, ["account_id", "act_date"])


def downgrade() -> None:
    op.drop_table("billing_lines")
    op.drop_table("teleexpertise_steps")
    op.drop_table("teleexpertises")
