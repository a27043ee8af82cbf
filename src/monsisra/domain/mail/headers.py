"""Headers of the mail we write, built from decoded values so that no value can add a line.

Python's ``email`` parses a value assigned to a header and decodes the RFC 2047 encoded words in
it, and before 3.11.10 its serialiser then wrote a decoded CR LF as a real line break: a subject
typed as ``=?utf-8?q?a=0D=0ABcc:_x@y?=`` became a ``Bcc:`` line. Here every value is
flattened to one line first (:func:`domain.text.flatten_line`), anything that is not plain ASCII
text — or that looks like an encoded word — is encoded by ``email.header.Header`` (which never
decodes its input), stored raw, and the finished header block is read back and compared with
what was meant to be written: one more or one less header, and the message is refused
(:class:`HeaderError`) instead of sent.
"""

from __future__ import annotations

import email.utils
from email.header import Header
from email.message import EmailMessage
from email.parser import BytesHeaderParser

from monsisra.domain.addresses import normalize_address
from monsisra.domain.text import flatten_line

ADDRESS_HEADERS = {"from", "to", "cc", "reply-to", "sender", "disposition-notification-to"}
_MAX = 76


class HeaderError(ValueError):
    """A header that cannot be written as one header (French message)."""


def _plain(value: str) -> bool:
    return value.isascii() and value.isprintable() and "=?" not in value


def encode_text(name: str, value: str) -> str:
    """An unstructured header value, ready to be stored raw (folded with CRLF + space)."""
    value = " ".join(flatten_line(value).split())
    if _plain(value) and len(value) + len(name) + 2 <= _MAX:
        return value
    charset = "us-ascii" if _plain(value) else "utf-8"
    return Header(value, charset, maxlinelen=_MAX, header_name=name).encode(linesep="\r\n")


def encode_address(name: str, address: str) -> str:
    addr = normalize_address(address or "")
    if addr is None:
        raise HeaderError(f"adresse invalide dans un en-tête : {flatten_line(address)[:80]!r}")
    display = " ".join(flatten_line(name or "").split())
    if not display:
        return addr
    if _plain(display):
        return email.utils.formataddr((display, addr))
    return f"{Header(display, 'utf-8', maxlinelen=_MAX).encode(linesep=chr(13) + chr(10))} <{addr}>"


class Writer:
    """Sets the top-level headers of one message and checks the result (see the module)."""

    def __init__(self, msg: EmailMessage) -> None:
        self.msg = msg
        self.names: list[str] = []

    def _store(self, name: str, raw: str) -> None:
        if not name.isascii() or not name.replace("-", "").isalnum():
            raise HeaderError(f"nom d'en-tête invalide : {name!r}")
        self.msg.set_raw(name, raw)
        self.names.append(name.lower())

    def text(self, name: str, value: str) -> None:
        self._store(name, encode_text(name, value))

    def token(self, name: str, value: str) -> None:
        """A value we produced ourselves (a date): one line of ASCII or nothing."""
        if not _plain(value):
            raise HeaderError(f"en-tête {name} invalide")
        self._store(name, value)

    def ids(self, name: str, values: list[str]) -> None:
        ids = [v for v in values if v.startswith("<") and v.endswith(">") and _plain(v) and " " not in v]
        if len(ids) != len(values):
            raise HeaderError(f"identifiant de message invalide dans {name}")
        self._store(name, "\r\n ".join(ids))

    def addresses(self, name: str, pairs: list[tuple[str, str]]) -> None:
        self._store(name, ",\r\n ".join(encode_address(n, a) for n, a in pairs))

    def finish(self, data: bytes) -> bytes:
        """``data`` (the serialised message) if its header block holds exactly our headers."""
        head = data.split(b"\r\n\r\n", 1)[0]
        for line in head.split(b"\r\n"):
            if b"\r" in line or b"\n" in line:
                raise HeaderError("saut de ligne isolé dans les en-têtes")
        parsed = BytesHeaderParser().parsebytes(head + b"\r\n\r\n")
        got = [k.lower() for k in parsed.keys() if k.lower() not in ("mime-version", "content-type",
                                                                    "content-transfer-encoding")]
        if sorted(got) != sorted(self.names):
            raise HeaderError("en-têtes incohérents après mise en forme : message non envoyé")
        return data


def is_plain_field(value: str) -> bool:
    """A value we paste into a machine-readable field (MDN, DSN): printable ASCII, one line."""
    return value.isascii() and value.isprintable()
