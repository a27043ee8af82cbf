"""A byte-level MIME cut: the message tree of ordinary mail without the stdlib feed parser.

``email.message_from_bytes`` feeds a message line by line (~1,800 lines for a 100 KB letter); most of
its time goes into the lines of base64 attachments it only copies. :func:`cut` finds the
header/body separator and the boundary lines of each multipart with byte searches, parses only the
header blocks with the library (so header values are exactly the library's), and sets each leaf's
payload to the very string the feed parser would have stored: decoding (base64, quoted-printable)
stays the library's ``get_payload(decode=True)``, which runs in C.

It handles what legitimate mail looks like: headers and a blank line, ``multipart/*`` (mixed,
alternative, related…) nested a few levels, leaves in any of the usual transfer encodings, CRLF or
LF line ends, a missing closing boundary. For anything else it returns ``None`` and the caller uses
the full parser: attached messages (``message/*``), reports, digests, a lone CR, malformed or
continuation-first header lines, no blank line after the headers, a multipart without a usable
boundary, consecutive boundary lines, deep nesting, odd transfer encodings.
"""

from __future__ import annotations

import re
from email._encoded_words import decode_b
from email.message import Message
from email.policy import Policy

MAX_DEPTH = 8  # deeper structures go to the full parser (which enforces the limits)
MAX_PARTS = 100
PLAIN_ENCODINGS = frozenset({"", "7bit", "8bit", "binary", "base64", "quoted-printable"})
FULL_PARSER_TYPES = ("multipart/digest", "multipart/report")

# One header line (a name of printable characters but ":", then ":"), or a continuation line;
# the same lines the feed parser takes for headers, minus its lenient cases (an empty name,
# "From " lines), which go to the full parser.
_HEAD = re.compile(rb"(?:[\x21-\x39\x3b-\x7e]+:[^\r\n]*\r?\n)(?:(?:[\x21-\x39\x3b-\x7e]+:|[ \t])[^\r\n]*\r?\n)*")
_BLANK = re.compile(rb"\n\r?\n")
# A CR not followed by LF. One search instead of counting CRs and CRLFs (two passes over the whole
# message, the second matching every line end: ~3 times the time for a 100 KB letter).
_LONE_CR = re.compile(rb"\r(?!\n)")


class _NotMine(Exception):
    """This message is for the full parser."""


def cut(raw: bytes, policy: Policy) -> Message | None:
    """The tree ``email.message_from_bytes(raw, policy=policy)`` would build, or ``None`` when the
    message is not of the shape this cut handles (then use the full parser)."""
    if _LONE_CR.search(raw) is not None:
        return None  # a lone CR is a line end to the feed parser
    try:
        head, body = _head_body(raw, top=True)
        msg = _header_block(policy, head)
        _fill(policy, msg, body, top=True, depth=0, count=[1])
    except (_NotMine, UnicodeError, RecursionError, ValueError, TypeError, IndexError, LookupError):
        return None
    return msg


def _head_body(region: bytes, top: bool = False) -> tuple[bytes, bytes]:
    """(header lines with their line ends, body) of a part; the blank line between belongs to neither."""
    if region.startswith(b"\r\n") or region.startswith(b"\n"):
        if top:
            raise _NotMine  # a message without headers
        return b"", region[2 if region[0] == 13 else 1:]
    blank = _BLANK.search(region)
    if blank is None:
        raise _NotMine  # headers up to the end, or a body line with no blank line before it
    head = region[:blank.start() + 1]
    if _HEAD.fullmatch(head) is None:
        raise _NotMine
    return head, region[blank.end():]


def _delimiter_lines(body: bytes, boundary: bytes) -> list[tuple[int, int, bool]]:
    """The ``--boundary`` and ``--boundary--`` lines of ``body`` as (start, end, closing): the line
    without its line end, found with ``bytes.find``. No regular expression: the boundary differs
    in every message, so a pattern built from it missed ``re``'s cache and was compiled anew for
    each message (~0.4 ms, more than the rest of the cut)."""
    delimiter = b"--" + boundary
    needle = b"\n" + delimiter
    size = len(body)
    found: list[tuple[int, int, bool]] = []

    def line_at(start: int) -> None:
        # After "--boundary": an optional "--", optional blanks, then a line end or the body's end.
        end = start + len(delimiter)
        closing = body.startswith(b"--", end)
        if closing:
            end += 2
        while end < size and body[end] in (32, 9):  # " ", "\t"
            end += 1
        if end == size or body[end] == 10 or body.startswith(b"\r\n", end):
            found.append((start, end, closing))

    if body.startswith(delimiter):
        line_at(0)
    at = body.find(needle)
    while at >= 0:
        line_at(at + 1)
        if len(found) > MAX_PARTS + 1:
            raise _NotMine  # hostile or huge: the full parser and its limits decide
        at = body.find(needle, at + 1)
    return found


def _header_block(policy: Policy, head: bytes) -> Message:
    """What ``BytesParser(policy=policy).parsebytes(head, headersonly=True)`` returns for a header
    block that :data:`_HEAD` matched (no lone CR either), without the feed parser's machinery
    around it (a third of the cut's time): the same ASCII/surrogateescape text, the same lines
    (split on LF only, CR LF kept: there is no lone CR), the same grouping of continuation lines,
    each header stored raw through ``policy.header_source_parse`` as the feed parser stores it,
    and the empty payload it sets."""
    msg = policy.message_factory(policy=policy)  # type: ignore[misc]
    text = head.decode("ascii", "surrogateescape")
    current: list[str] = []
    for line in text.split("\n")[:-1]:  # ``head`` ends with its last line's LF
        line += "\n"
        if line[0] in " \t":
            current.append(line)  # a continuation (``_HEAD`` never starts with one)
            continue
        if current:
            msg.set_raw(*policy.header_source_parse(current))  # type: ignore[attr-defined]
        current = [line]
    if current:
        msg.set_raw(*policy.header_source_parse(current))  # type: ignore[attr-defined]
    msg._payload = ""  # type: ignore[attr-defined]
    return msg


def _fill(policy: Policy, msg: Message, body: bytes, *, top: bool, depth: int, count: list[int]) -> None:
    """Set ``msg``'s payload from the bytes of its body, as the feed parser would."""
    ctype = msg.get_content_type()  # once: each call parses the header lookup again
    maintype = ctype.split("/")[0]  # what get_content_maintype() computes from it
    if maintype == "message" or ctype in FULL_PARSER_TYPES:
        raise _NotMine
    if maintype != "multipart":
        if str(msg.get("content-transfer-encoding", "")).strip().lower() not in PLAIN_ENCODINGS:
            raise _NotMine
        if not top:  # the line end before a boundary line belongs to the boundary (RFC 2046)
            body = body[:-2] if body.endswith(b"\r\n") else body[:-1] if body.endswith(b"\n") else body
        payload = body.decode("ascii", "surrogateescape")
        msg._payload = payload  # type: ignore[attr-defined]
        # The bytes the payload was made from, for :func:`decoded_payload` (kept with the payload
        # object itself, so that a payload set later is not mistaken for it).
        msg._cut_body = (payload, body)  # type: ignore[attr-defined]
        return
    if depth >= MAX_DEPTH:
        raise _NotMine
    boundary = msg.get_boundary()
    if not boundary:
        raise _NotMine
    lines = _delimiter_lines(body, boundary.encode("ascii"))
    if not lines or lines[0][2]:
        raise _NotMine  # no opening boundary: the library keeps the text as the payload
    children: list[Message] = []
    for i, (_, line_end, closing) in enumerate(lines):
        if closing:
            break  # the closing boundary: what follows is the epilogue
        start = line_end + (2 if body[line_end:line_end + 1] == b"\r" else 1)
        start = min(start, len(body))
        following = lines[i + 1][0] if i + 1 < len(lines) else None
        if following is not None and following == start:
            raise _NotMine  # consecutive boundary lines: the library skips them
        region = body[start:following] if following is not None else body[start:]
        count[0] += 1
        if count[0] > MAX_PARTS:
            raise _NotMine
        head, part_body = _head_body(region)
        child = _header_block(policy, head)
        _fill(policy, child, part_body, top=False, depth=depth + 1, count=count)
        children.append(child)
    msg._payload = children  # type: ignore[attr-defined]


def decoded_payload(part: Message) -> bytes | None:
    """``part.get_payload(decode=True)``, the same bytes and defects; for a base64 leaf cut here,
    decoded from the bytes kept by :func:`cut` with the library's own ``decode_b``, skipping the
    library's road there: two copies of the text back to bytes, then a split into its ~1,800
    lines and their join (a third of the parse of a 100 KB letter). Removing CR and LF in one
    pass is what ``b"".join(data.splitlines())`` does to bytes."""
    kept = getattr(part, "_cut_body", None)
    if (kept is None or kept[0] is not part._payload  # type: ignore[attr-defined]
            or str(part.get("content-transfer-encoding", "")).lower() != "base64"):
        return part.get_payload(decode=True)
    value, defects = decode_b(kept[1].translate(None, b"\r\n"))
    for defect in defects:
        part.policy.handle_defect(part, defect)  # type: ignore[union-attr]
    return value
