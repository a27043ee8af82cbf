"""The one clock: aware UTC datetimes everywhere."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

# What users read: every time shown to them is French local time.
PARIS = ZoneInfo("Europe/Paris")


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; they are UTC by construction."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def in_paris(value: datetime) -> datetime:
    """The same instant on the clocks of Metropolitan France (summer time included)."""
    return as_utc(value).astimezone(PARIS)


def iso(value: datetime | None) -> str | None:
    """An ISO 8601 UTC timestamp for the API (``None`` stays ``None``)."""
    return as_utc(value).isoformat() if value else None
