"""MSSanté gateway: raw inbound messages kept in the database (one fsync with their rows)

Revision ID: 0004_gateway_raw
Revises: 0003_gateway
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_gateway_raw"
down_revision = "0003_gateway"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "gw_raw",
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("sha256", name="pk_gw_raw"),
    )


def downgrade() -> None:
    op.drop_table("gw_raw")
