"""Schema upgrades through Alembic, callable from the CLI, the server start and tests."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from monsisra.store.db import prepare_sqlite_file

HERE = Path(__file__).parent


def alembic_config(url: str) -> Config:
    cfg = Config(str(HERE / "alembic.ini"))
    cfg.set_main_option("script_location", str(HERE / "migrations"))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "heads") -> None:
    """Bring the database at ``url`` to the newest schema (every branch head)."""
    prepare_sqlite_file(url)
    command.upgrade(alembic_config(url), revision)
