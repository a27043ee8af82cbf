"""Helpers of the issue-16 tests: a server of their own on a fresh database (broadcasts to
everyone must not reach the other tests' accounts), fresh professionals with a place on their card."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from monsisra.services import accounts
from monsisra.services import demo as demo_service
from monsisra.store.directory import DirProfile
from tests.support import RunningServer, fresh_database, make_settings, start_server, unique


@contextlib.contextmanager
def own_server(backend: str, tmp: Path, demo: bool = True, **overrides: Any) -> Iterator[RunningServer]:
    with fresh_database(backend, tmp / "db") as url:
        values = {"smtp_enabled": False, "run_workers": False} | overrides
        running = start_server(make_settings(url, tmp / "data", **values))
        try:
            if demo:
                running.call(demo_service.load, running.core)
            yield running
        finally:
            running.stop()


def make_pro(server: RunningServer, first: str = "Test", last: str | None = None, *, postcode: str = "",
             notification_email: str = "", notification_phone: str = "", **kw: Any) -> tuple[str, str, int]:
    """A fresh professional (password ``secret-pass``) → (username, address, mailbox id)."""
    username = unique("pro")
    account, mailbox = server.call(accounts.create_account, server.core, accounts.NewAccount(
        username=username, password="secret-pass", first_name=first, last_name=last or username, **kw))

    async def card() -> None:
        async with server.core.write() as tx:
            tx.session.add(DirProfile(account_id=account.id, postcode=postcode, commune_code="",
                                      notification_email=notification_email, notification_phone=notification_phone))

    if postcode or notification_email or notification_phone:
        server.call(card)
    return username, mailbox.address, mailbox.id


async def count_rows(core, table, *where) -> int:
    async with core.read() as s:
        return await s.scalar(sa.select(sa.func.count()).select_from(table).where(*where))
