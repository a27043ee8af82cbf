"""PostgreSQL directory search: the exact number of national entries of the most common words,
per section (dir_meta ``word_counts``), so that a search for one of them knows it has more than
the total cap ("plus de 1000") without fetching a thousand matches to count them. Computed
here for an index built before this revision (a few seconds at 500,000 entries); every index
rebuild stores it again. Nothing on SQLite (its counts stop early in the FTS5 index).

Revision ID: 0011_directory_word_counts
Revises: 0010_imap_vanished, 0010_service_expert
"""

import sqlalchemy as sa
from alembic import op

from monsisra.store.directory import SECTIONS, WORD_COUNTS, word_counts_sql, word_counts_value

revision = "0011_directory_word_counts"
down_revision = ("0010_imap_vanished", "0010_service_expert")
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    if bind.execute(sa.text("SELECT 1 FROM dir_search WHERE NOT is_local LIMIT 1")).scalar() is None:
        return  # no national index yet: the first import stores the counts
    print("directory: counting the most common words of the search index…", flush=True)
    sections = {name: {w: int(n) for w, n in bind.execute(sa.text(word_counts_sql(name))).all()} for name in SECTIONS}
    bind.execute(sa.text("DELETE FROM dir_meta WHERE name = :n"), {"n": WORD_COUNTS})
    bind.execute(sa.text("INSERT INTO dir_meta (name, value) VALUES (:n, :v)"),
                 {"n": WORD_COUNTS, "v": word_counts_value(sections)})


def downgrade() -> None:
    op.get_bind().execute(sa.text("DELETE FROM dir_meta WHERE name = :n"), {"n": WORD_COUNTS})
