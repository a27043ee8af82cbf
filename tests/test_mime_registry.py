"""The read policy's header registry builds each header class once (``mime._ClassCachingRegistry``):
what it parses must be exactly what the standard registry parses, for the samples of
``tests/fixtures`` (copies of the shared samples, hostile ones included) and for generated header
values (encoded words, folding, duplicates, bad dates, bytes that are not UTF-8, any name)."""

from __future__ import annotations

import email
import email.policy
import random
from email.headerregistry import HeaderRegistry
from pathlib import Path

import pytest

from monsisra.domain.mail import mime

FIXTURES = Path(__file__).parent / "fixtures"
SAMPLES = sorted(p.name for p in FIXTURES.glob("*.eml"))
STOCK = HeaderRegistry()

NAMES = ["Subject", "From", "To", "Cc", "Date", "Message-ID", "In-Reply-To", "References", "Content-Type",
         "Content-Disposition", "Content-Transfer-Encoding", "MIME-Version", "Disposition-Notification-To",
         "Auto-Submitted", "X-MSS-INS", "x-mss-nil", "Reply-To", "Sender", "Resent-Date", "X-Odd_Name"]
VALUES = [
    "", " ", "Compte rendu n°1", "=?utf-8?q?Compte_rendu_n=C2=B01?=", "=?utf-8?b?w6k=?= =?utf-8?b?w6k=?=",
    "=?utf-8?q?a=0D=0ABcc:_x@y?=", "=?bogus?q?x?=", "=?utf-8?q?unterminated", "a\r\n folded\r\n\tvalue",
    "Secrétariat <secretariat@autre-operateur.localhost>", '"Dr. X, Y" <x@y.fr>, z@w.fr, <@r:a@b>',
    "<a@b.c> <d@e.f>", "<a@b", "Mon, 1 Dec 2026 10:00:00 +0100", "32 Foo 2026 99:99:99", "Tue, 1 Dec 2026",
    "text/plain; charset=utf-8", 'application/pdf; name="CR_1.pdf"', "multipart/mixed; boundary=\"===b==\"",
    'attachment; filename="=?utf-8?q?r=C3=A9sultat.pdf?="', "attachment; filename*=utf-8''r%C3%A9s.pdf",
    "attachment; filename=../../etc/passwd", "text/plain; charset=\"unterminated", "base64", "1.0", "auto-replied",
    "\udce9t\udcc3\udca9 non-UTF-8 bytes", "x" * 1200, "(comment) value (another",
]


def _reading(factory, name: str, value: str) -> object:
    try:
        header = factory(name, value)
    except Exception as exc:  # the same refusal both ways
        return type(exc).__name__, str(exc)
    attrs = [repr(getattr(header, a, None)) for a in ("addresses", "datetime", "content_type", "params",
                                                      "content_disposition", "cte", "version")]
    return type(header).__mro__[1:], str(header), header.name, [repr(d) for d in header.defects], attrs


def _same(name: str, value: str) -> None:
    assert _reading(mime.READ_POLICY.header_factory, name, value) == _reading(STOCK, name, value)


def test_generated_values_parse_as_the_stock_registry_parses_them():
    for name in NAMES:
        for value in VALUES:
            _same(name, value)
    rng = random.Random(3)
    pieces = [v for v in VALUES if len(v) < 100] + ["\r\n ", ",", ";", "<", ">", '"', "=?", "?=", "é"]
    for _ in range(400):
        _same(rng.choice(NAMES), "".join(rng.choice(pieces) for _ in range(rng.randrange(1, 6))))


def test_one_class_per_kind_of_header_whatever_the_names():
    factory = mime.READ_POLICY.header_factory
    assert factory["Subject"] is factory["SUBJECT"]
    assert factory["X-A"] is factory["X-B"]  # names nobody registered share the default class
    assert len(factory._classes) <= len(factory.registry) + 1


def _parse_with(policy: email.policy.Policy, raw: bytes, monkeypatch, fast: bool) -> object:
    monkeypatch.setattr(mime, "READ_POLICY", policy)
    try:
        return mime.parse(raw, "secretariat@autre-operateur.localhost", fast=fast)
    except mime.MailError as exc:
        return exc.reply


@pytest.mark.parametrize("name", SAMPLES)
def test_samples_parse_as_with_the_stock_registry(name, monkeypatch):
    raw = (FIXTURES / name).read_bytes()
    for msg in email.message_from_bytes(raw, policy=email.policy.compat32).walk():
        for key, value in msg.items():
            _same(key, str(value))
    ours = mime.READ_POLICY
    for fast in (True, False):
        assert _parse_with(mime._ReadPolicy(), raw, monkeypatch, fast) == _parse_with(ours, raw, monkeypatch, fast)
