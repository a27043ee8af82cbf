"""Directory tables: the national extractions (people, activities, organisations, services,
published mailboxes), our own mailboxes as directory entries, communes, profile cards, and the
search index with its engine-specific full-text part.

Search index (``dir_search``): one row per result entry; its ``id`` encodes the ranking
order (section, local before national, then alphabetical), so that both engines can stream
matches in id order and stop at the page end instead of sorting every match:

    id = section * SECTION_SPAN + (0 if local else NATIONAL_OFFSET) + sequence

The full-text part indexes ``text`` (folded words plus marker words for places and kinds):
an FTS5 external-content table on SQLite, a generated ``tsvector`` with a GIN index on
PostgreSQL. Both tokenise the same ``[a-z0-9]`` words, so they answer the same queries.
"""

from __future__ import annotations

import json
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from monsisra.store.models import UTC, Base, _now
from monsisra.store.types import Line, Prose

SECTION_SPAN = 10**11
NATIONAL_OFFSET = 5 * 10**10
SECTIONS = {"professionals": 1, "services": 2}
FTS_TABLE = "dir_search_fts"

BigId = sa.BigInteger().with_variant(sa.Integer, "sqlite")


class DirImportRun(Base):
    __tablename__ = "dir_import_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(sa.String(20))
    filename: Mapped[str] = mapped_column(sa.String(255))
    stamp: Mapped[str | None] = mapped_column(sa.String(12))
    started_at: Mapped[datetime] = mapped_column(UTC, default=_now)
    finished_at: Mapped[datetime | None] = mapped_column(UTC)
    report: Mapped[dict | None] = mapped_column(sa.JSON)


class DirPerson(Base):
    """A professional of the national extraction, keyed by national id (``8`` + RPPS)."""

    __tablename__ = "dir_people"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    national_id: Mapped[str] = mapped_column(sa.String(20), unique=True)
    id_type: Mapped[str] = mapped_column(sa.String(2), default="")
    pp_id: Mapped[str] = mapped_column(sa.String(20), default="")
    title: Mapped[str] = mapped_column(sa.String(40), default="")  # civilité d'exercice (Docteur…)
    civility: Mapped[str] = mapped_column(sa.String(40), default="")
    last_name: Mapped[str] = mapped_column(sa.String(120), default="")
    first_name: Mapped[str] = mapped_column(sa.String(120), default="")
    profession_code: Mapped[str] = mapped_column(sa.String(8), default="")
    profession: Mapped[str] = mapped_column(sa.String(120), default="")
    category: Mapped[str] = mapped_column(sa.String(60), default="")
    sort_key: Mapped[str] = mapped_column(sa.String(250), default="")
    row_hash: Mapped[str] = mapped_column(sa.String(32))
    last_run: Mapped[int] = mapped_column(default=0)
    active: Mapped[bool] = mapped_column(default=True)
    updated_at: Mapped[datetime] = mapped_column(UTC, default=_now)


class DirActivity(Base):
    """One activity line of a professional: where and how they practise."""

    __tablename__ = "dir_activities"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    key: Mapped[str] = mapped_column(sa.String(200), unique=True)
    person_id: Mapped[int] = mapped_column(sa.ForeignKey("dir_people.id", ondelete="CASCADE"), index=True)
    specialty_code: Mapped[str] = mapped_column(sa.String(10), default="")
    specialty: Mapped[str] = mapped_column(sa.String(160), default="")
    skill_type: Mapped[str] = mapped_column(sa.String(60), default="")
    mode_code: Mapped[str] = mapped_column(sa.String(4), default="")
    mode: Mapped[str] = mapped_column(sa.String(40), default="")
    structure_id: Mapped[str] = mapped_column(sa.String(40), default="")
    siret: Mapped[str] = mapped_column(sa.String(20), default="")
    finess: Mapped[str] = mapped_column(sa.String(20), default="")
    site_name: Mapped[str] = mapped_column(sa.String(200), default="")
    trade_name: Mapped[str] = mapped_column(sa.String(200), default="")
    address: Mapped[str] = mapped_column(sa.String(300), default="")
    postcode: Mapped[str] = mapped_column(sa.String(10), default="")
    commune_code: Mapped[str] = mapped_column(sa.String(10), default="")
    commune: Mapped[str] = mapped_column(sa.String(120), default="")
    department_code: Mapped[str] = mapped_column(sa.String(4), default="")
    phone: Mapped[str] = mapped_column(sa.String(40), default="")
    email: Mapped[str] = mapped_column(sa.String(254), default="")
    sector: Mapped[str] = mapped_column(sa.String(120), default="")
    function: Mapped[str] = mapped_column(sa.String(120), default="")
    row_hash: Mapped[str] = mapped_column(sa.String(32))
    last_run: Mapped[int] = mapped_column(default=0)
    active: Mapped[bool] = mapped_column(default=True)


class DirOrganisation(Base):
    """A structure: FINESS / SIRET / technical id (``id_type`` tells which)."""

    __tablename__ = "dir_organisations"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    key: Mapped[str] = mapped_column(sa.String(60), unique=True)  # "<id_type>:<identifier>"
    id_type: Mapped[str] = mapped_column(sa.String(10), default="")
    identifier: Mapped[str] = mapped_column(sa.String(40), default="")
    finess: Mapped[str] = mapped_column(sa.String(20), default="")
    siret: Mapped[str] = mapped_column(sa.String(20), default="")
    name: Mapped[str] = mapped_column(sa.String(200), default="")
    trade_name: Mapped[str] = mapped_column(sa.String(200), default="")
    postcode: Mapped[str] = mapped_column(sa.String(10), default="")
    commune_code: Mapped[str] = mapped_column(sa.String(10), default="")
    row_hash: Mapped[str] = mapped_column(sa.String(32))
    last_run: Mapped[int] = mapped_column(default=0)


class DirService(Base):
    """A service of an organisation ("service de rattachement" of ORG mailboxes)."""

    __tablename__ = "dir_services"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    organisation_id: Mapped[int] = mapped_column(sa.ForeignKey("dir_organisations.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(sa.String(200))

    __table_args__ = (sa.UniqueConstraint("organisation_id", "name"),)


class DirMailbox(Base):
    """A mailbox entry: a published external address (``source = national``) or ours (``local``)."""

    __tablename__ = "dir_mailboxes"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    address: Mapped[str] = mapped_column(sa.String(254), unique=True)
    source: Mapped[str] = mapped_column(sa.String(10), default="national")
    kind: Mapped[str] = mapped_column(sa.String(3))
    national_id: Mapped[str] = mapped_column(sa.String(20), default="", index=True)
    local_mailbox_id: Mapped[int | None] = mapped_column(sa.ForeignKey("mailboxes.id", ondelete="CASCADE"))
    organisation_id: Mapped[int | None] = mapped_column(sa.ForeignKey("dir_organisations.id"))
    service_id: Mapped[int | None] = mapped_column(sa.ForeignKey("dir_services.id"))
    structure_id_type: Mapped[str] = mapped_column(sa.String(4), default="")
    structure_id: Mapped[str] = mapped_column(sa.String(40), default="")
    service: Mapped[str] = mapped_column(sa.String(200), default="")
    title: Mapped[str] = mapped_column(sa.String(40), default="")
    last_name: Mapped[str] = mapped_column(sa.String(120), default="")
    first_name: Mapped[str] = mapped_column(sa.String(120), default="")
    profession_code: Mapped[str] = mapped_column(sa.String(8), default="")
    profession: Mapped[str] = mapped_column(sa.String(120), default="")
    specialty_code: Mapped[str] = mapped_column(sa.String(10), default="")
    specialty: Mapped[str] = mapped_column(sa.String(160), default="")
    paperless: Mapped[str] = mapped_column(sa.String(2), default="")
    org_name: Mapped[str] = mapped_column(sa.String(200), default="")
    trade_name: Mapped[str] = mapped_column(sa.String(200), default="")
    address_lines: Mapped[str] = mapped_column(sa.String(400), default="")
    postcode: Mapped[str] = mapped_column(sa.String(10), default="")
    city: Mapped[str] = mapped_column(sa.String(120), default="")
    department_code: Mapped[str] = mapped_column(sa.String(4), default="")
    country: Mapped[str] = mapped_column(sa.String(60), default="")
    sort_key: Mapped[str] = mapped_column(sa.String(250), default="")
    row_hash: Mapped[str] = mapped_column(sa.String(32), default="")
    last_run: Mapped[int] = mapped_column(default=0)
    active: Mapped[bool] = mapped_column(default=True)


class DirCommune(Base):
    """A French commune (INSEE code) with its postcodes and town-hall location."""

    __tablename__ = "dir_communes"

    code: Mapped[str] = mapped_column(sa.String(5), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(120))
    department_code: Mapped[str] = mapped_column(sa.String(3), index=True)
    department: Mapped[str] = mapped_column(sa.String(80), default="")
    postcodes: Mapped[str] = mapped_column(sa.String(200), default="")  # space-separated
    latitude: Mapped[float | None] = mapped_column(sa.Float)
    longitude: Mapped[float | None] = mapped_column(sa.Float)
    population: Mapped[int] = mapped_column(default=0)


class DirProfile(Base):
    """The directory card of one of our accounts: place, contacts, modalities, expert declaration."""

    __tablename__ = "dir_profiles"

    account_id: Mapped[int] = mapped_column(sa.ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True)
    commune_code: Mapped[str] = mapped_column(Line(5), default="")
    postcode: Mapped[str] = mapped_column(Line(10), default="")
    notification_phone: Mapped[str] = mapped_column(Line(40), default="")
    notification_email: Mapped[str] = mapped_column(Line(254), default="")
    modalities: Mapped[dict | None] = mapped_column(sa.JSON)
    competences: Mapped[str] = mapped_column(Prose, default="")
    activities: Mapped[str] = mapped_column(Prose, default="")
    equipment: Mapped[str] = mapped_column(Prose, default="")
    expert: Mapped[dict | None] = mapped_column(sa.JSON)
    updated_at: Mapped[datetime] = mapped_column(UTC, default=_now)


class DirSearch(Base):
    """One search result entry (see the module docstring for the meaning of ``id``)."""

    __tablename__ = "dir_search"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=False)
    ref: Mapped[str] = mapped_column(sa.String(24), index=True)  # "m<dir_mailboxes.id>" or "p<dir_people.id>"
    section: Mapped[str] = mapped_column(sa.String(14))
    kind: Mapped[str] = mapped_column(sa.String(3), default="")
    is_local: Mapped[bool] = mapped_column(default=False)
    local_mailbox_id: Mapped[int | None] = mapped_column(sa.Integer)
    address: Mapped[str | None] = mapped_column(sa.String(254))
    national_id: Mapped[str] = mapped_column(sa.String(20), default="")
    name: Mapped[str] = mapped_column(sa.String(300), default="")
    profession: Mapped[str] = mapped_column(sa.String(120), default="")
    specialty: Mapped[str] = mapped_column(sa.String(400), default="")
    organisation: Mapped[str] = mapped_column(sa.String(200), default="")
    service: Mapped[str] = mapped_column(sa.String(200), default="")
    commune_code: Mapped[str] = mapped_column(sa.String(5), default="")
    commune: Mapped[str] = mapped_column(sa.String(120), default="")
    postcode: Mapped[str] = mapped_column(sa.String(10), default="")
    department_code: Mapped[str] = mapped_column(sa.String(3), default="")
    latitude: Mapped[float | None] = mapped_column(sa.Float)
    longitude: Mapped[float | None] = mapped_column(sa.Float)
    is_expert: Mapped[bool] = mapped_column(default=False)
    is_resource_team: Mapped[bool] = mapped_column(default=False)
    text: Mapped[str] = mapped_column(sa.Text, default="")


class DirTermKey(Base):
    """Typo index of the vocabulary: each word under itself and its one-letter deletions, with
    the number of national entries the word is found in."""

    __tablename__ = "dir_term_keys"

    key: Mapped[str] = mapped_column(sa.String(60), primary_key=True)
    term: Mapped[str] = mapped_column(sa.String(60), primary_key=True)
    docs: Mapped[int] = mapped_column(default=0, server_default="0")


class DirMeta(Base):
    __tablename__ = "dir_meta"

    name: Mapped[str] = mapped_column(sa.String(40), primary_key=True)
    value: Mapped[str] = mapped_column(sa.Text, default="")


# Engine-specific DDL of the full-text part, used by the migration.
SQLITE_FTS_DDL = (
    f"CREATE VIRTUAL TABLE IF NOT EXISTS {FTS_TABLE} USING fts5("
    "text, content='dir_search', content_rowid='id', tokenize='unicode61', prefix='2 3')"
)
POSTGRES_DDL = (
    "CREATE EXTENSION IF NOT EXISTS pg_trgm",
    "CREATE EXTENSION IF NOT EXISTS unaccent",
    "ALTER TABLE dir_search ADD COLUMN tsv tsvector GENERATED ALWAYS AS (to_tsvector('simple', text)) STORED",
    *(f"CREATE INDEX ix_dir_search_tsv_{name} ON dir_search USING gin (tsv) WHERE section = '{name}'"
      for name in SECTIONS),
)


# PostgreSQL: the exact number of national entries of each section that each word is found in,
# for the words found in more than ``:over`` of them (dir_meta ``WORD_COUNTS``, as JSON
# {"over": n, "sections": {section: {word: entries}}}). A search whose widest query is one of
# these words (or any of several) is known to match more than ``:over`` entries without counting
# them: a count fetches each match from the heap. National entries change only when the index
# is rebuilt, which stores them again; local entries only add matches.
WORD_COUNTS = "word_counts"
WORD_COUNTS_OVER = 1000
POSTGRES_WORD_COUNTS_SQL = ("SELECT word, ndoc FROM ts_stat('SELECT tsv FROM dir_search "
                            "WHERE section = ''{section}'' AND NOT is_local') WHERE ndoc > {over}")


def word_counts_sql(section: str, over: int | None = None) -> str:
    """PostgreSQL: the statement listing a section's words found in more than ``over`` national
    entries (default ``WORD_COUNTS_OVER``), with their number (word, ndoc)."""
    return POSTGRES_WORD_COUNTS_SQL.format(section=section, over=int(WORD_COUNTS_OVER if over is None else over))


def word_counts_value(sections: dict[str, dict[str, int]], over: int | None = None) -> str:
    """The ``WORD_COUNTS`` value stored in dir_meta."""
    return json.dumps({"over": WORD_COUNTS_OVER if over is None else over, "sections": sections}, sort_keys=True)
