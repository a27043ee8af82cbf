"""The command line, run as a user runs it: a subprocess with MONSISRA_* variables."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

import pytest


@pytest.fixture
def cli_env(tmp_path):
    return {**os.environ, "MONSISRA_DATA_DIR": str(tmp_path / "var"),
            "MONSISRA_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'var' / 'monsisra.db'}"}


def run(env, *args, input_text=None):
    return subprocess.run([sys.executable, "-m", "monsisra.cli", *args], env=env, capture_output=True, text=True,
                          input=input_text, timeout=300)


def test_help_reads_well(cli_env):
    out = run(cli_env, "--help")
    assert out.returncode == 0
    for command in ("serve", "db", "demo", "account"):
        assert command in out.stdout
    assert "messagerie sécurisée" in out.stdout


def test_upgrade_demo_idempotent_and_account_create(cli_env, tmp_path):
    assert run(cli_env, "db", "upgrade").returncode == 0
    first = run(cli_env, "demo")
    assert first.returncode == 0, first.stderr
    db = tmp_path / "var" / "monsisra.db"
    counts = lambda: sqlite3.connect(db).execute(  # noqa: E731
        "select (select count(*) from accounts), (select count(*) from messages), (select count(*) from mailboxes)"
    ).fetchone()
    after_first = counts()
    assert after_first[0] >= 30 and after_first[1] >= 20
    assert run(cli_env, "demo").returncode == 0
    assert counts() == after_first  # idempotent
    skipped = run(cli_env, "demo", "--if-empty")
    assert skipped.returncode == 0 and "déjà" in skipped.stderr

    created = run(cli_env, "account", "create", "marie.curie", "--first-name", "Marie", "--last-name", "Curie",
                  "--civility", "Dr", "--rpps", "810000009999", "--password", "radium-1867")
    assert created.returncode == 0, created.stderr
    assert "marie.curie@monsisra.localhost" in created.stderr
    again = run(cli_env, "account", "create", "marie.curie", "--first-name", "Marie", "--last-name", "Curie",
                "--password", "radium-1867")
    assert again.returncode == 1 and "déjà pris" in again.stderr
    bad = run(cli_env, "account", "create", "x y", "--first-name", "X", "--password", "abcdef")
    assert bad.returncode == 1 and "identifiant invalide" in bad.stderr
    # Prompted password, as on a terminal.
    prompted = run(cli_env, "account", "create", "pierre.curie", "--first-name", "Pierre", "--last-name", "Curie",
                   input_text="polonium\npolonium\n")
    assert prompted.returncode == 0, prompted.stderr
    assert sqlite3.connect(db).execute("select count(*) from mailboxes where address like '%curie%'").fetchone()[0] == 2


def test_mailbox_create_and_grant(cli_env, tmp_path):
    assert run(cli_env, "db", "upgrade").returncode == 0
    assert run(cli_env, "account", "create", "sec.one", "--first-name", "Sec", "--last-name", "One",
               "--password", "abcdef").returncode == 0
    made = run(cli_env, "mailbox", "create", "pneumologie.ch-test", "--name", "Pneumologie — CH Test", "--expert")
    assert made.returncode == 0, made.stderr
    assert "pneumologie.ch-test@monsisra.localhost" in made.stderr
    dup = run(cli_env, "mailbox", "create", "pneumologie.ch-test", "--name", "x")
    assert dup.returncode == 1 and "existe déjà" in dup.stderr
    ok = run(cli_env, "mailbox", "grant", "pneumologie.ch-test@monsisra.localhost", "sec.one")
    assert ok.returncode == 0, ok.stderr
    missing = run(cli_env, "mailbox", "grant", "nope@monsisra.localhost", "sec.one")
    assert missing.returncode == 1 and "introuvable" in missing.stderr
    db = tmp_path / "var" / "monsisra.db"
    row = sqlite3.connect(db).execute(
        "select access from mailbox_access join mailboxes on mailboxes.id = mailbox_id "
        "where address = 'pneumologie.ch-test@monsisra.localhost'").fetchone()
    assert row == ("member",)


def test_demo_trusts_the_operators_it_shows(cli_env):
    assert run(cli_env, "db", "upgrade").returncode == 0
    assert run(cli_env, "demo").returncode == 0
    listed = run(cli_env, "trust", "list")
    assert listed.returncode == 0
    for domain in ("patient.mssante.fr", "ch-vichy.mssante.fr", "labo-dore.mssante.fr"):
        assert domain in listed.stdout + listed.stderr
