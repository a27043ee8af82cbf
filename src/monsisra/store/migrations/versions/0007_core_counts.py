"""Counts of each mailbox kept by the database itself: one row per (mailbox, state) with its number
of deliveries, maintained by triggers in the same transaction as every insert, change or removal of
a delivery, whatever code path makes it. Reading a mailbox's counts costs the same at any size.

Revision ID: 0007_core_counts
Revises: 0006_web_trash
"""

import sqlalchemy as sa
from alembic import op

revision = "0007_core_counts"
down_revision = "0006_web_trash"
branch_labels = None
depends_on = None

KEY = ("mailbox_id", "deleted", "role", "category", "read", "archived", "favorite", "todo")
_COLS = ", ".join(KEY)


def _match(row: str) -> str:
    return " AND ".join(f"{c} = {row}.{c}" for c in KEY)


def _values(row: str) -> str:
    return ", ".join(f"{row}.{c}" for c in KEY)


def upgrade() -> None:
    op.create_table(
        "delivery_counts",
        sa.Column("mailbox_id", sa.Integer, sa.ForeignKey("mailboxes.id", ondelete="CASCADE"), nullable=False),
        sa.Column("deleted", sa.Boolean, nullable=False),
        sa.Column("role", sa.String(5), nullable=False),
        sa.Column("category", sa.String(16), nullable=False),
        sa.Column("read", sa.Boolean, nullable=False),
        sa.Column("archived", sa.Boolean, nullable=False),
        sa.Column("favorite", sa.Boolean, nullable=False),
        sa.Column("todo", sa.Boolean, nullable=False),
        sa.Column("n", sa.BigInteger, nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint(*KEY, name="pk_delivery_counts"),
    )
    op.execute(f"INSERT INTO delivery_counts ({_COLS}, n) SELECT {_COLS}, count(*) FROM deliveries GROUP BY {_COLS}")
    changed = " OR ".join(f"OLD.{c} IS NOT NEW.{c}" for c in KEY)
    upsert = (f"INSERT INTO delivery_counts ({_COLS}, n) VALUES ({_values('NEW')}, 1) "
              f"ON CONFLICT ({_COLS}) DO UPDATE SET n = delivery_counts.n + 1")
    decrement = f"UPDATE delivery_counts SET n = n - 1 WHERE {_match('OLD')}"
    if op.get_bind().dialect.name == "sqlite":
        op.execute(f"CREATE TRIGGER deliveries_count_insert AFTER INSERT ON deliveries BEGIN {upsert}; END")
        op.execute(f"CREATE TRIGGER deliveries_count_delete AFTER DELETE ON deliveries BEGIN {decrement}; END")
        op.execute(f"CREATE TRIGGER deliveries_count_update AFTER UPDATE OF {_COLS} ON deliveries "
                   f"WHEN {changed} BEGIN {decrement}; {upsert}; END")
        return
    op.execute(f"""
        CREATE FUNCTION deliveries_count() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP <> 'INSERT' THEN {decrement}; END IF;
            IF TG_OP <> 'DELETE' THEN {upsert}; END IF;
            RETURN NULL;
        END $$""")
    distinct = f"(({_values('OLD')}) IS DISTINCT FROM ({_values('NEW')}))"
    op.execute("CREATE TRIGGER deliveries_count_insert AFTER INSERT ON deliveries "
               "FOR EACH ROW EXECUTE FUNCTION deliveries_count()")
    op.execute("CREATE TRIGGER deliveries_count_delete AFTER DELETE ON deliveries "
               "FOR EACH ROW EXECUTE FUNCTION deliveries_count()")
    op.execute(f"CREATE TRIGGER deliveries_count_update AFTER UPDATE OF {_COLS} ON deliveries "
               f"FOR EACH ROW WHEN {distinct} EXECUTE FUNCTION deliveries_count()")


def downgrade() -> None:
    for name in ("insert", "delete", "update"):
        if op.get_bind().dialect.name == "sqlite":
            op.execute(f"DROP TRIGGER IF EXISTS deliveries_count_{name}")
        else:
            op.execute(f"DROP TRIGGER IF EXISTS deliveries_count_{name} ON deliveries")
    if op.get_bind().dialect.name != "sqlite":
        op.execute("DROP FUNCTION IF EXISTS deliveries_count()")
    op.drop_table("delivery_counts")
