"""The shape of an RFC 5322 message as byte offsets: each part's header and body span, its
content type and parameters, its size and line count, and an attached message's own shape.

This is what an IMAP server needs to answer BODYSTRUCTURE, ENVELOPE and ``BODY[1.2.MIME]``
by reading slices of a stored file, never the whole message. Pure: bytes in, plain data out
(JSON-friendly dicts, so that a shape computed once can be kept beside the file).
"""

from __future__ import annotations

import email
import email.policy
import email.utils
import re
from typing import Any

MAX_DEPTH = 20
MAX_PARTS = 1000
_HEADER_END = re.compile(rb"\r?\n\r?\n")


def header_end(data: bytes, start: int, end: int) -> int:
    """Offset where the body of the entity at ``start`` begins (after the blank line)."""
    if data[start:start + 2] == b"\r\n":  # no header at all
        return start + 2
    m = _HEADER_END.search(data, start, end)
    return m.end() if m else end


def _headers(raw: bytes) -> email.message.Message:
    return email.message_from_bytes(raw + b"\r\n", policy=email.policy.compat32)


def parse(data: bytes) -> dict[str, Any]:
    """The shape of a whole message (offsets into ``data``)."""
    counter = [0]
    return _entity(data, 0, len(data), None, 0, counter)


def _entity(data: bytes, start: int, end: int, default_type: str | None, depth: int,
            counter: list[int]) -> dict[str, Any]:
    counter[0] += 1
    body = header_end(data, start, end)
    msg = _headers(data[start:body])
    if default_type and not msg.get("Content-Type"):
        msg.set_default_type(default_type)
    ctype = msg.get_content_type()
    maintype, _, subtype = ctype.partition("/")
    params = [(k.upper(), v) for k, v in (msg.get_params() or [])[1:]] if msg.get("Content-Type") else []
    if not msg.get("Content-Type") and maintype == "text":
        params = [("CHARSET", "us-ascii")]
    disp = msg.get("Content-Disposition")
    disposition = None
    if disp:
        dmsg = _headers(b"Content-Type: " + disp.encode("utf-8", "replace"))
        dparams = dmsg.get_params() or []
        if dparams:
            disposition = [dparams[0][0].lower(), [(k.upper(), v) for k, v in dparams[1:]]]
    part: dict[str, Any] = {
        "start": start, "body": body, "end": end,
        "type": maintype.lower(), "subtype": subtype.lower(), "params": params,
        "id": msg.get("Content-ID"), "description": msg.get("Content-Description"),
        "encoding": (msg.get("Content-Transfer-Encoding") or "7bit").strip().upper(),
        "md5": msg.get("Content-MD5"), "disposition": disposition,
        "language": msg.get("Content-Language"), "location": msg.get("Content-Location"),
        "lines": data.count(b"\n", body, end),
    }
    if maintype == "multipart" and depth < MAX_DEPTH:
        boundary = msg.get_param("boundary")
        part["parts"] = _children(data, body, end, str(boundary) if boundary else "",
                                  "message/rfc822" if subtype == "digest" else None, depth, counter)
        if not part["parts"]:  # a multipart without parts reads as one text part
            part.update(type="text", subtype="plain", params=[("CHARSET", "us-ascii")])
            del part["parts"]
    elif ctype in ("message/rfc822", "message/global") and depth < MAX_DEPTH and counter[0] < MAX_PARTS \
            and part["encoding"] in ("7BIT", "8BIT", "BINARY"):
        part["message"] = _entity(data, body, end, None, depth + 1, counter)
    return part


def _children(data: bytes, start: int, end: int, boundary: str, default_type: str | None, depth: int,
              counter: list[int]) -> list[dict[str, Any]]:
    if not boundary:
        return []
    delim = b"--" + boundary.encode("ascii", "replace")
    marks: list[tuple[int, int, bool]] = []  # (line start, line end incl. CRLF, closing)
    pos = start
    while pos < end:
        at = data.find(delim, pos, end)
        if at < 0:
            break
        if at != start and data[at - 1:at] != b"\n":
            pos = at + 1
            continue
        eol = data.find(b"\n", at, end)
        eol = end if eol < 0 else eol + 1
        closing = data[at + len(delim):at + len(delim) + 2] == b"--"
        marks.append((at, eol, closing))
        pos = eol
        if closing:
            break
    parts = []
    for (_, after, closing), nxt in zip(marks, [*marks[1:], (end, end, True)], strict=False):
        if closing or counter[0] >= MAX_PARTS:
            break
        stop = nxt[0]
        # The CRLF before a delimiter belongs to the delimiter.
        if data[stop - 2:stop] == b"\r\n":
            stop -= 2
        elif data[stop - 1:stop] == b"\n":
            stop -= 1
        stop = max(stop, after)
        parts.append(_entity(data, after, stop, default_type, depth + 1, counter))
    return parts


def find(shape: dict[str, Any], path: tuple[int, ...]) -> dict[str, Any] | None:
    """The part at an IMAP part path (1-based); ``()`` is the message itself. Part 1 of a
    single-part entity is its body; the parts of an attached message are those of the message
    it carries."""
    node = shape
    for n in path:
        if "message" in node and node is not shape:
            node = node["message"]
            if "parts" not in node:
                if n != 1:
                    return None
                continue
        if "parts" in node:
            if not 1 <= n <= len(node["parts"]):
                return None
            node = node["parts"][n - 1]
        elif n != 1:
            return None
    return node


_ENVELOPE_FIELDS = ("date", "subject", "from", "sender", "reply-to", "to", "cc", "bcc", "in-reply-to",
                    "message-id")


def envelope(header: bytes) -> dict[str, Any]:
    """The ENVELOPE values of a header block (raw header text, addresses split)."""
    msg = _headers(header)

    def addrs(name: str) -> list[tuple[str | None, str | None, str | None]] | None:
        values = msg.get_all(name)
        if not values:
            return None
        out = []
        for display, address in email.utils.getaddresses([" ".join(str(v) for v in values)]):
            if not address and not display:
                continue
            local, _, host = address.rpartition("@") if "@" in address else (address, "", "")
            out.append((display or None, local or None, host or None))
        return out or None

    def text(name: str) -> str | None:
        value = msg.get(name)
        return re.sub(r"\r?\n[ \t]", " ", str(value)).strip() if value is not None else None

    froms = addrs("from")
    return {
        "date": text("date"), "subject": text("subject"), "from": froms,
        "sender": addrs("sender") or froms, "reply-to": addrs("reply-to") or froms,
        "to": addrs("to"), "cc": addrs("cc"), "bcc": addrs("bcc"),
        "in-reply-to": text("in-reply-to"), "message-id": text("message-id"),
    }


def header_fields(header: bytes, names: tuple[str, ...], *, exclude: bool) -> bytes:
    """The header lines (with their folded continuations) named, or all but those."""
    wanted = {n.lower() for n in names}
    out = bytearray()
    keep = False
    for line in header.splitlines(keepends=True):
        if line in (b"\r\n", b"\n"):
            break
        if line[:1] in (b" ", b"\t"):
            if keep:
                out += line
            continue
        name = line.split(b":", 1)[0].strip().decode("ascii", "replace").lower()
        keep = (name in wanted) != exclude
        if keep:
            out += line
    return bytes(out) + b"\r\n"
