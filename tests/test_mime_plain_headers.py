"""Headers read without the library's grammar (``mime._PlainHeader``): for the plain values
``mime._plain_text`` reads, the text is exactly what the library's parse gives, and every other
attribute is the library's own. Checked on generated values of every accepted shape, on the
header values of the samples of ``tests/fixtures`` (hostile ones included), and on whole messages
parsed with and without the shortcut."""

from __future__ import annotations

import email
import email.policy
import random
from pathlib import Path

import pytest

from monsisra.domain.mail import mime

FIXTURES = Path(__file__).parent / "fixtures"
SAMPLES = sorted(p.name for p in FIXTURES.glob("*.eml"))
WORD = "ABCXYZabcxyz0189!#$%&'*+.^_`{|}~-"
QUOTED = " !#$%&'()*+,-./0189:;<=>?@AZ[]^_`az{|}~"
ATOM = "Aaz09!#$%&'*+/=?^_`{|}~-"
ATTRS = ["a", "ABC", "x-1", "a_b", "a.b"]


def _word(rng: random.Random, chars: str = WORD) -> str:
    return "".join(rng.choice(chars) for _ in range(rng.randint(1, 12)))


def _params(rng: random.Random) -> str:
    out = ""
    for _ in range(rng.randint(0, 3)):
        kind = rng.random()
        if kind < 0.2:
            value = _word(rng)  # "'" or "*" in it: left to the library
        elif kind < 0.5:
            value = _word(rng, WORD.replace("'", "").replace("*", ""))
        else:
            value = '"' + "".join(rng.choice(QUOTED) for _ in range(rng.randint(0, 20))) + '"'
        out += rng.choice(["; ", ";"]) + rng.choice([*ATTRS, _word(rng, "abcXYZ09-_.")]) + "=" + value
    return out


def _generated() -> list[tuple[str, str]]:
    rng = random.Random(18)
    values = [("Content-Type", 'multipart/mixed; boundary="===============8526512342861992270=="'),
              ("Content-Type", "application/pdf"), ("Content-Type", 'text/plain; charset="utf-8"'),
              ("Content-Disposition", 'attachment; filename="CR_0.pdf"'), ("Content-Disposition", "inline"),
              ("Message-ID", "<x.0.b4055e226f71413498141b07ec1f0461@autre-operateur.localhost>"),
              ("Content-Type", 'text/plain; name="a=?b"'), ("Content-Type", "text/plain; charset*=utf-8''x"),
              ("Content-Type", 'text/plain; name="a\\"b"'), ("Content-Type", "text/plain (comment)"),
              ("Content-Type", "text/plain;  a=b"), ("Content-Type", "text/plain ;a=b"), ("Message-ID", "<a..b@c>"),
              ("Message-ID", "<.a@b>"), ("Message-ID", "<a@b> "), ("Message-ID", "<=?utf-8?q?a?=@b>"),
              ("content-type", "TEXT/Plain; Charset=UTF-8"), ("Content-Disposition", 'attachment; filename=""'),
              ("Message-ID", "\r\n <r0abc123.0.d0b5456cfcdb409fab43bbf0345c7a41@autre-operateur.localhost>"),
              ("Message-ID", "\r\n\t<a@b>"), ("Message-ID", "  <a@b>"), ("Message-ID", "\n <a@b>"),
              ("Content-Type", 'multipart/mixed;\r\n boundary="b1"'),
              ("Content-Type", 'multipart/mixed;\r\n\tboundary="b1"'),
              ("Message-ID", "<a@b>\r\n "), ("Message-ID", "\r<a@b>")]
    for _ in range(600):
        values.append(("Content-Type", _word(rng) + "/" + _word(rng) + _params(rng)))
        values.append(("Content-Disposition", _word(rng) + _params(rng)))
        fold = rng.choice(["", " ", "\r\n ", "\r\n\t", "\t\t"])
        values.append(("Message-ID", fold + "<" + ".".join(_word(rng, ATOM) for _ in range(rng.randint(1, 3))) + "@"
                       + ".".join(_word(rng, ATOM) for _ in range(rng.randint(1, 3))) + ">"))
    return values


def _samples() -> list[tuple[str, str]]:
    out = []
    for name in SAMPLES:
        for part in email.message_from_bytes((FIXTURES / name).read_bytes(), policy=mime.READ_POLICY).walk():
            out += [(k, v) for k, v in part.raw_items() if isinstance(v, str)]
    return out


def _stock(name: str, value: str):
    return email.policy.EmailPolicy.header_fetch_parse(mime.READ_POLICY, name, value)


ATTRIBUTES = ("name", "defects", "params", "content_type", "maintype", "subtype", "content_disposition")


@pytest.mark.parametrize("name,value", _generated() + _samples())
def test_a_plain_value_reads_as_the_library_reads_it(name, value):
    stock = _stock(name, value)
    ours = mime._parsed_header(mime.READ_POLICY, name, value)
    assert str(ours) == str(stock)
    assert ours == stock and hash(ours) == hash(stock)
    for attr in ATTRIBUTES:
        assert repr(getattr(ours, attr, None)) == repr(getattr(stock, attr, None))
    assert ours.fold(policy=mime.READ_POLICY) == stock.fold(policy=mime.READ_POLICY)


def test_the_shortcut_takes_the_bench_letter_values():
    for name, value in [*_generated()[:6], _generated()[18]]:
        assert isinstance(mime._parsed_header(mime.READ_POLICY, name, value), mime._PlainHeader), value
    for name, value in _generated()[6:12]:
        assert mime._plain_text(name, value) is None, value
    unfolded = [(n, "".join(email.policy.linesep_splitter.split(v))) for n, v in _generated()]
    assert sum(mime._plain_text(n, v) is not None for n, v in unfolded) > 1500


@pytest.mark.parametrize("name", SAMPLES)
def test_messages_parse_the_same_without_the_shortcut(name, monkeypatch):
    raw = (FIXTURES / name).read_bytes()

    def outcome(fast: bool):
        try:
            return mime.parse(raw, "secretariat@autre-operateur.localhost", fast=fast)
        except mime.MailError as exc:
            return exc.reply

    mime._parsed_header.cache_clear()
    with_shortcut = [outcome(True), outcome(False)]
    monkeypatch.setattr(mime, "_plain_text", lambda name, value: None)
    mime._parsed_header.cache_clear()
    without = [outcome(True), outcome(False)]
    mime._parsed_header.cache_clear()
    assert with_shortcut == without


ADDRESS_VALUES = ["", "x", "a@b.c", "Secrétariat <secretariat@autre-operateur.localhost>",
                  '"Dr. X, Y" <x@y.fr>, z@w.fr, <@r:a@b>', "  Spaced   Name  <A@B.FR>", "a@b, c@d, e",
                  "<a@b", "=?utf-8?q?x?= <a@b>", "x" * 1200 + " <a@b>", ", ".join(f"p{i}@h.fr" for i in range(300))]


@pytest.mark.parametrize("raw", ADDRESS_VALUES)
def test_memoised_address_reads_equal_the_parser(raw):
    for _ in range(2):  # the second time from the memo
        assert mime._read_address(raw) == mime._parse_address(raw)
        assert mime._read_addresses(raw) == (mime._parse_addresses(raw) if raw else ())
    display, addr = email.utils.parseaddr(raw)
    assert mime._read_address(raw) == (" ".join(display.split())[:200], addr.strip().lower())
    pairs = email.utils.getaddresses([raw]) if raw else []
    assert list(mime._read_addresses(raw)) == [(" ".join(n.split())[:200], a.strip().lower())
                                               for n, a in pairs if "@" in a][:200]
