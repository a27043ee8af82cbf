"""MIME in and out with the standard ``email`` package (policy ``default``).

:func:`parse` turns raw bytes from another operator into plain values (never trusting them:
depth and part limits, decoded headers without line breaks, attachment names left for the
service to make safe); :func:`build` renders one of our messages for SMTP.
"""

from __future__ import annotations

import email
import email.policy
import email.utils
import functools
from dataclasses import dataclass, field
from datetime import datetime
from email.message import EmailMessage, Message

from monsisra.gateway import mdn as mdn_mod

MAX_DEPTH = 16
MAX_PARTS = 300
POLICY = email.policy.default
MEMO_HEADER_CHARS = 998  # longer values (rare, maybe hostile) are parsed each time, not kept


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
    return email.policy.EmailPolicy.header_fetch_parse(policy, name, value)


READ_POLICY = _ReadPolicy()


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
    mdn: mdn_mod.MdnReport | None = None


def _header(msg: Message, name: str) -> str:
    try:
        value = msg.get(name)
    except Exception:  # a malformed header must not stop the parse
        value = None
    if value is None:
        return ""
    text = str(value)
    # A decoded encoded-word may hide CR/LF: headers are single lines from here on.
    return " ".join(text.replace("\r", " ").replace("\n", " ").split())


def _address(msg: Message, name: str) -> tuple[str, str]:
    raw = _header(msg, name)
    display, addr = email.utils.parseaddr(raw)
    return " ".join(display.split())[:200], addr.strip().lower()


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
        return raw.decode(charset, errors="replace")
    except LookupError:
        return raw.decode("utf-8", errors="replace")


def parse(raw: bytes, return_path: str | None = None) -> ParsedMail:
    """Parse a received message; raises :class:`MailError` for what cannot be accepted."""
    try:
        msg = email.message_from_bytes(raw, policy=READ_POLICY)
    except (RecursionError, ValueError, TypeError, IndexError) as exc:
        raise MailError(f"message illisible ({type(exc).__name__})") from None
    name, address = _address(msg, "From")
    if not address or "@" not in address:
        raise MailError("en-tête From absent ou invalide", "550 5.1.7")
    message_id = (_ids(_header(msg, "Message-ID")) or [None])[0]
    try:
        date = email.utils.parsedate_to_datetime(_header(msg, "Date")) if _header(msg, "Date") else None
    except (ValueError, TypeError):
        date = None
    mss = {}
    for key in msg.keys():
        if key.lower().startswith("x-mss-"):
            mss[key.upper()] = _header(msg, key)[:500]
    _, notify = _address(msg, "Disposition-Notification-To")
    parsed = ParsedMail(message_id=message_id, subject=_header(msg, "Subject")[:998], sender_address=address,
                        sender_name=name, date=date, in_reply_to=_ids(_header(msg, "In-Reply-To")),
                        references=_ids(_header(msg, "References")), text="", html=None, mss_headers=mss,
                        notify_to=notify or None, return_path=return_path)
    _walk(msg, parsed)
    return parsed


def _walk(root: Message, parsed: ParsedMail) -> None:
    stack: list[tuple[Message, int]] = [(root, 0)]
    seen = 0
    texts: list[str] = []
    while stack:
        part, depth = stack.pop()
        seen += 1
        if depth > MAX_DEPTH:
            raise MailError(f"structure MIME trop imbriquée (plus de {MAX_DEPTH} niveaux)")
        if seen > MAX_PARTS:
            raise MailError(f"trop de parties MIME (plus de {MAX_PARTS})")
        ctype = part.get_content_type()
        if part.is_multipart():
            if ctype == "multipart/report" and part.get_param("report-type") == "disposition-notification":
                parsed.mdn = mdn_mod.parse_report(part)
            children = part.get_payload()
            if not isinstance(children, list):
                raise MailError("structure MIME invalide : partie multiple sans délimiteur")
            stack.extend((c, depth + 1) for c in reversed(children))
            continue
        if ctype.startswith("multipart/"):
            raise MailError("structure MIME invalide : partie multiple sans délimiteur")
        if ctype == "message/disposition-notification":
            continue
        disposition = part.get_content_disposition()
        filename = None
        try:
            filename = part.get_filename()
        except Exception:
            filename = "piece-jointe"
        if disposition != "attachment" and not filename and ctype in ("text/plain", "text/html"):
            if ctype == "text/plain":
                texts.append(_text_of(part))
            elif parsed.html is None:
                parsed.html = _text_of(part)
            continue
        if ctype == "message/rfc822":
            inner = part.get_payload()
            data = inner[0].as_bytes(policy=POLICY) if isinstance(inner, list) and inner else b""
            parsed.attachments.append(Part(filename or "message.eml", "message/rfc822", data))
            continue
        data = part.get_payload(decode=True) or b""
        parsed.attachments.append(Part(filename, ctype, data))
    parsed.text = "\n\n".join(t.strip("\n") for t in texts if t.strip())


# --- building ----------------------------------------------------------------------------------


@dataclass
class OutgoingFile:
    filename: str
    content_type: str
    data: bytes


def build(*, message_id: str, sender: tuple[str, str], to: list[tuple[str, str]], cc: list[tuple[str, str]],
          subject: str, text: str, html: str | None, date: datetime, files: list[OutgoingFile],
          headers: dict[str, str], in_reply_to: str | None = None, references: list[str] | None = None) -> bytes:
    msg = EmailMessage(policy=POLICY.clone(max_line_length=78))
    msg["From"] = email.utils.formataddr(sender)
    if to:
        msg["To"] = ", ".join(email.utils.formataddr(a) for a in to)
    if cc:
        msg["Cc"] = ", ".join(email.utils.formataddr(a) for a in cc)
    msg["Subject"] = subject
    msg["Date"] = email.utils.format_datetime(date)
    msg["Message-ID"] = message_id
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
    if references:
        msg["References"] = " ".join(references)
    for k, v in headers.items():
        msg[k] = v
    msg.set_content(text or "", charset="utf-8")
    if html:
        msg.add_alternative(html, subtype="html", charset="utf-8")
    for f in files:
        maintype, _, subtype = f.content_type.partition("/")
        msg.add_attachment(f.data, maintype=maintype or "application", subtype=subtype or "octet-stream",
                           filename=f.filename)
    return msg.as_bytes(policy=POLICY.clone(linesep="\r\n"))
