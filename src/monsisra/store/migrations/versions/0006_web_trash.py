"""The bin (corbeille): when a delivery went to it, and the index of the trash view

Revision ID: 0006_web_trash
Revises: 0005_term_docs
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_web_trash"
down_revision = "0005_term_docs"
branch_labels = None
depends_on = None

TRASH = "deleted = true"


def upgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True))
    # Rows deleted before the bin existed start their 30 days now (never purged at once).
    op.execute(sa.text("UPDATE deliveries SET deleted_at = CURRENT_TIMESTAMP WHERE deleted = true"))
    op.create_index("ix_deliveries_view_trash", "deliveries", ["mailbox_id", "deleted_at", "id"], unique=False,
                    sqlite_where=sa.text(TRASH), postgresql_where=sa.text(TRASH))


def downgrade() -> None:
    op.drop_index("ix_deliveries_view_trash", table_name="deliveries", sqlite_where=sa.text(TRASH),
                  postgresql_where=sa.text(TRASH))
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("deleted_at")
