"""Column types that hold the text rule of ``domain.text`` at the last door before the database.

Services check and clean what users type (and refuse what they must); these types make sure that
no entry point, present or future, can store a NUL (PostgreSQL refuses it, SQLite keeps it) or a
line break in a single-line column, whatever path the value took.
"""

from __future__ import annotations

import sqlalchemy as sa

from monsisra.domain.text import clean_multiline, flatten_line


class Line(sa.types.TypeDecorator):
    """``VARCHAR`` of one line: controls and line breaks become spaces."""

    impl = sa.String
    cache_ok = True

    def process_bind_param(self, value, dialect):
        return flatten_line(value) if isinstance(value, str) else value


class Prose(sa.types.TypeDecorator):
    """``TEXT`` of several lines: controls other than tab and line feed are removed."""

    impl = sa.Text
    cache_ok = True

    def process_bind_param(self, value, dialect):
        return clean_multiline(value) if isinstance(value, str) else value
