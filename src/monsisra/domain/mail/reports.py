"""Reports about mail: read receipts (RFC 8098 MDNs, parse and build) and delivery status
notifications (RFC 3464 DSNs, parse). Only a message whose own type is ``multipart/report`` is a
report; ``mime.parse`` decides that and calls these on the top-level part."""

from __future__ import annotations

import email.policy
import email.utils
from dataclasses import dataclass, field
from datetime import datetime
from email.message import EmailMessage, Message
from email.parser import HeaderParser
from zoneinfo import ZoneInfo

from monsisra.domain.mail import headers as hdr
from monsisra.domain.text import flatten_line

PARIS = ZoneInfo("Europe/Paris")


@dataclass
class MdnReport:
    original_message_id: str | None
    final_recipient: str | None
    disposition: str  # e.g. "displayed", "deleted"
    disposition_mode: str


@dataclass
class DsnRecipient:
    final_recipient: str
    action: str  # failed | delayed | delivered | relayed | expanded
    status: str  # e.g. 5.1.1
    diagnostic: str


@dataclass
class DsnReport:
    original_message_id: str | None
    recipients: list[DsnRecipient] = field(default_factory=list)


def _blocks(part: Message) -> list[dict[str, str]]:
    """The field blocks of a ``message/disposition-notification`` or ``message/delivery-status``."""
    payload = part.get_payload()
    out: list[dict[str, str]] = []
    if isinstance(payload, list):
        for block in payload:
            out.append({k.lower(): " ".join(flatten_line(str(v)).split()) for k, v in block.items()})
    elif isinstance(payload, str):
        for chunk in payload.replace("\r\n", "\n").split("\n\n"):
            if chunk.strip():
                parsed = HeaderParser().parsestr(chunk)
                out.append({k.lower(): " ".join(flatten_line(str(v)).split()) for k, v in parsed.items()})
    return out


def _address_field(value: str) -> str | None:
    """``rfc822; someone@example.fr`` → ``someone@example.fr``."""
    address = value.split(";", 1)[1] if ";" in value else value
    address = address.strip().strip("<>").strip().lower()
    return address or None


def _parts(report: Message) -> list[Message]:
    payload = report.get_payload()
    return payload if isinstance(payload, list) else []


def parse_report(report: Message) -> MdnReport | None:
    """The disposition-notification fields of a ``multipart/report`` message."""
    for part in _parts(report):
        if part.get_content_type() != "message/disposition-notification":
            continue
        fields: dict[str, str] = {}
        for block in _blocks(part):
            for k, v in block.items():
                fields.setdefault(k, v)
        orig = fields.get("original-message-id", "").strip() or None
        disp = fields.get("disposition", "")
        mode, _, kind = disp.partition(";")
        return MdnReport(original_message_id=orig, final_recipient=_address_field(fields.get("final-recipient", "")),
                         disposition=kind.strip().split("/")[0].strip().lower(), disposition_mode=mode.strip())
    return None


def parse_dsn(report: Message) -> DsnReport | None:
    """The per-recipient fields of a ``multipart/report; report-type=delivery-status`` and the
    Message-ID of the message it is about (from its returned headers or copy)."""
    status_part = next((p for p in _parts(report) if p.get_content_type() == "message/delivery-status"), None)
    if status_part is None:
        return None
    dsn = DsnReport(original_message_id=None)
    for block in _blocks(status_part)[1:]:  # the first block is about the reporting MTA
        final = _address_field(block.get("final-recipient", "") or block.get("original-recipient", ""))
        if final:
            dsn.recipients.append(DsnRecipient(final, block.get("action", "").lower(), block.get("status", ""),
                                               block.get("diagnostic-code", "")[:500]))
    for part in _parts(report):
        ctype = part.get_content_type()
        if ctype == "text/rfc822-headers":
            text = (part.get_payload(decode=True) or b"").decode("utf-8", "replace")
            original = HeaderParser().parsestr(text)
        elif ctype in ("message/rfc822", "message/global") and isinstance(part.get_payload(), list):
            original = part.get_payload()[0]
        else:
            continue
        ids = str(original.get("Message-ID", "")).split()
        dsn.original_message_id = ids[0] if ids and ids[0].startswith("<") else None
    return dsn


def build(*, from_addr: tuple[str, str], to_addr: str, original_message_id: str, original_subject: str,
          final_recipient: str, reporting_ua: str, message_id: str, date: datetime,
          manual: bool = True) -> bytes:
    """A ``displayed`` MDN (RFC 8098) for one of the messages we received."""
    subject = flatten_line(original_subject)
    msg = EmailMessage()
    writer = hdr.Writer(msg)
    writer.addresses("From", [from_addr])
    writer.addresses("To", [("", to_addr)])
    writer.text("Subject", f"Accusé de lecture : {subject}"[:998])
    writer.token("Date", email.utils.format_datetime(date))
    writer.ids("Message-ID", [message_id])
    writer.ids("References", [original_message_id])
    writer.token("Auto-Submitted", "auto-replied")
    msg.make_mixed()
    msg.set_type("multipart/report")
    msg.set_param("report-type", "disposition-notification")
    text = EmailMessage()
    shown = date.astimezone(PARIS).strftime("%d/%m/%Y à %H:%M")
    text.set_content(f"Le message « {subject} » envoyé à {final_recipient} a été affiché "
                     f"par son destinataire le {shown} (heure de Paris).\n"
                     "Cet accusé ne garantit pas que le message a été lu ou compris.\n", charset="utf-8")
    msg.attach(text)
    mode = "manual-action/MDN-sent-manually" if manual else "manual-action/MDN-sent-automatically"
    fields = {"Reporting-UA": reporting_ua, "Final-Recipient": f"rfc822; {final_recipient}",
              "Original-Message-ID": original_message_id, "Disposition": f"{mode}; displayed"}
    for value in fields.values():
        if not hdr.is_plain_field(value):
            raise hdr.HeaderError("champ d'accusé de lecture invalide")
    report = EmailMessage()
    report.set_type("message/disposition-notification")
    report.set_payload("".join(f"{k}: {v}\r\n" for k, v in fields.items()), charset=None)
    del report["MIME-Version"]
    msg.attach(report)
    return writer.finish(msg.as_bytes(policy=email.policy.default.clone(linesep="\r\n")))
