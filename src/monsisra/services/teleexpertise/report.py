"""The expert's report (« Compte rendu de téléexpertise ») and the summary of the exchange: PDF
documents (fpdf, the fonts of the conversation summary), delivered as letters of category
« teleexpertise » linked to the patient, so they land in the shared record's timeline."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from fpdf import FPDF

from monsisra.domain.clock import in_paris
from monsisra.domain.ins import format_ins
from monsisra.domain.model import Category, Role
from monsisra.domain.text import preview
from monsisra.services import attachments as att_service
from monsisra.services import messages
from monsisra.services.conversations.summary import FONT_DIR
from monsisra.services.core import Actor, Core, Tx
from monsisra.store.models import Attachment, Mailbox, Message, MessageAttachment, Patient, Recipient


def when(value: datetime | None) -> str:
    return in_paris(value).strftime("%d/%m/%Y %H:%M") if value else "—"


def render_pdf(title: str, header: list[tuple[str, str]], sections: list[tuple[str, str]]) -> bytes:
    """A document: a title, ``label : value`` lines, then titled paragraphs (pure)."""
    pdf = FPDF(format="A4")
    pdf.set_auto_page_break(auto=True, margin=15)
    unicode_font = (FONT_DIR / "DejaVuSans.ttf").exists() and (FONT_DIR / "DejaVuSans-Bold.ttf").exists()
    family = "helvetica"
    if unicode_font:
        pdf.add_font("dv", "", str(FONT_DIR / "DejaVuSans.ttf"))
        pdf.add_font("dv", "B", str(FONT_DIR / "DejaVuSans-Bold.ttf"))
        family = "dv"

    def txt(value: str) -> str:
        return value if unicode_font else value.encode("latin-1", "replace").decode("latin-1")

    pdf.set_title(txt(title))
    pdf.add_page()
    pdf.set_font(family, "B", 15)
    pdf.multi_cell(0, 8, txt(title), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(2)
    pdf.set_font(family, "", 10)
    for label, value in header:
        pdf.multi_cell(0, 5, txt(f"{label} : {value}"), new_x="LMARGIN", new_y="NEXT")
    for heading, text in sections:
        pdf.ln(3)
        pdf.set_font(family, "B", 11)
        pdf.multi_cell(0, 6, txt(heading), new_x="LMARGIN", new_y="NEXT")
        pdf.set_font(family, "", 10)
        pdf.multi_cell(0, 5, txt(text or "—"), new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())


def patient_line(p: Patient) -> str:
    line = f"{p.family_name} {p.given_names}".strip() + f" — INS {format_ins(p.ins)}"
    if p.birth_date:
        line += f", né(e) le {p.birth_date}"
    if p.sex:
        line += f", sexe {p.sex}"
    return line


def professional(name: str, national_id: str | None, box: Mailbox) -> str:
    ident = f" (identifiant national {national_id})" if national_id else ""
    return f"{name}{ident} — {box.display_name} <{box.address}>"


async def store_pdf(core: Core, pdf: bytes) -> tuple[str, int]:
    return await asyncio.to_thread(core.blobs.put_bytes, pdf)


async def discard_unused(core: Core, *blobs: tuple[str, int] | None) -> None:
    """Removes PDFs stored for a step that did not happen, unless an attachment names the same
    bytes (blobs are shared by content)."""
    for blob in blobs:
        if blob is None:
            continue
        async with core.read() as s:
            named = await s.scalar(sa.select(Attachment.id).where(Attachment.sha256 == blob[0]).limit(1))
        if named is None:
            with contextlib.suppress(FileNotFoundError):
                core.blobs.path(blob[0]).unlink()


async def deliver(core: Core, tx: Tx, actor: Actor | None, *, sender: Mailbox, sender_name: str,
                  to: list[Mailbox], subject: str, body: str, patient_id: int, blob: tuple[str, int] | None,
                  filename: str, te_id: int, now: datetime) -> tuple[int, str | None]:
    """A letter from ``sender`` into ``to`` (local delivery), in ``tx``, carrying one PDF when
    ``blob`` is given; ``actor`` None is MonSisra itself (the overdue reminder)."""
    s = tx.session
    att = None
    safe = att_service.safe_filename(filename) if blob is not None else ""
    if blob is not None:
        assert actor is not None
        digest, size = blob
        att = await att_service.register(core, actor.account_id, digest, size, "application/pdf", safe, session=s)
    letter = Message(message_id=messages.new_message_id(core.settings.domain), from_mailbox_id=sender.id,
                     author_account_id=actor.account_id if actor else None, sender_address=sender.address,
                     sender_name=sender_name[:200], subject=subject[:998], body=body, preview=preview(body),
                     category=Category.TELEEXPERTISE, created_at=now, sent_at=now, origin="local",
                     patient_id=patient_id, has_attachments=att is not None, context_type="teleexpertise",
                     context_id=te_id,
                     search_text=messages.build_search_text(subject, body, sender_name, sender.address,
                                                            [safe] if safe else []))
    s.add(letter)
    await s.flush()
    letter.thread_id = letter.id
    if att is not None:
        s.add(MessageAttachment(message_id=letter.id, attachment_id=att.id, position=0))
    placements: list[tuple[int, str]] = []
    for box in to:
        s.add(Recipient(message_id=letter.id, kind="to", address=box.address, display_name=box.display_name,
                        mailbox_id=box.id, status="delivered", status_at=now))
        placements.append((box.id, Role.IN))
    if sender.id not in {b.id for b in to}:
        placements.append((sender.id, Role.SENT))
    await messages.deliver(tx, letter, placements)
    return letter.id, att.id if att is not None else None


def report_sections(question: str, answer: str) -> list[tuple[str, str]]:
    return [("Question clinique", question), ("Réponse de l'expert", answer)]


def summary_sections(steps: list[dict[str, Any]]) -> list[tuple[str, str]]:
    labels = {"submit": "Demande", "assign": "Prise en charge", "request_elements": "Demande d'éléments",
              "provide_elements": "Éléments fournis", "answer": "Réponse", "decline": "Refus",
              "cancel": "Annulation", "close": "Clôture", "remind": "Relance", "visio": "Visio"}
    out = []
    for st in steps:
        files = f"\n[{len(st['attachments'])} pièce(s) jointe(s)]" if st["attachments"] else ""
        at = when(datetime.fromisoformat(st["at"])) if st["at"] else "—"
        out.append((f"{labels.get(st['action'], st['action'])} — {st['author']} — {at}",
                    (st["body"] or "") + files))
    return out
