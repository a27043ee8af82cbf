"""MIME in and out with the standard ``email`` package (policy ``default``).

:func:`parse` turns raw bytes from another operator into plain values, never trusting them: depth
and part limits, headers decoded and flattened to one line, bodies with "\\n" line breaks and no
control characters, HTML-only mail turned into readable text. It never drops what it cannot
structure: an empty or boundary-less multipart keeps its text, and an attached message
(``message/rfc822``) stays one attachment holding its original bytes. :func:`build` renders one of
our messages for SMTP with headers made by :mod:`monsisra.domain.mail.headers` (no value can add a line).
"""

from __future__ import annotations

import email
import email.policy
import email.utils
import functools
import re
from dataclasses import dataclass, field
from datetime import datetime
from email.headerregistry import HeaderRegistry
from email.message import EmailMessage, Message

from monsisra.domain.html import html_to_text
from monsisra.domain.mail import headers as hdr
from monsisra.domain.mail import reports as mdn_mod
from monsisra.domain.mail import split
from monsisra.domain.text import clean_multiline, flatten_line

MAX_DEPTH = 16
MAX_PARTS = 300
POLICY = email.policy.default
MEMO_HEADER_CHARS = 998  # longer values (rare, maybe hostile) are parsed each time, not kept
EMBEDDED_TYPES = ("message/rfc822", "message/global")


class _ReadPolicy(email.policy.EmailPolicy):
    """``policy.default`` whose parsed header values are memoised.

    The parser and :func:`_walk` ask for a part's Content-Type several times, and each request
    runs the whole RFC 5322 header grammar again; many values (``text/plain; charset=utf-8``,
    ``application/pdf``…) also recur from one message to the next. Parsed headers are
    immutable ``str`` subclasses, so one parse can serve every request.
    """

    def header_fetch_parse(self, name: str, value: str):  # type: ignore[override]
        if hasattr(value, "name") or len(value) > MEMO_HEADER_CHARS:
            return super().header_fetch_parse(name, value)
        return _parsed_header(self, name, value)


@functools.lru_cache(maxsize=4096)
def _parsed_header(policy: _ReadPolicy, name: str, value: str):
    # Unfolded first, as ``EmailPolicy.header_fetch_parse`` does before parsing.
    text = _plain_text(name, "".join(email.policy.linesep_splitter.split(value)))
    if text is not None:
        return _PlainHeader(text, (policy, name, value))
    return email.policy.EmailPolicy.header_fetch_parse(policy, name, value)


# Values whose parsed text is known without the library's grammar (checked against the library
# for every shape in ``tests/test_mime_plain_headers.py``): printable ASCII on one line, no
# encoded word ("=?"), no backslash, no comment, no RFC 2231 parameter (``name*=``); a MIME type
# or disposition with plain ``; name=value`` parameters, or a plain ``<local@domain>`` Message-ID.
_MIME_WORD = r"[A-Za-z0-9!#$%&'*+.^_`{|}~-]+"
_PARAM = r'; ?([A-Za-z0-9_.-]+)=([A-Za-z0-9!#$%&+.^_`{|}~-]+|"[ !#-\[\]-~]*")'
_ATOMS = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
_PLAIN = {
    "content-type": re.compile(rf"{_MIME_WORD}/{_MIME_WORD}(?:{_PARAM})*"),
    "content-disposition": re.compile(rf"{_MIME_WORD}(?:{_PARAM})*"),
    "message-id": re.compile(rf"[ \t]*<{_ATOMS}@{_ATOMS}>"),
}
_PARAM_RE = re.compile(_PARAM)


def _plain_text(name: str, value: str) -> str | None:
    """The text of the library's parsed header for a plain value, else None. A Message-ID's is
    the value; a MIME type's is written again as the library writes it: the type as sent, then
    each parameter once (the first of a name), ``; name="value"`` (``; name`` when empty)."""
    pattern = _PLAIN.get(name.lower())
    if pattern is None or "=?" in value or pattern.fullmatch(value) is None:
        return None
    if pattern is _PLAIN["message-id"]:
        return value
    cut = value.find(";")
    if cut < 0:
        return value
    params: dict[str, str] = {}
    for match in _PARAM_RE.finditer(value, cut):
        key, raw = match.groups()
        params.setdefault(key, raw[1:-1] if raw.startswith('"') else raw)
    return value[:cut] + "; " + "; ".join(f'{k}="{v}"' if v else k for k, v in params.items())


class _PlainHeader(str):
    """A header whose text is known without parsing it (:func:`_plain_text`): what the memo
    hands back for the values that differ in every message (a multipart's boundary, an
    attachment's file name, the Message-ID), which the library parses at ~0.1–0.2 ms each
    through its full header grammar only to return the same text. Anything else asked of it
    (``params``, ``defects``, ``content_type``, ``name``…) parses it then, once, and answers
    exactly as the library's header object."""

    def __new__(cls, text: str, source: tuple[email.policy.EmailPolicy, str, str]) -> _PlainHeader:
        self = super().__new__(cls, text)
        self._source = source
        return self

    def __getattr__(self, attr: str):
        if attr.startswith("__") or attr in ("_source", "_parsed"):
            raise AttributeError(attr)
        parsed = self.__dict__.get("_parsed")
        if parsed is None:
            parsed = self.__dict__["_parsed"] = email.policy.EmailPolicy.header_fetch_parse(*self._source)
        return getattr(parsed, attr)


class _ClassCachingRegistry(HeaderRegistry):
    """The standard header registry, but the class that parses a kind of header is built once.

    ``HeaderRegistry.__getitem__`` builds a new class with ``type()`` on every call: one per header
    value parsed, the largest cost of reading the headers of a message whose values are new
    (Subject, Message-ID, an attachment's file name), more than the RFC 5322 parse itself. That
    class depends only on the registered class the name maps to (a few dozen, plus the default
    for any other name: the cache cannot grow with what senders write), so one serves every
    value; parsing is unchanged.
    """

    def __init__(self) -> None:
        super().__init__()
        self._classes: dict[type, type] = {}

    def map_to_type(self, name: str, cls: type) -> None:
        super().map_to_type(name, cls)
        self._classes.clear()

    def __getitem__(self, name: str) -> type:
        specialised = self.registry.get(name.lower(), self.default_class)
        cls = self._classes.get(specialised)
        if cls is None:
            cls = self._classes[specialised] = type("_" + specialised.__name__, (specialised, self.base_class), {})
        return cls


READ_POLICY = _ReadPolicy(header_factory=_ClassCachingRegistry())


class MailError(Exception):
    """The message is refused; ``reply`` is the SMTP reply (code, enhanced code, French text)."""

    def __init__(self, text: str, code: str = "554 5.6.0") -> None:
        super().__init__(text)
        self.reply = f"{code} {text}"


@dataclass
class Part:
    filename: str | None
    content_type: str
    data: bytes


@dataclass
class ParsedMail:
    message_id: str | None
    subject: str
    sender_address: str
    sender_name: str
    date: datetime | None
    in_reply_to: list[str]
    references: list[str]
    text: str
    html: str | None
    attachments: list[Part] = field(default_factory=list)
    mss_headers: dict[str, str] = field(default_factory=dict)
    notify_to: str | None = None  # Disposition-Notification-To
    return_path: str | None = None
    # Set only when the message *itself* is a report (its top-level type), never for a report
    # carried inside an ordinary message (a forwarded receipt is just an attachment).
    mdn: mdn_mod.MdnReport | None = None
    dsn: mdn_mod.DsnReport | None = None
    to: list[tuple[str, str]] = field(default_factory=list)
    cc: list[tuple[str, str]] = field(default_factory=list)
    auto_submitted: str = ""

    @property
    def is_report(self) -> bool:
        return self.mdn is not None or self.dsn is not None


def _header(msg: Message, name: str) -> str:
    try:
        value = msg.get(name)
    except Exception:  # a malformed header must not stop the parse
        value = None
    if value is None:
        return ""
    # A decoded encoded-word may hide CR/LF or any control: headers are single lines from here on.
    return " ".join(flatten_line(str(value)).split())


def _address(msg: Message, name: str) -> tuple[str, str]:
    return _read_address(_header(msg, name))


def _addresses(msg: Message, name: str) -> list[tuple[str, str]]:
    return list(_read_addresses(_header(msg, name)))


# The address parsers are pure functions of the header's text, and the same From and To come back
# in every letter of a correspondence: their results are memoised (short values only).
def _read_address(raw: str) -> tuple[str, str]:
    return _parse_address(raw) if len(raw) > MEMO_HEADER_CHARS else _memo_address(raw)


def _parse_address(raw: str) -> tuple[str, str]:
    display, addr = email.utils.parseaddr(raw)
    return " ".join(display.split())[:200], addr.strip().lower()


_memo_address = functools.lru_cache(maxsize=2048)(_parse_address)


def _read_addresses(raw: str) -> tuple[tuple[str, str], ...]:
    if not raw:
        return ()
    if len(raw) > MEMO_HEADER_CHARS:
        return _parse_addresses(raw)
    return _memo_addresses(raw)


def _parse_addresses(raw: str) -> tuple[tuple[str, str], ...]:
    pairs = email.utils.getaddresses([raw])
    return tuple((" ".join(n.split())[:200], a.strip().lower()) for n, a in pairs if "@" in a)[:200]


_memo_addresses = functools.lru_cache(maxsize=2048)(_parse_addresses)


def _ids(value: str) -> list[str]:
    out = []
    for token in value.replace(",", " ").split():
        if token.startswith("<") and token.endswith(">") and 2 < len(token) <= 255:
            out.append(token)
    return out[:50]


def _text_of(part: Message) -> str:
    raw = part.get_payload(decode=True) or b""
    charset = part.get_content_charset() or "utf-8"
    try:
        text = raw.decode(charset, errors="replace")
    except LookupError:
        text = raw.decode("utf-8", errors="replace")
    return clean_multiline(text)


def _date(msg: Message) -> datetime | None:
    value = _header(msg, "Date")
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value)
    except (ValueError, TypeError, IndexError, OverflowError):
        return None


def _read(raw: bytes) -> Message:
    try:
        return email.message_from_bytes(raw, policy=READ_POLICY)
    except (RecursionError, ValueError, TypeError, IndexError) as exc:
        raise MailError(f"message illisible ({type(exc).__name__})") from None


class NeedsFullParser(Exception):
    """The byte-level cut does not handle this message and the caller set ``full_up_to`` below its
    size: parse it where a long parse does no harm (a helper process)."""


def parse(raw: bytes, return_path: str | None = None, *, fast: bool = True,
          full_up_to: int | None = None) -> ParsedMail:
    """Parse a received message; raises :class:`MailError` for what cannot be accepted.

    Ordinary mail is cut at the byte level (:mod:`monsisra.domain.mail.split`, the same tree as
    the library's); anything else, or ``fast=False``, goes through the library's full parser,
    unless the message is larger than ``full_up_to`` bytes (:class:`NeedsFullParser`)."""
    msg = split.cut(raw, READ_POLICY) if fast else None
    if msg is None:
        if full_up_to is not None and len(raw) > full_up_to:
            raise NeedsFullParser()
        msg = _read(raw)
    name, address = _address(msg, "From")
    if not address or "@" not in address:
        raise MailError("en-tête From absent ou invalide", "550 5.1.7")
    mss = {}
    for key in msg.keys():
        if key.lower().startswith("x-mss-"):
            mss[key.upper()] = _header(msg, key)[:500]
    _, notify = _address(msg, "Disposition-Notification-To")
    parsed = ParsedMail(message_id=(_ids(_header(msg, "Message-ID")) or [None])[0],
                        subject=_header(msg, "Subject")[:998], sender_address=address, sender_name=name,
                        date=_date(msg), in_reply_to=_ids(_header(msg, "In-Reply-To")),
                        references=_ids(_header(msg, "References")), text="", html=None, mss_headers=mss,
                        notify_to=notify or None, return_path=return_path, to=_addresses(msg, "To"),
                        cc=_addresses(msg, "Cc"), auto_submitted=_header(msg, "Auto-Submitted").lower()[:100])
    if msg.get_content_type() == "multipart/report":
        report_type = (msg.get_param("report-type") or "").lower()
        if report_type == "disposition-notification":
            parsed.mdn = mdn_mod.parse_report(msg)
        elif report_type == "delivery-status":
            parsed.dsn = mdn_mod.parse_dsn(msg)
    _walk(msg, parsed, raw)
    return parsed


def _walk(root: Message, parsed: ParsedMail, raw: bytes) -> None:
    """Bodies and attachments, depth first, in document order."""
    stack: list[tuple[Message, int, tuple[int, ...]]] = [(root, 0, ())]
    seen = 0
    texts: list[str] = []
    htmls: list[str] = []
    while stack:
        part, depth, path = stack.pop()
        seen += 1
        if depth > MAX_DEPTH:
            raise MailError(f"structure MIME trop imbriquée (plus de {MAX_DEPTH} niveaux)")
        if seen > MAX_PARTS:
            raise MailError(f"trop de parties MIME (plus de {MAX_PARTS})")
        ctype = part.get_content_type()
        if ctype in EMBEDDED_TYPES:
            # An attached message stays whole: its headers, text and attachments belong to it.
            data = embedded_bytes(raw, path, part)
            parsed.attachments.append(Part(_filename(part) or _eml_name(data), "message/rfc822", data))
            continue
        if ctype.startswith("multipart/"):
            children = part.get_payload()
            if isinstance(children, list) and children:
                stack.extend((c, depth + 1, (*path, i)) for i, c in reversed(list(enumerate(children))))
            elif isinstance(children, str) and children.strip():
                # No usable boundary: keep what it holds as text rather than refuse the message.
                texts.append(clean_multiline(children))
            continue  # an empty multipart holds nothing to keep
        if ctype in ("message/disposition-notification", "message/delivery-status") and path and parsed.is_report:
            continue  # the machine-readable half of the report, read by mdn_mod
        disposition = part.get_content_disposition()
        filename = _filename(part)
        if disposition != "attachment" and not filename and ctype in ("text/plain", "text/html"):
            (texts if ctype == "text/plain" else htmls).append(_text_of(part))
            continue
        if ctype.startswith("message/") or ctype == "text/rfc822-headers":
            data = part.as_bytes(policy=POLICY) if ctype.startswith("message/") else (part.get_payload(decode=True)
                                                                                      or b"")
        else:
            data = split.decoded_payload(part) or b""
        parsed.attachments.append(Part(filename, ctype, data))
    parsed.text = "\n\n".join(t.strip("\n") for t in texts if t.strip())
    parsed.html = htmls[0] if htmls else None
    if not parsed.text and parsed.html:
        parsed.text = html_to_text(parsed.html)


def _filename(part: Message) -> str | None:
    try:
        name = part.get_filename()
    except Exception:
        return "piece-jointe"
    return flatten_line(name) if name else None


def _eml_name(data: bytes) -> str:
    """``<subject of the attached message>.eml``, or ``message.eml``."""
    try:
        inner = email.message_from_bytes(data[:65536], policy=READ_POLICY)
        subject = _header(inner, "Subject")
    except Exception:
        subject = ""
    subject = "".join(c for c in subject if c.isalnum() or c in " -_.,'()").strip(" .")[:80]
    return f"{subject or 'message'}.eml"


# --- attached messages: their original bytes -----------------------------------------------------


def embedded_bytes(raw: bytes, path: tuple[int, ...], part: Message) -> bytes:
    """The original bytes of the ``message/rfc822`` part at ``path`` (child indexes from the root).

    The bytes are cut out of ``raw`` along the same boundaries the parser followed; when the
    structure cannot be followed the same way (a malformed sender), the part is rendered again by
    the library, which keeps its headers and attachments.
    """
    found = _raw_part(raw, path)
    if found is not None:
        head, body = found
        cte = str(email.message_from_bytes(head + b"\r\n\r\n", policy=READ_POLICY)
                  .get("Content-Transfer-Encoding", "")).strip().lower()
        if cte in ("base64", "quoted-printable"):
            # Not allowed by RFC 2046 for message/rfc822, yet seen: the library then parses the
            # encoded text as if it were the message, so our decoding is the only right reading.
            decoded = _decode_cte(body, cte)
            if decoded and _looks_like_message(decoded):
                return decoded
        elif _same_message(body, part):
            return body
    inner = part.get_payload()
    if isinstance(inner, list) and inner:
        return inner[0].as_bytes(policy=POLICY.clone(linesep="\r\n"))
    return part.as_bytes(policy=POLICY.clone(linesep="\r\n"))


def _decode_cte(body: bytes, cte: str) -> bytes | None:
    import base64
    import binascii
    import quopri

    try:
        return base64.b64decode(body, validate=False) if cte == "base64" else quopri.decodestring(body)
    except (binascii.Error, ValueError):
        return None


def _looks_like_message(data: bytes) -> bool:
    head, _ = _split_head(data[:65536])
    parsed = email.message_from_bytes(head + b"\r\n\r\n", policy=READ_POLICY)
    return any(parsed.get(h) for h in ("From", "Subject", "Message-ID", "Date"))


def _same_message(data: bytes, part: Message) -> bool:
    inner = part.get_payload()
    if not (isinstance(inner, list) and inner):
        return False
    try:
        mine = email.message_from_bytes(data, policy=READ_POLICY)
    except Exception:
        return False
    return all(_header(mine, h) == _header(inner[0], h) for h in ("Message-ID", "Subject", "From", "Date"))


def _split_head(data: bytes) -> tuple[bytes, bytes]:
    crlf, lf = data.find(b"\r\n\r\n"), data.find(b"\n\n")
    if crlf >= 0 and (lf < 0 or crlf <= lf):
        return data[:crlf], data[crlf + 4:]
    if lf >= 0:
        return data[:lf], data[lf + 2:]
    return data, b""


def _raw_part(raw: bytes, path: tuple[int, ...]) -> tuple[bytes, bytes] | None:
    """(headers, body) of the part at ``path``, cut out of the raw bytes."""
    head, body = _split_head(raw)
    for index in path:
        boundary = email.message_from_bytes(head + b"\r\n\r\n", policy=READ_POLICY).get_param("boundary")
        if not boundary:
            return None
        children = _split_multipart(body, str(boundary).encode("utf-8", "surrogateescape"))
        if index >= len(children):
            return None
        head, body = _split_head(children[index])
    return head, body


def _split_multipart(body: bytes, boundary: bytes) -> list[bytes]:
    """The parts between ``--boundary`` delimiter lines (RFC 2046 §5.1.1); the CRLF before each
    delimiter belongs to the delimiter."""
    delimiter = b"--" + boundary
    parts: list[bytes] = []
    lines = body.split(b"\n")
    current: list[bytes] | None = None
    for line in lines:
        bare = line.rstrip(b"\r").rstrip(b" \t")
        if bare == delimiter or bare == delimiter + b"--":
            if current is not None:
                parts.append(b"\n".join(current))
            if bare.endswith(b"--") and bare != delimiter:
                current = None
                break
            current = []
            continue
        if current is not None:
            current.append(line)
    if current is not None:  # no closing delimiter: keep what came
        parts.append(b"\n".join(current))
    # Each part ended with the CRLF that precedes the next delimiter.
    return [p[:-1] if p.endswith(b"\r") else p for p in parts]


# --- attached messages: reading one -----------------------------------------------------------------


@dataclass
class EmbeddedMail:
    """An attached message as the reading pane shows it."""

    subject: str
    sender_name: str
    sender_address: str
    date: datetime | None
    to: list[tuple[str, str]]
    cc: list[tuple[str, str]]
    text: str
    html: str | None
    parts: list[Part]


def parse_embedded(data: bytes) -> EmbeddedMail:
    """Read an attached ``.eml`` leniently: a missing From or odd structure still shows."""
    msg = _read(data)
    name, address = _address(msg, "From")
    holder = ParsedMail(message_id=None, subject="", sender_address=address, sender_name=name, date=None,
                        in_reply_to=[], references=[], text="", html=None)
    _walk(msg, holder, data)
    return EmbeddedMail(subject=_header(msg, "Subject")[:998], sender_name=name, sender_address=address,
                        date=_date(msg), to=_addresses(msg, "To"), cc=_addresses(msg, "Cc"), text=holder.text,
                        html=holder.html, parts=holder.attachments)


# --- building ----------------------------------------------------------------------------------


@dataclass
class OutgoingFile:
    filename: str
    content_type: str
    data: bytes


def build(*, message_id: str, sender: tuple[str, str], to: list[tuple[str, str]], cc: list[tuple[str, str]],
          subject: str, text: str, html: str | None, date: datetime, files: list[OutgoingFile],
          headers: dict[str, str], in_reply_to: str | None = None, references: list[str] | None = None) -> bytes:
    """One of our messages as RFC 5322 bytes (CRLF). Raises :class:`headers.HeaderError` when a
    value cannot be written as the single header it must be."""
    msg = EmailMessage(policy=POLICY.clone(max_line_length=78))
    writer = hdr.Writer(msg)
    writer.addresses("From", [sender])
    if to:
        writer.addresses("To", to)
    if cc:
        writer.addresses("Cc", cc)
    writer.text("Subject", subject)
    writer.token("Date", email.utils.format_datetime(date))
    writer.ids("Message-ID", [message_id])
    if in_reply_to:
        writer.ids("In-Reply-To", [in_reply_to])
    if references:
        writer.ids("References", references)
    for k, v in headers.items():
        if "@" in v and k.lower() in hdr.ADDRESS_HEADERS:
            writer.addresses(k, [("", v)])
        else:
            writer.text(k, v)
    msg.set_content(clean_multiline(text or ""), charset="utf-8")
    if html:
        msg.add_alternative(html, subtype="html", charset="utf-8")
    for f in files:
        maintype, _, subtype = f.content_type.partition("/")
        if f.content_type in EMBEDDED_TYPES:
            inner = email.message_from_bytes(f.data, policy=POLICY)
            attachment = EmailMessage(policy=POLICY)
            attachment.set_content(inner, disposition="attachment", filename=f.filename)
            msg.make_mixed()
            msg.attach(attachment)
            continue
        msg.add_attachment(f.data, maintype=maintype or "application", subtype=subtype or "octet-stream",
                           filename=f.filename)
    return writer.finish(msg.as_bytes(policy=POLICY.clone(linesep="\r\n")))
