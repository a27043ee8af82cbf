"""Read receipts as RFC 8098 Message Disposition Notifications: parse and build."""

from __future__ import annotations

import email.utils
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage, Message
from email.parser import HeaderParser


@dataclass
class MdnReport:
    original_message_id: str | None
    final_recipient: str | None
    disposition: str  # e.g. "displayed", "deleted"
    disposition_mode: str


def parse_report(report: Message) -> MdnReport | None:
    """The disposition-notification fields of a ``multipart/report`` part."""
    for part in report.get_payload() if isinstance(report.get_payload(), list) else []:
        if part.get_content_type() != "message/disposition-notification":
            continue
        payload = part.get_payload()
        fields: dict[str, str] = {}
        if isinstance(payload, list):
            for block in payload:
                for k, v in block.items():
                    fields.setdefault(k.lower(), " ".join(str(v).split()))
        elif isinstance(payload, str):
            for k, v in HeaderParser().parsestr(payload).items():
                fields.setdefault(k.lower(), " ".join(str(v).split()))
        final = fields.get("final-recipient", "")
        final_addr = final.split(";", 1)[1].strip().lower() if ";" in final else (final.strip().lower() or None)
        orig = fields.get("original-message-id", "").strip() or None
        disp = fields.get("disposition", "")
        mode, _, kind = disp.partition(";")
        return MdnReport(original_message_id=orig, final_recipient=final_addr,
                         disposition=kind.strip().split("/")[0].strip().lower(), disposition_mode=mode.strip())
    return None


def build(*, from_addr: tuple[str, str], to_addr: str, original_message_id: str, original_subject: str,
          final_recipient: str, reporting_ua: str, message_id: str, date: datetime,
          manual: bool = True) -> bytes:
    """A ``displayed`` MDN (RFC 8098) for one of the messages we received."""
    msg = EmailMessage()
    msg["From"] = email.utils.formataddr(from_addr)
    msg["To"] = to_addr
    msg["Subject"] = f"Accusé de lecture : {original_subject}"[:998]
    msg["Date"] = email.utils.format_datetime(date)
    msg["Message-ID"] = message_id
    msg["References"] = original_message_id
    msg["Auto-Submitted"] = "auto-replied"
    msg.make_mixed()
    msg.set_type("multipart/report")
    msg.set_param("report-type", "disposition-notification")
    text = EmailMessage()
    text.set_content(f"Le message « {original_subject} » envoyé à {final_recipient} a été affiché "
                     f"par son destinataire le {date.strftime('%d/%m/%Y à %H:%M')} (UTC).\n"
                     "Cet accusé ne garantit pas que le message a été lu ou compris.\n", charset="utf-8")
    msg.attach(text)
    mode = "manual-action/MDN-sent-manually" if manual else "manual-action/MDN-sent-automatically"
    report = EmailMessage()
    report.set_type("message/disposition-notification")
    body = (f"Reporting-UA: {reporting_ua}\r\nFinal-Recipient: rfc822; {final_recipient}\r\n"
            f"Original-Message-ID: {original_message_id}\r\nDisposition: {mode}; displayed\r\n")
    report.set_payload(body, charset=None)
    del report["MIME-Version"]
    msg.attach(report)
    return msg.as_bytes(policy=email.policy.default.clone(linesep="\r\n"))
