"""Directory imports and exports through the command line, on SQLite and PostgreSQL.

Each backend gets its own fresh database; the CLI runs as a real subprocess pointed at it by
``MONSISRA_DATABASE_URL`` / ``MONSISRA_DATA_DIR``.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.support import FIXTURES, POSTGRES_URL, fresh_database

DIRECTORY = FIXTURES / "directory"
PS = next(DIRECTORY.glob("PS_LibreAcces_Personne_activite_*.txt"))
MSS = next(DIRECTORY.glob("Extraction_Correspondance_MSSante_*.txt"))


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def cli(request, tmp_path_factory):
    if request.param == "postgres" and not POSTGRES_URL:
        pytest.skip("PostgreSQL run skipped: MONSISRA_TEST_POSTGRES_URL is not set (CI sets it)")
    tmp = tmp_path_factory.mktemp(f"dircli-{request.param}")
    with fresh_database(request.param, tmp) as url:
        env = {**os.environ, "MONSISRA_DATABASE_URL": url, "MONSISRA_DATA_DIR": str(tmp / "data"),
               "COLUMNS": "200"}

        def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
            proc = subprocess.run([sys.executable, "-m", "monsisra.cli", *args], env=env, capture_output=True,
                                  text=True, timeout=300)
            if check:
                assert proc.returncode == 0, proc.stderr + proc.stdout
            return proc

        run.tmp = tmp
        yield run


def report(proc: subprocess.CompletedProcess) -> dict:
    return json.loads(proc.stdout)


def entity(rep: dict, file_prefix: str, name: str) -> dict:
    f = next(f for f in rep["files"] if f["file"].startswith(file_prefix))
    return f["entities"][name]


def test_first_import_creates_everything_with_progress_and_report(cli):
    proc = cli("directory", "import", str(PS), str(MSS), "--json")
    rep = report(proc)
    assert entity(rep, "PS_", "people")["created"] == 2000
    assert entity(rep, "PS_", "activities")["created"] == 2309
    # 1,727 lines, a few addresses listed twice: one entry per address.
    assert entity(rep, "Extraction_", "mailboxes")["created"] == 1722
    assert rep["rejected"] == 0 and rep["deactivated"] == 0
    assert rep["indexed"] > 2000
    assert "Rapport d'import" in proc.stderr and "100%" in proc.stderr


def test_same_files_again_change_nothing_as_txt_and_as_zip(cli):
    rep = report(cli("directory", "import", str(PS), str(MSS), "--json"))
    assert (rep["created"], rep["updated"], rep["deactivated"], rep["rejected"]) == (0, 0, 0, 0)
    archive = cli.tmp / "extractions.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        z.write(PS, PS.name)
        z.write(MSS, MSS.name)
    rep = report(cli("directory", "import", str(archive), "--json"))
    assert [f["file"] for f in rep["files"]] == [PS.name, MSS.name]
    assert (rep["created"], rep["updated"], rep["deactivated"], rep["rejected"]) == (0, 0, 0, 0)
    assert entity(rep, "PS_", "people")["unchanged"] == 2000


def test_wrong_header_is_refused_naming_missing_columns(cli):
    bad = cli.tmp / "Extraction_Correspondance_MSSante_209901010000.txt"
    lines = MSS.read_text(encoding="utf-8").splitlines()
    header = lines[0].replace("Adresse BAL|", "").replace("|Code postal", "")
    bad.write_text("\n".join([header, *lines[1:20]]) + "\n", encoding="utf-8")
    proc = cli("directory", "import", str(bad), "--json", check=False)
    assert proc.returncode == 1
    message = " ".join(proc.stderr.split())
    assert "Adresse BAL" in message and "Code postal" in message and "manquante" in message
    # Nothing was touched: a normal re-import still finds everything unchanged.
    rep = report(cli("directory", "import", str(MSS), "--json"))
    assert (rep["created"], rep["updated"], rep["deactivated"]) == (0, 0, 0)


def test_newer_file_updates_deactivates_and_reports_bad_lines(cli):
    lines = PS.read_text(encoding="utf-8").splitlines()
    header, rows = lines[0], lines[1:]
    # Person of line 2 changes name; the last 10 lines disappear; line 4 becomes malformed.
    fields = rows[0].split("|")
    fields[7] = "NOUVEAUNOM"
    changed = [*rows]
    changed[0] = "|".join(fields)
    changed[2] = "8|123|pas-un-identifiant|trop|court|"
    removed = changed[-10:]
    changed = changed[:-10]
    newer = cli.tmp / "PS_LibreAcces_Personne_activite_209901010000.txt"
    newer.write_text("\n".join([header, *changed]) + "\n", encoding="utf-8")
    rep = report(cli("directory", "import", str(newer), "--json"))
    f = rep["files"][0]
    assert f["rejected"] == 1
    assert "ligne 4" in f["errors"][0]
    assert entity(rep, "PS_", "people")["updated"] == 1
    gone_people = {r.split("|")[2] for r in removed} - {r.split("|")[2] for r in changed}
    gone_people.add(rows[2].split("|")[2])  # the malformed line's person is not listed any more
    gone_people -= {r.split("|")[2] for r in changed if r.split("|")[2:3] and len(r.split("|")) > 50}
    assert entity(rep, "PS_", "people")["deactivated"] == len(gone_people)
    assert entity(rep, "PS_", "activities")["deactivated"] >= 10
    # The original file brings everyone back (reactivation counts as an update).
    rep = report(cli("directory", "import", str(PS), "--json"))
    assert entity(rep, "PS_", "people")["updated"] == 1 + len(gone_people)
    assert entity(rep, "PS_", "people")["deactivated"] == 0


def test_export_correspondance_and_fhir(cli):
    from fhir.resources.R4B.bundle import Bundle

    cli("demo")
    out = cli.tmp / "publication.txt"
    cli("directory", "export", "--format", "correspondance", "-o", str(out))
    lines = out.read_text(encoding="utf-8").splitlines()
    assert lines[0] == MSS.read_text(encoding="utf-8").splitlines()[0]
    assert all(len(line.split("|")) == 31 for line in lines)
    bruno = next(line.split("|") for line in lines if line.split("|")[1].startswith("bruno.petit@"))
    assert bruno[0] == "PER" and bruno[4] == "810000000025" and bruno[9] == "PETIT" and bruno[28] == "63000"
    # Our export is itself importable in the national format.
    rep = report(cli("directory", "import", str(out), "--json"))
    assert rep["rejected"] == 0

    fhir_path = cli.tmp / "publication.json"
    cli("directory", "export", "--format", "fhir", "-o", str(fhir_path))
    bundle = Bundle.model_validate_json(fhir_path.read_text(encoding="utf-8"))
    kinds = {e.resource.get_resource_type() for e in bundle.entry}
    assert kinds == {"Practitioner", "PractitionerRole", "Organization", "HealthcareService"}
    practitioner = next(e.resource for e in bundle.entry if e.resource.get_resource_type() == "Practitioner"
                        and e.resource.name[0].family == "PETIT")
    assert practitioner.identifier[0].value == "810000000025"
    assert practitioner.telecom[0].value.startswith("bruno.petit@")
    assert practitioner.telecom[0].extension[0].url.endswith("mailbox-mss-metadata")


def test_import_missing_file_is_a_clear_error(cli):
    proc = cli("directory", "import", str(Path(cli.tmp) / "absent.zip"), check=False)
    assert proc.returncode == 1 and "introuvable" in proc.stderr


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_helper_processes_build_the_same_directory_as_one_process(backend, tmp_path, monkeypatch):
    """Large files are parsed, and index entries built, by helper processes in small batches: the
    result must be exactly what one process builds in one batch."""
    if backend == "postgres" and not POSTGRES_URL:
        pytest.skip("PostgreSQL run skipped: MONSISRA_TEST_POSTGRES_URL is not set (CI sets it)")
    from monsisra.config import Settings
    from monsisra.services import directory
    from monsisra.services.core import Core
    from monsisra.services.directory import common, pool
    from monsisra.store.directory import DirActivity, DirMailbox, DirPerson, DirSearch, DirTermKey

    def build(tag: str) -> tuple:
        with fresh_database(backend, tmp_path / tag) as url:
            async def go() -> tuple:
                core = Core(Settings(database_url=url, data_dir=tmp_path / tag / "data"))
                try:
                    rep = await directory.import_files(core, [PS, MSS])
                    async with core.read() as s:
                        tables = {}
                        for model, order in ((DirSearch, "id"), (DirTermKey, "key, term"),
                                             (DirPerson, "national_id"), (DirActivity, "key"),
                                             (DirMailbox, "address")):
                            t = model.__table__
                            cols = [c for c in t.columns if c.name not in ("id", "person_id", "organisation_id",
                                                                           "service_id", "last_run",
                                                                           "updated_at", "created_at")]
                            if model is DirSearch:
                                cols = list(t.columns)
                            tables[t.name] = (await s.execute(sa.select(*cols).order_by(sa.text(order)))).all()
                    return rep.as_dict(), tables
                finally:
                    await core.close()

            return asyncio.run(go())

    monkeypatch.setattr(pool, "HELPERS_ABOVE", 10**12)
    one_process = build("inline")
    monkeypatch.setattr(pool, "HELPERS_ABOVE", 0)
    monkeypatch.setattr(common, "BATCH", 300)
    helpers = build("helpers")
    for name in one_process[0]:
        if name != "files":
            assert helpers[0][name] == one_process[0][name], name
    assert [f["entities"] for f in helpers[0]["files"]] == [f["entities"] for f in one_process[0]["files"]]
    for name, rows in one_process[1].items():
        assert len(rows) > 100, name
        assert helpers[1][name] == rows, name
