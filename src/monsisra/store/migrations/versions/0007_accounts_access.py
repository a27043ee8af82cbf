"""Identity and access: the audit log's hash chain (and the mailbox acted in), password reset
links, delegates' rights, ended accesses, remembered devices, live sockets, LDAP accounts,
the mailbox an account lands in, and what the sessions page shows of a token

Revision ID: 0007_accounts_access
Revises: 0006_web_trash
"""

import sqlalchemy as sa
from alembic import op

from monsisra.domain import audit_chain

revision = "0007_accounts_access"
down_revision = "0006_web_trash"
branch_labels = None
depends_on = None

UTC = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("accounts") as batch:
        batch.add_column(sa.Column("auth_source", sa.String(10), nullable=False, server_default="local"))
        batch.add_column(sa.Column("password_changed_at", UTC, nullable=True))
        batch.add_column(sa.Column("default_mailbox_id", sa.Integer(), nullable=True))
    with op.batch_alter_table("tokens") as batch:
        batch.add_column(sa.Column("user_agent", sa.String(255), nullable=True))
        batch.add_column(sa.Column("last_used_at", UTC, nullable=True))
    with op.batch_alter_table("mailbox_access") as batch:
        batch.add_column(sa.Column("rights", sa.String(40), nullable=True))
        batch.add_column(sa.Column("granted_by", sa.Integer(), nullable=True))
    with op.batch_alter_table("audit_log") as batch:
        batch.add_column(sa.Column("mailbox_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("seq", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("prev_hash", sa.String(64), nullable=True))
        batch.add_column(sa.Column("hash", sa.String(64), nullable=True))
        batch.create_unique_constraint("uq_audit_log_seq", ["seq"])
        batch.create_index("ix_audit_log_mailbox", ["mailbox_id", "id"], unique=False)

    op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_head"),
    )
    op.create_table(
        "password_resets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("expires_at", UTC, nullable=False),
        sa.Column("used_at", UTC, nullable=True),
        sa.Column("client", sa.String(64), nullable=True),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name="fk_password_resets_account_id_accounts",
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_password_resets"),
        sa.UniqueConstraint("token_hash", name="uq_password_resets_token_hash"),
    )
    op.create_index("ix_password_resets_account_id", "password_resets", ["account_id"])
    op.create_table(
        "revoked_access",
        sa.Column("mailbox_id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("access", sa.String(10), nullable=False),
        sa.Column("revoked_at", UTC, nullable=False),
        sa.Column("revoked_by", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["mailbox_id"], ["mailboxes.id"], name="fk_revoked_access_mailbox_id_mailboxes",
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name="fk_revoked_access_account_id_accounts",
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("mailbox_id", "account_id", name="pk_revoked_access"),
    )
    op.create_index("ix_revoked_access_account_id", "revoked_access", ["account_id"])
    op.create_table(
        "devices",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("device_hash", sa.String(64), nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("last_used_at", UTC, nullable=True),
        sa.Column("expires_at", UTC, nullable=False),
        sa.Column("revoked_at", UTC, nullable=True),
        sa.Column("client", sa.String(64), nullable=True),
        sa.Column("user_agent", sa.String(255), nullable=True),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name="fk_devices_account_id_accounts",
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_devices"),
        sa.UniqueConstraint("device_hash", name="uq_devices_device_hash"),
    )
    op.create_index("ix_devices_account_id", "devices", ["account_id"])
    op.create_table(
        "live_sockets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("token_id", sa.Integer(), nullable=True),
        sa.Column("opened_at", UTC, nullable=False),
        sa.Column("seen_at", UTC, nullable=False),
        sa.Column("client", sa.String(64), nullable=True),
        sa.Column("user_agent", sa.String(255), nullable=True),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name="fk_live_sockets_account_id_accounts",
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["token_id"], ["tokens.id"], name="fk_live_sockets_token_id_tokens",
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_live_sockets"),
    )
    op.create_index("ix_live_sockets_account_id", "live_sockets", ["account_id"])
    op.create_index("ix_live_sockets_token_id", "live_sockets", ["token_id"])

    _chain_existing_entries()


def _chain_existing_entries() -> None:
    """The entries written before the chain existed become its beginning, in id order."""
    conn = op.get_bind()
    log = sa.table("audit_log", sa.column("id", sa.BigInteger), sa.column("at", UTC),
                   sa.column("account_id", sa.Integer), sa.column("action", sa.String),
                   sa.column("object_type", sa.String), sa.column("object_id", sa.String),
                   sa.column("patient_id", sa.Integer), sa.column("mailbox_id", sa.Integer),
                   sa.column("client", sa.String), sa.column("detail", sa.JSON), sa.column("seq", sa.BigInteger),
                   sa.column("prev_hash", sa.String), sa.column("hash", sa.String))
    seq, last = 0, audit_chain.GENESIS
    after = 0
    while True:
        rows = conn.execute(sa.select(log).where(log.c.id > after).order_by(log.c.id).limit(5000)).mappings().all()
        if not rows:
            break
        entries = [dict(r) for r in rows]
        seq, last = audit_chain.link(entries, seq, last)
        conn.execute(sa.update(log).where(log.c.id == sa.bindparam("_id"))
                     .values(seq=sa.bindparam("seq"), prev_hash=sa.bindparam("prev_hash"), hash=sa.bindparam("hash")),
                     [{"_id": e["id"], "seq": e["seq"], "prev_hash": e["prev_hash"], "hash": e["hash"]} for e in entries])
        after = rows[-1]["id"]
    conn.execute(sa.text("INSERT INTO audit_head (id, seq, hash) VALUES (1, :seq, :hash)"), {"seq": seq, "hash": last})


def downgrade() -> None:
    for table in ("live_sockets", "devices", "revoked_access", "password_resets", "audit_head"):
        op.drop_table(table)
    with op.batch_alter_table("audit_log") as batch:
        batch.drop_index("ix_audit_log_mailbox")
        batch.drop_constraint("uq_audit_log_seq", type_="unique")
        for column in ("hash", "prev_hash", "seq", "mailbox_id"):
            batch.drop_column(column)
    with op.batch_alter_table("mailbox_access") as batch:
        batch.drop_column("granted_by")
        batch.drop_column("rights")
    with op.batch_alter_table("tokens") as batch:
        batch.drop_column("last_used_at")
        batch.drop_column("user_agent")
    with op.batch_alter_table("accounts") as batch:
        for column in ("default_mailbox_id", "password_changed_at", "auth_source"):
            batch.drop_column(column)
