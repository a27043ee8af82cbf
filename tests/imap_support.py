"""Helpers of the IMAP and submission tests: clients connected to the ``mail_server`` fixture."""

from __future__ import annotations

import imaplib
import re
import smtplib
import ssl

from monsisra.services import accounts
from tests.support import RunningServer, unique

DOMAIN = "monsisra.localhost"


def tls_context(server: RunningServer) -> ssl.SSLContext:
    """Trusts the server's development certificate (and checks it: name 127.0.0.1)."""
    ctx = ssl.create_default_context(cafile=str(server.settings.data_dir / "tls" / "dev-cert.pem"))
    ctx.check_hostname = False
    return ctx


def imap(server: RunningServer, username: str | None = "alice.martin", password: str = "demo", *,
         implicit: bool = True) -> imaplib.IMAP4:
    if implicit:
        c: imaplib.IMAP4 = imaplib.IMAP4_SSL("127.0.0.1", server.settings.imaps_port, ssl_context=tls_context(server),
                                             timeout=60)
    else:
        c = imaplib.IMAP4("127.0.0.1", server.settings.imap_port, timeout=60)
        c.starttls(tls_context(server))
    if username:
        c.login(username, password)
    return c


def smtp(server: RunningServer, username: str | None = "alice.martin", password: str = "demo", *,
         implicit: bool = False) -> smtplib.SMTP:
    if implicit:
        c: smtplib.SMTP = smtplib.SMTP_SSL("127.0.0.1", server.settings.submissions_port,
                                           context=tls_context(server), timeout=60)
    else:
        c = smtplib.SMTP("127.0.0.1", server.settings.submission_port, timeout=60)
        c.starttls(context=tls_context(server))
    c.ehlo("client.test")
    if username:
        c.login(username, password)
    return c


def new_account(server: RunningServer, password: str = "secret-pass-16") -> tuple[str, str, int]:
    username = unique("imap")
    _account, mailbox = server.call(accounts.create_account, server.core, accounts.NewAccount(
        username=username, password=password, first_name="Test", last_name=username))
    return username, mailbox.address, mailbox.id


def mailbox_id(api, address: str) -> int:
    r = api.get("/api/v1/mailboxes")
    assert r.status_code == 200, r.text
    return next(m["id"] for m in r.json() if m["address"] == address)


def untagged(data: list, word: str) -> list[bytes]:
    return [d for d in data if isinstance(d, bytes) and word.encode() in d]


def uid_of(line: bytes) -> int:
    m = re.search(rb"UID (\d+)", line)
    assert m, line
    return int(m.group(1))


def raw_command(c: imaplib.IMAP4, line: bytes) -> list[bytes]:
    """Send one raw command line (tag ``R1``); the lines read up to its tagged reply."""
    c.send(line + b"\r\n")
    out = []
    while True:
        got = c.readline()
        out.append(got)
        if not got or got.startswith(line.split(b" ", 1)[0] + b" "):
            return out
