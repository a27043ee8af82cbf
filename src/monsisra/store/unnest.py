"""Rows of a table as one array per column, for PostgreSQL's ``INSERT … SELECT FROM unnest(…)``.

A batch of rows then goes in one statement whose text does not depend on the number of rows
(prepared once per connection, executed once), instead of SQLAlchemy's ``executemany`` (one
execution per row) or its multi-row ``VALUES`` (a new text, and a new prepared statement, for each
batch size). The values are the ones SQLAlchemy's own INSERT of the same rows would send: the
columns are the rows' keys plus those with a Python-side default (as ``table.insert()`` takes
them), a missing value is that default, and each value goes through its column type's bind
processor (``Line``/``Prose`` cleaning, JSON serialisation).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

_DIALECT = postgresql.asyncpg.dialect()
_LENGTH = re.compile(r"\(\d+(?:,\s*\d+)?\)")


def _array_type(column: sa.Column) -> tuple[str, str]:
    """(element type of the column's array parameter, SQL reading one element ``{}`` as the column).

    Lengths are dropped (``VARCHAR(255)`` → ``VARCHAR``): a cast to ``VARCHAR(n)`` would cut a
    longer value silently, where the INSERT refuses it, as it does with SQLAlchemy's own binds.
    JSON travels as text and is cast by the server (the text kept as it was serialised)."""
    if isinstance(column.type, sa.JSON):
        return "TEXT", "{}::JSON"
    return _LENGTH.sub("", column.type.compile(dialect=_DIALECT)), "{}"


class ArrayRows:
    """The columns of ``table`` that an INSERT of rows with keys ``keys`` writes, and how each
    value is bound. ``keys`` may hold names that are no column of ``table`` (``extra``): they
    travel as arrays too (of type ``extra[name]``), for the statement to use (a join key)."""

    def __init__(self, table: sa.Table, keys: Iterable[str], extra: Mapping[str, str] | None = None) -> None:
        keys = list(keys)
        extra = dict(extra or {})
        unknown = [k for k in keys if k not in table.c and k not in extra]
        if unknown:
            raise ValueError(f"{table.name}: no column {', '.join(unknown)}")
        self.table = table
        self.extra = extra
        given = set(keys)
        self.columns: list[sa.Column] = [c for c in table.c if c.key in given or (
            c.default is not None and not c.default.is_sequence and not c.default.is_clause_element)]
        self.names: list[str] = [c.key for c in self.columns] + [k for k in keys if k in extra]
        self._read: list[Callable[[Mapping[str, Any]], Any]] = []
        self.types: list[str] = []
        self.reads: list[str] = []
        for c in self.columns:
            element, read = _array_type(c)
            self.types.append(element)
            self.reads.append(read)
            self._read.append(self._reader(c, c.key in given))
        for k in self.names[len(self.columns):]:
            self.types.append(extra[k])
            self.reads.append("{}")
            self._read.append(lambda row, k=k: row[k])

    @staticmethod
    def _reader(column: sa.Column, given: bool) -> Callable[[Mapping[str, Any]], Any]:
        process = column.type._cached_bind_processor(_DIALECT)
        default = column.default
        key = column.key

        def missing(row: Mapping[str, Any]) -> Any:
            assert default is not None
            return default.arg(None) if default.is_callable else default.arg

        if given and default is None:
            value: Callable[[Mapping[str, Any]], Any] = lambda row: row[key]  # noqa: E731
        else:
            value = lambda row: row[key] if key in row else missing(row)  # noqa: E731
        if process is None:
            return value
        return lambda row: process(value(row))

    def arrays(self, rows: Sequence[Mapping[str, Any]]) -> list[list[Any]]:
        """One list per column (in :attr:`names` order) of the rows' bound values."""
        return [[read(row) for row in rows] for read in self._read]

    def unnest(self, params: Sequence[str], alias: str) -> str:
        """``unnest(…) WITH ORDINALITY AS alias(names…, ord)`` over the array parameters ``params``."""
        args = ", ".join(f"CAST(:{p} AS {t}[])" for p, t in zip(params, self.types, strict=True))
        return f"unnest({args}) WITH ORDINALITY AS {alias}({', '.join(map(quote, self.names))}, ord)"

    def column(self, alias: str, name: str) -> str:
        """The SQL of column ``name`` of the unnested ``alias``, as the table's column reads it."""
        return self.reads[self.names.index(name)].format(f"{alias}.{quote(name)}")


def quote(name: str) -> str:
    """A column name as an SQL identifier (the names here are plain lower-case words)."""
    return f'"{name}"'
