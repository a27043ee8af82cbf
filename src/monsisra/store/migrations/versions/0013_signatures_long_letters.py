"""Search signatures that still filter on long letters (PostgreSQL): 512 bits instead of 256,
a second bit for the first six characters of each word, and no bit for words shorter than four.

The 256-bit signature of migration 0012 was sized on the benchmark's ~52-word messages (17 % of
its bits set). A hospital letter of 600 words (318 distinct lexemes) sets 70 % of them, one of
1,000 words 80 %: the signature then keeps as candidates 75–84 % of the messages that do not hold
a query word (``bench/results/signature_fill.md``), and the signature windows cost nearly what
the plain windows cost. Part of that was never the width: four-character prefixes collide in
real words (« insuffisance » / « insuline », « cardiaque » / « cardiologie »), and every message
set bits for its words of one to three characters (le, de, et, mg: about a quarter of its
lexemes), which no signed query word (four characters or more) can ever match.

Now each lexeme of four characters or more sets the bit of its first four characters and, from
six characters on, the bit of its first six (the same hash over six characters), in 512 bits
(eight 64-bit words ``sig0``–``sig7``; bit p is bit 63 - p % 64 of word p // 64). A query word of
six characters or more asks both bits. False positives for one query word (mean over 214 words):
benchmark messages 20 % → 3 %, 600-word letters 75 % → 37 %, 1,000-word letters 84 % → 45 %.
The answer stays exact: a message holding a word that starts with a signed query term holds a
lexeme of at least the term's length whose first four (and six) characters are the term's.

Cost: 32 more bytes per (mailbox, message) row and its primary key (about +45 % on the table).
The migration rebuilds the table and its triggers as 0012 did, then analyses it (its backfill
took 8 min at 2M messages on a loaded host, 2.7 times 0012's on the same store: expect 10–15 min
at 10M); the downgrade rebuilds 0012's.

Revision ID: 0013_signatures_long_letters
Revises: 0012_search_signatures
"""

import importlib.util
from pathlib import Path

from alembic import op

revision = "0013_signatures_long_letters"
down_revision = "0012_search_signatures"
branch_labels = None
depends_on = None

WIDTH = 512
WORDS = WIDTH // 64


def _m0012():
    path = Path(__file__).with_name("0012_search_signatures.py")
    spec = importlib.util.spec_from_file_location("monsisra_migration_0012", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Keep in step with services.messages.search.lexeme_positions (same prefixes, hash and width).
# h4 is the polynomial hash (base 31, code points) of the first four characters, h6 of the first
# six; a position is the top 9 bits of Knuth's multiplicative hash of h mod 2^31 - 1.
SIGNATURE_FUNCTION = f"""
CREATE FUNCTION search_signature(v tsvector) RETURNS bigint[] LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT ARRAY[{", ".join(f"substring(b from {64 * k + 1} for 64)::bigint" for k in range(WORDS))}]
FROM (SELECT coalesce(bit_or(B'1'::bit({WIDTH}) >> (h % 2147483647 * 2654435761 % 4294967296 >> 23)::int),
                      0::bit({WIDTH})) AS b
      FROM (SELECT l, ((ascii(substr(l, 1, 1))::bigint * 31 + ascii(substr(l, 2, 1))) * 31
                       + ascii(substr(l, 3, 1))) * 31 + ascii(substr(l, 4, 1)) AS h4
            FROM unnest(tsvector_to_array(v)) AS l
            WHERE length(l) >= 4 AND l NOT LIKE 'zzmbx%') AS w,
           LATERAL (VALUES (h4), (CASE WHEN length(l) >= 6
                                       THEN (h4 * 31 + ascii(substr(l, 5, 1))) * 31 + ascii(substr(l, 6, 1)) END)
                   ) AS x(h)
      WHERE h IS NOT NULL) AS signature
$$"""

_COLUMNS = ", ".join(f"sig{k}" for k in range(WORDS))
_FROM_ARRAY = ", ".join(f"{{a}}[{k + 1}]" for k in range(WORDS))


def create() -> None:
    """Function, table (backfilled), primary key and triggers of the 512-bit signatures."""
    print("messages: rebuilding the search signatures of every mailbox, 512 bits "
          "(about 1 to 1.5 min per million messages)…", flush=True)
    op.execute(SIGNATURE_FUNCTION)
    op.execute("CREATE TABLE search_signatures (mailbox_id integer NOT NULL, message_id integer NOT NULL, "
               + ", ".join(f"sig{k} bigint NOT NULL" for k in range(WORDS)) + ")")
    op.execute("SET LOCAL maintenance_work_mem = '256MB'")
    op.execute("""
        CREATE TEMPORARY TABLE message_signatures ON COMMIT DROP AS
        SELECT id, search_signature(search_vector) AS sig FROM messages""")
    op.execute(f"""
        INSERT INTO search_signatures (mailbox_id, message_id, {_COLUMNS})
        SELECT DISTINCT d.mailbox_id, d.message_id, {_FROM_ARRAY.format(a="s.sig")}
        FROM deliveries d JOIN message_signatures s ON s.id = d.message_id""")
    op.execute("DROP TABLE message_signatures")
    op.execute("ALTER TABLE search_signatures ADD CONSTRAINT pk_search_signatures "
               f"PRIMARY KEY (mailbox_id, message_id) INCLUDE ({_COLUMNS})")
    # The triggers of 0012, on eight words.
    op.execute(f"""
        CREATE FUNCTION search_signatures_added() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO search_signatures (mailbox_id, message_id, {_COLUMNS})
            SELECT NEW.mailbox_id, NEW.message_id, {_FROM_ARRAY.format(a="g.sig")}
            FROM messages m, search_signature(m.search_vector) AS g(sig) WHERE m.id = NEW.message_id
            ON CONFLICT (mailbox_id, message_id) DO NOTHING;
            RETURN NULL;
        END $$""")
    sets = ", ".join(f"sig{k} = fresh[{k + 1}]" for k in range(WORDS))
    op.execute(f"""
        CREATE FUNCTION search_signatures_rewritten() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE
            fresh bigint[] := search_signature(NEW.search_vector);
        BEGIN
            IF fresh IS DISTINCT FROM search_signature(OLD.search_vector) THEN
                UPDATE search_signatures SET {sets}
                WHERE message_id = NEW.id
                  AND mailbox_id IN (SELECT mailbox_id FROM deliveries WHERE message_id = NEW.id);
            END IF;
            RETURN NULL;
        END $$""")
    _m0012().create_triggers()
    # The planner's statistics now, not at autovacuum's next pass (which also sets the visibility
    # map that the windows' index-only scans rely on, soon after this insert-only table's commit).
    op.execute("ANALYZE search_signatures")


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        return
    _m0012().downgrade()  # same names: triggers, functions and table of the 256-bit signatures
    create()


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        return
    m = _m0012()
    m.downgrade()  # drops these (the names are 0012's)
    m.upgrade()
