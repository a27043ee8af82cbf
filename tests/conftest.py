"""Fixtures: every server-level test runs once on SQLite and once on PostgreSQL."""

from __future__ import annotations

import os

import pytest

from monsisra.services import accounts
from monsisra.services import demo as demo_service
from tests.support import POSTGRES_URL, fresh_database, make_settings, start_server, unique

BACKENDS = ["sqlite", "postgres"]
# The second factor is required by default (issue 15); the accounts tests make log in with a
# password alone unless a test asks for the policy (``totp_required=True``). Set here so that
# the servers the tests start as processes inherit it too.
os.environ.setdefault("MONSISRA_TOTP_REQUIRED", "false")


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request) -> str:
    if request.param == "postgres" and not POSTGRES_URL:
        pytest.skip("PostgreSQL run skipped: MONSISRA_TEST_POSTGRES_URL is not set (CI sets it)")
    return request.param


@pytest.fixture(scope="session")
def database_url(backend, tmp_path_factory):
    with fresh_database(backend, tmp_path_factory.mktemp(f"db-{backend}")) as url:
        yield url


@pytest.fixture(scope="session")
def server(database_url, tmp_path_factory, backend):
    """A real MonSisra server on a free port with the demo data loaded."""
    settings = make_settings(database_url, tmp_path_factory.mktemp(f"data-{backend}"), smtp_enabled=False,
                             run_workers=False)
    running = start_server(settings)
    running.call(demo_service.load, running.core)
    yield running
    running.stop()


@pytest.fixture(scope="session")
def mail_server(backend, tmp_path_factory):
    """A server with its IMAP and SMTP submission listeners (issue 16), demo data loaded, on a
    database of its own (its tests change flags and send mail)."""
    from tests.support import free_port

    with fresh_database(backend, tmp_path_factory.mktemp(f"db-mail-{backend}")) as url:
        settings = make_settings(url, tmp_path_factory.mktemp(f"data-mail-{backend}"), smtp_enabled=False,
                                 run_workers=False, imap_port=free_port(), imaps_port=free_port(),
                                 submission_port=free_port(), submissions_port=free_port())
        running = start_server(settings)
        running.call(demo_service.load, running.core)
        yield running
        running.stop()


@pytest.fixture
def make_user(server):
    """Create a fresh professional account; returns (username, mailbox address)."""

    def _make(first: str = "Test", last: str | None = None, **kw):
        username = unique("user")
        _account, mailbox = server.call(accounts.create_account, server.core, accounts.NewAccount(
            username=username, password="secret-pass", first_name=first, last_name=last or username, **kw))
        return username, mailbox.address, mailbox.id

    return _make


@pytest.fixture(scope="module")
def gw(backend, tmp_path_factory):
    """The SMTP gateway next to a private Postfix (see ``tests/gateway_support.py``)."""
    from tests.gateway_support import running_gateway

    with running_gateway(backend, tmp_path_factory) as gateway:
        yield gateway
