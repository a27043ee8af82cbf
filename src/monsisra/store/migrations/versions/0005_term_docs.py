"""Directory vocabulary: how many entries each word is found in (a common word is taken as
spelled right, and search skips looking for its typos)

Revision ID: 0005_term_docs
Revises: 0002_directory
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_term_docs"
down_revision = "0002_directory"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("dir_term_keys") as batch:
        batch.add_column(sa.Column("docs", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("dir_term_keys") as batch:
        batch.drop_column("docs")
