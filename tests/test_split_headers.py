"""``split._header_block`` reads a header block the way ``BytesParser.parsebytes(head,
headersonly=True)`` does (the code it replaced in the cut): for every header block of the samples
of ``tests/fixtures`` (copies of the shared samples, hostile ones included) and for generated
blocks (folding, encoded words, duplicates, bytes that are not UTF-8, odd controls, LF or CR LF)."""

from __future__ import annotations

import random
import re
from email.parser import BytesParser
from pathlib import Path

import pytest

from monsisra.domain.mail import mime, split

FIXTURES = Path(__file__).parent / "fixtures"
SAMPLES = sorted(p.name for p in FIXTURES.glob("*.eml"))


def _view(msg) -> object:
    return (type(msg), msg.policy, list(msg.raw_items()), [repr(d) for d in msg.defects], msg._payload,
            msg.get_unixfrom(), msg.get_default_type(), msg.get_content_type(), msg.get_boundary(),
            msg.get_filename(), msg.get_content_charset(), [str(v) for v in msg.values()], msg.preamble,
            msg.epilogue)


def assert_same_block(head: bytes) -> bool:
    """Compares when the cut would take ``head``; says whether it did."""
    if split._HEAD.fullmatch(head) is None or split._LONE_CR.search(head) is not None:
        return False
    for policy in (mime.READ_POLICY, mime.POLICY):
        assert _view(split._header_block(policy, head)) == \
            _view(BytesParser(policy=policy).parsebytes(head, headersonly=True))
    return True


def _blocks(raw: bytes) -> list[bytes]:
    """Every header block of a message: the text before each blank line that follows a boundary
    line or the start."""
    out = []
    for m in re.finditer(rb"(?:^|\n--[^\r\n]*\r?\n)((?:[^\r\n]+\r?\n)+)\r?\n", raw):
        out.append(m.group(1))
    return out


@pytest.mark.parametrize("name", SAMPLES)
def test_sample_header_blocks_read_as_the_parser_reads_them(name):
    raw = (FIXTURES / name).read_bytes()
    taken = 0
    for variant in (raw, raw.replace(b"\r\n", b"\n")):
        for head in _blocks(variant):
            taken += assert_same_block(head)
    assert taken


def test_generated_header_blocks_read_as_the_parser_reads_them():
    lines = [b"Subject: =?utf-8?q?a=0D=0ABcc:_x@y?=", b"Subject: plain", b" folded continuation", b"\tand a tab",
             b"From: \"Dr. X, Y\" <x@y.fr>", b"To: a@b.c,\r\n  d@e.f", b"Date: 32 Foo 2026 99:99:99",
             b"Content-Type: multipart/mixed; boundary=\"==b==\"", b"Content-Type: text/plain; charset=\xe9",
             b"Content-Disposition: attachment; filename=\"=?utf-8?q?r=C3=A9s.pdf?=\"", b"X-Empty:",
             b"X-Colon: a: b: c", b"X-Ctl: a\x0bb\x0cc\x1cd\x1de\x1ef", b"X-Bytes: \xc3\xa9\xff\x80",
             b"X-MSS-INS: 1234", b"Message-ID: <a@b>", b"Content-Transfer-Encoding: base64", b"X-Trail:   ",
             b"MIME-Version: 1.0", b"x-lower:no-space", b"Subject: " + b"y" * 1200]
    rng = random.Random(7)
    taken = 0
    for _ in range(600):
        picked = [rng.choice(lines) for _ in range(rng.randrange(1, 8))]
        eol = rng.choice([b"\r\n", b"\n"])
        taken += assert_same_block(b"".join(line + eol for line in picked))
    assert taken > 300
    for policy in (mime.READ_POLICY, mime.POLICY):  # a part without headers (no _HEAD match needed)
        assert _view(split._header_block(policy, b"")) == \
            _view(BytesParser(policy=policy).parsebytes(b"", headersonly=True))
