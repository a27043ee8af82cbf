"""FETCH responses: IMAP strings, ENVELOPE, BODY/BODYSTRUCTURE from a message's shape, and
``BODY[section]<partial>`` as byte ranges of the message file (streamed, never read whole)."""

from __future__ import annotations

import email.header
import email.utils
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from monsisra.domain.mail import structure
from monsisra.imap.grammar import MONTHS, Section
from monsisra.services.mail_access import Content


@dataclass(frozen=True)
class FileRange:
    """Bytes ``start:end`` of a file, written to the client in chunks."""

    content: Content
    start: int
    end: int


Chunk = bytes | FileRange


def ascii_text(text: str) -> str:
    """Response text is 7-bit: the French wording without its accents."""
    flat = unicodedata.normalize("NFKD", text).replace("«", '"').replace("»", '"').replace("’", "'")
    return "".join(c for c in flat.encode("ascii", "ignore").decode() if c not in "\r\n")


def qstring(value: str | bytes | None) -> bytes:
    """NIL, a quoted string, or a literal when the value needs one (8-bit, CR/LF, very long)."""
    if value is None:
        return b"NIL"
    data = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
    if len(data) < 1000 and all(0x20 <= c < 0x7F for c in data):
        return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d}\r\n" % len(data) + data


def internal_date(at: datetime) -> bytes:
    at = at if at.tzinfo else at.replace(tzinfo=UTC)
    return f'"{at.day:02d}-{MONTHS[at.month - 1]}-{at.year} {at:%H:%M:%S} +0000"'.encode()


def _addresses(values: list | None) -> bytes:
    if not values:
        return b"NIL"
    return b"(" + b"".join(b"(" + qstring(n) + b" NIL " + qstring(m) + b" " + qstring(h) + b")"
                           for n, m, h in values) + b")"


def envelope(env: dict[str, Any]) -> bytes:
    return b"(" + b" ".join([
        qstring(env["date"]), qstring(env["subject"]), _addresses(env["from"]), _addresses(env["sender"]),
        _addresses(env["reply-to"]), _addresses(env["to"]), _addresses(env["cc"]), _addresses(env["bcc"]),
        qstring(env["in-reply-to"]), qstring(env["message-id"])]) + b")"


def envelope_of(content: Content, part: dict[str, Any] | None = None) -> bytes:
    if part is None:
        return envelope(structure.envelope(content.read(0, content.header_end())))
    return envelope(structure.envelope(content.read(part["start"], part["body"])))


def _param_value(v: Any) -> str:
    """A parameter as clients read it: RFC 2231 values decoded, non-ASCII as an RFC 2047 word."""
    if isinstance(v, list | tuple):  # RFC 2231 (charset, language, value)
        try:
            v = email.utils.collapse_rfc2231_value(tuple(v))
        except (LookupError, TypeError, ValueError):
            v = str(v[-1])
    v = str(v)
    if not v.isascii():
        return email.header.Header(v, "utf-8").encode()
    return v


def _params(params: list) -> bytes:
    if not params:
        return b"NIL"
    return b"(" + b" ".join(qstring(str(k)) + b" " + qstring(_param_value(v)) for k, v in params) + b")"


def _disposition(disp: list | None) -> bytes:
    if not disp:
        return b"NIL"
    return b"(" + qstring(disp[0]) + b" " + _params(disp[1]) + b")"


def bodystructure(content: Content, part: dict[str, Any], extended: bool = True) -> bytes:
    if "parts" in part:
        out = b"(" + b"".join(bodystructure(content, p, extended) for p in part["parts"])
        out += b" " + qstring(part["subtype"].upper())
        if extended:
            out += b" " + b" ".join([_params(part["params"]), _disposition(part["disposition"]),
                                     qstring(part["language"]), qstring(part["location"])])
        return out + b")"
    size = part["end"] - part["body"]
    fields = [qstring(part["type"].upper()), qstring(part["subtype"].upper()), _params(part["params"]),
              qstring(part["id"]), qstring(part["description"]), qstring(part["encoding"]), b"%d" % size]
    if "message" in part:
        inner = part["message"]
        fields += [envelope_of(content, inner), bodystructure(content, inner, extended), b"%d" % part["lines"]]
    elif part["type"] == "text":
        fields.append(b"%d" % part["lines"])
    if extended:
        fields += [qstring(part["md5"]), _disposition(part["disposition"]), qstring(part["language"]),
                   qstring(part["location"])]
    return b"(" + b" ".join(fields) + b")"


class NoSuchPart(Exception):
    pass


def section_data(content: Content, section: Section) -> Chunk:
    """The bytes a section names, as a file range (or bytes for a header subset)."""
    if not section.path:  # the message's own header and text: no need of its shape
        if not section.text:
            return FileRange(content, 0, content.size)
        end = content.header_end()
        if section.text == "HEADER":
            return FileRange(content, 0, end)
        if section.text == "TEXT":
            return FileRange(content, end, content.size)
        return structure.header_fields(content.read(0, end), section.fields, exclude=section.text.endswith(".NOT"))
    shape = content.shape
    assert shape is not None, "load_shape first"
    node = structure.find(shape, section.path)
    if node is None:
        return b""  # a part that does not exist reads as empty (RFC 3501 §6.4.5)
    if section.text == "MIME":
        return FileRange(content, node["start"], node["body"])
    if not section.text:
        if not section.path:
            return FileRange(content, 0, content.size)
        return FileRange(content, node["body"], node["end"])
    entity = node if not section.path else node.get("message")
    if entity is None:
        return b""
    if section.text == "TEXT":
        return FileRange(content, entity["body"], entity["end"])
    if section.text == "HEADER":
        return FileRange(content, entity["start"], entity["body"])
    header = content.read(entity["start"], entity["body"])
    return structure.header_fields(header, section.fields, exclude=section.text.endswith(".NOT"))


def partial(chunk: Chunk, part: tuple[int, int] | None) -> Chunk:
    if part is None:
        return chunk
    start, length = part
    if isinstance(chunk, bytes):
        return chunk[start:start + length]
    lo = min(chunk.start + start, chunk.end)
    return FileRange(chunk.content, lo, min(lo + length, chunk.end))


def literal(chunk: Chunk) -> list[Chunk]:
    size = len(chunk) if isinstance(chunk, bytes) else chunk.end - chunk.start
    return [b"{%d}\r\n" % size, chunk]
