"""Shared by the directory modules: limits and vocabularies, content hashes and bulk inserts."""

from __future__ import annotations

import hashlib
import operator
import re
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from monsisra.domain.text import fold

BATCH = 5000


TOTAL_CAP = 1000  # totals are counted up to this ("plus de 1000 résultats")


ACTIVE_DAYS = 30


KINDS = ("all", "professionals", "services", "experts", "resource_teams")


MODALITIES = ("new_patients", "unscheduled_care", "home_visits", "teleconsultation", "telecare", "teleexpertise",
              "weekends_holidays", "night_on_call")


EXPERT_FIELDS = ("description", "documents", "urgent_contact", "specialties", "answer_days")


RESOURCE = re.compile(r"\b(dac|cpts|pta|reppop|dispositif d appui|plateforme territoriale d appui|"
                       r"communaute professionnelle territoriale|appui a la coordination)\b")


_TITLES = {"docteur": "Dr", "professeur": "Pr", "madame": "Mme", "monsieur": "M.", "dr": "Dr", "pr": "Pr"}


Progress = Callable[[str, int, int], None]  # (phase, done, total)


def content_hash(*values: str) -> str:
    return hashlib.md5("\x1f".join(values).encode(), usedforsecurity=False).hexdigest()


_LENGTHS: dict[str, dict[str, int]] = {}


def fit(table: sa.Table, row: dict[str, Any]) -> dict[str, Any]:
    """Cut strings to their column length (PostgreSQL refuses longer ones)."""
    lengths = _LENGTHS.get(table.name)
    if lengths is None:
        lengths = {c.name: c.type.length for c in table.columns
                   if isinstance(c.type, sa.String) and getattr(c.type, "length", None)}
        _LENGTHS[table.name] = lengths
    for key, n in lengths.items():
        v = row.get(key)
        if isinstance(v, str) and len(v) > n:
            row[key] = v[:n]
    return row


def short_title(title: str) -> str:
    return _TITLES.get(fold(title), title)


def is_postgres(session: AsyncSession) -> bool:
    return session.bind.dialect.name == "postgresql"


async def bulk_insert(session: AsyncSession, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    columns = list(rows[0].keys())
    if len(columns) == 1:
        await insert_tuples(session, table, columns, [(r[columns[0]],) for r in rows])
        return
    get = operator.itemgetter(*columns)
    await insert_tuples(session, table, columns, [get(r) for r in rows])


async def insert_tuples(session: AsyncSession, table: sa.Table, columns: list[str], rows: list[tuple]) -> None:
    """Rows straight to the driver (COPY on PostgreSQL): SQLAlchemy's per-row parameter handling
    costs more than the database itself."""
    if not rows:
        return
    conn = await session.connection()
    if is_postgres(session):
        raw = await conn.get_raw_connection()
        await raw.driver_connection.copy_records_to_table(table.name, records=rows, columns=columns)
    else:
        sql = f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
        await conn.exec_driver_sql(sql, rows)


WORD_SHARES = "word_shares"  # dir_meta: each section's rows and common words (PostgreSQL's plans)


COMMON_SHARE = 0.001  # words found in at least this share of a section's entries are listed
