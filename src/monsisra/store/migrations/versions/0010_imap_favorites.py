"""A message's own uid in the IMAP folder Favoris (issue 16): ``deliveries.favorite_uid``, taken
from the mailbox's uids each time the message enters Favoris; today's favourites keep their uid.

Revision ID: 0010_imap_favorites
Revises: 0010_app_passwords
"""

import sqlalchemy as sa
from alembic import op

revision = "0010_imap_favorites"
down_revision = "0010_app_passwords"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain ADD COLUMN (no batch copy on SQLite: that would drop the counting triggers).
    op.add_column("deliveries", sa.Column("favorite_uid", sa.BigInteger(), nullable=True))
    op.execute("UPDATE deliveries SET favorite_uid = uid WHERE favorite")


def downgrade() -> None:
    op.drop_column("deliveries", "favorite_uid")
