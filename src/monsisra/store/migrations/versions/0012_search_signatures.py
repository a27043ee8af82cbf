"""Search signatures of every (mailbox, message) on PostgreSQL: a 256-bit summary of the
message's words kept by the database itself, so that the windowed search of a large mailbox
skips, without reading the message, nearly every row that cannot hold the words.

``search_signatures`` has one row per (mailbox, message) that has a delivery; its signature
(256 bits as four 64-bit words ``sig0``–``sig3``: bit p is bit 63 - p % 64 of word p // 64) sets, for each lexeme of ``messages.search_vector`` (mailbox tokens aside), the bit that the
lexeme's first four characters hash to (``search_signature``; the same hash in Python:
``services.messages.search.signature_bits``). A message holding a word that starts with a
four-character prefix has that prefix's bit set, so ``sig & mask = mask`` (word by word) never drops a match;
the rows it keeps are tested against the words as before (``ts_match_vq``), so the answer is
exact. Triggers keep it in the same transaction as every insert, change or removal of a
delivery and every change of a message's text, whatever code path makes it. The migration
fills it for the existing deliveries (one signature per message, then one row per pair).

Size: one row per (mailbox, message) of about 70 bytes, plus its primary key holding the
signature too (index-only walks): about 140 bytes per delivery. SQLite keeps its FTS5 path:
nothing is created there.

Revision ID: 0012_search_signatures
Revises: 0011_directory_word_counts
"""

from alembic import op

revision = "0012_search_signatures"
down_revision = "0011_directory_word_counts"
branch_labels = None
depends_on = None

# Keep in step with services.messages.search.signature_bits (same prefix, hash and width).
SIGNATURE_FUNCTION = """
CREATE FUNCTION search_signature(v tsvector) RETURNS bigint[] LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT ARRAY[substring(b from 1 for 64)::bigint, substring(b from 65 for 64)::bigint,
             substring(b from 129 for 64)::bigint, substring(b from 193 for 64)::bigint]
FROM (SELECT coalesce(bit_or(B'1'::bit(256) >> (((ascii(substr(l, 1, 1))::bigint * 29791
        + ascii(substr(l, 2, 1))::bigint * 961 + ascii(substr(l, 3, 1)) * 31 + ascii(substr(l, 4, 1)))
        % 2147483647 * 2654435761 % 4294967296 >> 24)::int)), 0::bit(256)) AS b
      FROM unnest(tsvector_to_array(v)) AS l WHERE l NOT LIKE 'zzmbx%') AS signature
$$"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        return
    print("messages: building the search signatures of every mailbox (about 30 s per million messages)…",
          flush=True)
    op.execute(SIGNATURE_FUNCTION)
    op.execute("""
        CREATE TABLE search_signatures (
            mailbox_id integer NOT NULL,
            message_id integer NOT NULL,
            sig0 bigint NOT NULL,
            sig1 bigint NOT NULL,
            sig2 bigint NOT NULL,
            sig3 bigint NOT NULL
        )""")
    # Backfill: each message's signature once, then one row per (mailbox, message) delivered;
    # the primary key is built afterwards (one sort instead of 24M insertions at 10M messages).
    op.execute("SET LOCAL maintenance_work_mem = '256MB'")
    op.execute("""
        CREATE TEMPORARY TABLE message_signatures ON COMMIT DROP AS
        SELECT id, search_signature(search_vector) AS sig FROM messages""")
    op.execute("""
        INSERT INTO search_signatures (mailbox_id, message_id, sig0, sig1, sig2, sig3)
        SELECT DISTINCT d.mailbox_id, d.message_id, s.sig[1], s.sig[2], s.sig[3], s.sig[4]
        FROM deliveries d JOIN message_signatures s ON s.id = d.message_id""")
    op.execute("DROP TABLE message_signatures")
    op.execute("ALTER TABLE search_signatures ADD CONSTRAINT pk_search_signatures "
               "PRIMARY KEY (mailbox_id, message_id) INCLUDE (sig0, sig1, sig2, sig3)")
    # Row triggers: the application inserts a send's deliveries by executemany (one statement a
    # row), where a statement trigger with a transition table costs ~0.7 ms a row, this ~0.2.
    op.execute("""
        CREATE FUNCTION search_signatures_added() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO search_signatures (mailbox_id, message_id, sig0, sig1, sig2, sig3)
            SELECT NEW.mailbox_id, NEW.message_id, g.sig[1], g.sig[2], g.sig[3], g.sig[4]
            FROM messages m, search_signature(m.search_vector) AS g(sig) WHERE m.id = NEW.message_id
            ON CONFLICT (mailbox_id, message_id) DO NOTHING;
            RETURN NULL;
        END $$""")
    op.execute("""
        CREATE FUNCTION search_signatures_rewritten() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE
            fresh bigint[] := search_signature(NEW.search_vector);
        BEGIN
            IF fresh IS DISTINCT FROM search_signature(OLD.search_vector) THEN
                UPDATE search_signatures SET sig0 = fresh[1], sig1 = fresh[2], sig2 = fresh[3], sig3 = fresh[4]
                WHERE message_id = NEW.id
                  AND mailbox_id IN (SELECT mailbox_id FROM deliveries WHERE message_id = NEW.id);
            END IF;
            RETURN NULL;
        END $$""")
    create_triggers()


def create_triggers() -> None:
    """The removal and emptying functions (the same at any width) and the triggers that keep
    ``search_signatures`` in step with deliveries and message texts (0013 calls it too: its
    functions at 512 bits have the same names)."""
    op.execute("""
        CREATE FUNCTION search_signatures_removed() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            DELETE FROM search_signatures g
            WHERE g.mailbox_id = OLD.mailbox_id AND g.message_id = OLD.message_id
              AND NOT EXISTS (SELECT 1 FROM deliveries d
                              WHERE d.mailbox_id = OLD.mailbox_id AND d.message_id = OLD.message_id);
            RETURN NULL;
        END $$""")
    op.execute("""
        CREATE FUNCTION search_signatures_emptied() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            TRUNCATE search_signatures;
            RETURN NULL;
        END $$""")
    op.execute("CREATE TRIGGER deliveries_signature_insert AFTER INSERT ON deliveries "
               "FOR EACH ROW EXECUTE FUNCTION search_signatures_added()")
    op.execute("CREATE TRIGGER deliveries_signature_delete AFTER DELETE ON deliveries "
               "FOR EACH ROW EXECUTE FUNCTION search_signatures_removed()")
    # A delivery moved to another mailbox (or message): removed from the old, added to the new.
    for trigger, function in (("deliveries_signature_update_from", "search_signatures_removed"),
                              ("deliveries_signature_update_to", "search_signatures_added")):
        op.execute(f"CREATE TRIGGER {trigger} AFTER UPDATE OF mailbox_id, message_id ON deliveries "
                   "FOR EACH ROW WHEN (OLD.mailbox_id IS DISTINCT FROM NEW.mailbox_id "
                   f"OR OLD.message_id IS DISTINCT FROM NEW.message_id) EXECUTE FUNCTION {function}()")
    op.execute("CREATE TRIGGER deliveries_signature_truncate AFTER TRUNCATE ON deliveries "
               "FOR EACH STATEMENT EXECUTE FUNCTION search_signatures_emptied()")
    op.execute("CREATE TRIGGER messages_signature_update AFTER UPDATE OF search_text ON messages "
               "FOR EACH ROW WHEN (OLD.search_text IS DISTINCT FROM NEW.search_text) "
               "EXECUTE FUNCTION search_signatures_rewritten()")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        return
    for trigger, table in (("deliveries_signature_insert", "deliveries"), ("deliveries_signature_delete", "deliveries"),
                           ("deliveries_signature_update_from", "deliveries"),
                           ("deliveries_signature_update_to", "deliveries"), ("deliveries_signature_truncate", "deliveries"),
                           ("messages_signature_update", "messages")):
        op.execute(f"DROP TRIGGER IF EXISTS {trigger} ON {table}")
    for function in ("search_signatures_added", "search_signatures_removed", "search_signatures_rewritten",
                     "search_signatures_emptied"):
        op.execute(f"DROP FUNCTION IF EXISTS {function}()")
    op.execute("DROP TABLE IF EXISTS search_signatures")
    op.execute("DROP FUNCTION IF EXISTS search_signature(tsvector)")
