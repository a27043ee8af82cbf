"""Patients: folded names for search, the care team, who registered a patient, support requests

Revision ID: 0008_patients
Revises: 0008_conversations
"""

import sqlalchemy as sa
from alembic import op

revision = "0008_patients"
down_revision = "0008_conversations"
branch_labels = None
depends_on = None

UTC = sa.DateTime(timezone=True)


def _fk(table: str, column: str, target: str, ondelete: str | None = "CASCADE") -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint([column], [target], name=f"fk_{table}_{column}_{target.split('.')[0]}",
                                   ondelete=ondelete)


def _fold(text: str) -> str:
    from monsisra.domain.text import fold

    return fold(text)


def upgrade() -> None:
    with op.batch_alter_table("patients") as batch:
        batch.add_column(sa.Column("search_name", sa.String(400), nullable=False, server_default=""))
    bind = op.get_bind()
    patients = sa.table("patients", sa.column("id", sa.Integer), sa.column("ins", sa.String),
                        sa.column("family_name", sa.String), sa.column("given_names", sa.String),
                        sa.column("search_name", sa.String))
    rows = bind.execute(sa.select(patients.c.id, patients.c.ins, patients.c.family_name, patients.c.given_names)).all()
    for row in rows:
        bind.execute(patients.update().where(patients.c.id == row.id).values(
            search_name=_fold(f"{row.family_name} {row.given_names} {row.ins}")[:400]))

    op.create_table(
        "care_team",
        sa.Column("patient_id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("since", UTC, nullable=False),
        _fk("care_team", "patient_id", "patients.id"),
        _fk("care_team", "account_id", "accounts.id"),
        sa.PrimaryKeyConstraint("patient_id", "account_id", name="pk_care_team"),
    )
    op.create_index("ix_care_team_account_id", "care_team", ["account_id"])
    op.create_table(
        "patient_contacts",
        sa.Column("patient_id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        _fk("patient_contacts", "patient_id", "patients.id"),
        _fk("patient_contacts", "account_id", "accounts.id"),
        sa.PrimaryKeyConstraint("patient_id", "account_id", name="pk_patient_contacts"),
    )
    op.create_index("ix_patient_contacts_account_id", "patient_contacts", ["account_id"])
    op.create_table(
        "support_requests",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("from_mailbox_id", sa.Integer(), nullable=False),
        sa.Column("to_mailbox_id", sa.Integer(), nullable=False),
        sa.Column("author_account_id", sa.Integer(), nullable=True),
        sa.Column("patient_id", sa.Integer(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("urgency", sa.String(8), nullable=False),
        sa.Column("state", sa.String(8), nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("taken_by", sa.Integer(), nullable=True),
        sa.Column("taken_at", UTC, nullable=True),
        sa.Column("closed_by", sa.Integer(), nullable=True),
        sa.Column("closed_at", UTC, nullable=True),
        sa.Column("message_id", sa.Integer(), nullable=True),
        sa.Column("conversation_id", sa.BigInteger(), nullable=True),
        _fk("support_requests", "from_mailbox_id", "mailboxes.id", None),
        _fk("support_requests", "to_mailbox_id", "mailboxes.id", None),
        _fk("support_requests", "author_account_id", "accounts.id", None),
        _fk("support_requests", "patient_id", "patients.id", None),
        _fk("support_requests", "taken_by", "accounts.id", None),
        _fk("support_requests", "closed_by", "accounts.id", None),
        _fk("support_requests", "message_id", "messages.id", None),
        sa.PrimaryKeyConstraint("id", name="pk_support_requests"),
    )
    op.create_index("ix_support_requests_patient_id", "support_requests", ["patient_id"])
    op.create_index("ix_support_requests_to_state", "support_requests", ["to_mailbox_id", "state", "id"])
    op.create_index("ix_support_requests_from_state", "support_requests", ["from_mailbox_id", "state", "id"])


def downgrade() -> None:
    op.drop_table("support_requests")
    op.drop_table("patient_contacts")
    op.drop_table("care_team")
    with op.batch_alter_table("patients") as batch:
        batch.drop_column("search_name")
