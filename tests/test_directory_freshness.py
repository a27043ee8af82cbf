"""A running server follows an import made by another process (issue 18, item 1): after
``monsisra directory import`` in a subprocess, the next search in the serving process finds the new
entries, drops its statistics, opens new connections (fresh planner statistics and plans) and, on
SQLite, truncates the write-ahead log the import filled — as a restart would, without one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from monsisra.services import directory
from monsisra.services.directory import freshness
from monsisra.store.db import WAL_SIZE_LIMIT
from tests.gateway_support import wait_for
from tests.support import FIXTURES, fresh_database, make_settings, start_server

DIRECTORY = FIXTURES / "directory"
PS = next(DIRECTORY.glob("PS_LibreAcces_Personne_activite_*.txt"))
MSS = next(DIRECTORY.glob("Extraction_Correspondance_MSSante_*.txt"))


@pytest.fixture
def serving(backend, tmp_path):
    """A server of our own on a database of its own (the import changes the whole directory)."""
    with fresh_database(backend, tmp_path / "db") as url:
        running = start_server(make_settings(url, tmp_path / "data", smtp_enabled=False, run_workers=False))
        yield running
        running.stop()


def _import(url: str, data_dir: Path) -> None:
    env = {**os.environ, "MONSISRA_DATABASE_URL": url, "MONSISRA_DATA_DIR": str(data_dir)}
    proc = subprocess.run([sys.executable, "-m", "monsisra.cli", "directory", "import", str(PS), str(MSS)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]


def _a_name_of_the_file() -> str:
    line = PS.read_text(encoding="utf-8").splitlines()[1].split("|")
    return line[8]  # nom d'exercice


def test_search_in_a_running_server_follows_an_import_made_elsewhere(serving, backend, tmp_path):
    core = serving.core
    name = _a_name_of_the_file()
    serving.call(directory.search, core, None, q="cardio")  # the server has read the index before
    before = serving.call(_generation, core)
    connects = _count_connects(serving)

    _import(serving.settings.database_url, tmp_path / "cli")

    after = serving.call(_generation, core)
    assert after and after != before, "the rebuild stamps a new generation"
    found = serving.call(directory.search, core, None, q=name)
    assert found["professionals"]["total"] >= 1, "the new entries are found at once"
    assert freshness._seen[serving.settings.database_url] == after
    # New connections were opened after the import (statistics and plans of the new index), and
    # the statistics this process caches were read again.
    assert _count_connects(serving) > connects
    if backend == "sqlite":
        wal = Path(sa.make_url(serving.settings.database_url).database + "-wal")
        # The log the import filled is checkpointed and truncated (a restart did it before).
        wait_for(lambda: not wal.exists() or wal.stat().st_size <= WAL_SIZE_LIMIT // 16, timeout=60)
        stats = serving.call(_sqlite_stat_rows, core)
        assert stats > 0, "the import analysed the tables it filled"


async def _generation(core) -> str | None:
    from monsisra.store.directory import DirMeta

    async with core.read() as s:
        return await s.scalar(sa.select(DirMeta.value).where(DirMeta.name == freshness.GENERATION))


async def _sqlite_stat_rows(core) -> int:
    async with core.read() as s:
        return await s.scalar(sa.text("SELECT count(*) FROM sqlite_stat1")) or 0


def _count_connects(serving) -> int:
    """Connections opened by the serving process's pool since it started."""
    engine = serving.core.db.engine.sync_engine
    if not hasattr(engine, "_test_connects"):
        engine._test_connects = [0]

        @sa.event.listens_for(engine, "connect")
        def _on_connect(*_args) -> None:
            engine._test_connects[0] += 1

    return engine._test_connects[0]
