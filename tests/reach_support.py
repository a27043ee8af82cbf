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


def make_pdf(lines: list[str]) -> bytes:
    """A one-page PDF whose text is ``lines`` (Helvetica, WinAnsi): what a practice software prints."""

    def escape(line: str) -> str:
        return line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    stream = ("BT /F1 12 Tf 50 780 Td 14 TL " + " ".join(f"({escape(x)}) '" for x in lines) + " ET").encode("cp1252")
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Resources << /Font << /F1 4 0 R >> >> "
               b"/Contents 5 0 R >>",
               b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
               b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream"]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


@contextlib.contextmanager
def web_session(server: RunningServer, username: str, password: str) -> Iterator[Any]:
    """A browser-like HTTP session (cookie) and its CSRF token: ``(client, csrf)``."""
    import re

    import httpx

    with httpx.Client(base_url=server.base_url, timeout=30, follow_redirects=False) as client:
        r = client.post("/connexion", data={"username": username, "password": password})
        assert r.status_code == 303, r.text
        page = client.get("/parametres").text
        csrf = re.search(r'<meta name="csrf-token" content="([0-9a-f]+)">', page).group(1)
        yield client, csrf
