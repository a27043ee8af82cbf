"""Closing a conversation: the PDF « Synthèse de la conversation « titre » » (participants,
patient, every message with its author and time, the list of attachments), delivered as a
letter into every participant's mailbox through the normal local delivery path.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from fpdf import FPDF

import monsisra.services.conversations.access as access
from monsisra.domain.clock import in_paris, utcnow
from monsisra.domain.model import Category, Role
from monsisra.domain.text import preview
from monsisra.services import attachments as att_service
from monsisra.services import audit, messages
from monsisra.services.core import Actor, Core
from monsisra.store.conversations import ConversationAttachment, ConversationMessage, ConversationParticipant
from monsisra.store.models import Attachment, Mailbox, Message, MessageAttachment, Patient, Recipient

ALREADY = "cette conversation est déjà close"
FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")


def summary_title(title: str) -> str:
    return f"Synthèse de la conversation « {title or 'sans titre'} »"


def _when(value) -> str:
    return in_paris(value).strftime("%d/%m/%Y %H:%M")


def render_pdf(title: str, participants: list[str], patient: str | None, items: list[dict[str, Any]],
               closed_by: str, closed_at) -> bytes:
    """The summary as PDF bytes (pure: the data in, the document out)."""
    pdf = FPDF(format="A4")
    pdf.set_auto_page_break(auto=True, margin=15)
    unicode_font = (FONT_DIR / "DejaVuSans.ttf").exists() and (FONT_DIR / "DejaVuSans-Bold.ttf").exists()
    if unicode_font:
        pdf.add_font("dv", "", str(FONT_DIR / "DejaVuSans.ttf"))
        pdf.add_font("dv", "B", str(FONT_DIR / "DejaVuSans-Bold.ttf"))
        family = "dv"
    else:
        family = "helvetica"

    def txt(value: str) -> str:
        return value if unicode_font else value.encode("latin-1", "replace").decode("latin-1")

    pdf.set_title(txt(summary_title(title)))
    pdf.add_page()
    pdf.set_font(family, "B", 15)
    pdf.multi_cell(0, 8, txt(summary_title(title)), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(2)
    pdf.set_font(family, "", 10)
    pdf.multi_cell(0, 5, txt(f"Close le {_when(closed_at)} par {closed_by}."), new_x="LMARGIN", new_y="NEXT")
    if patient:
        pdf.multi_cell(0, 5, txt(f"Patient : {patient}"), new_x="LMARGIN", new_y="NEXT")
    pdf.multi_cell(0, 5, txt("Participants : " + ", ".join(participants)), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(3)
    attachments: list[str] = []
    for item in items:
        pdf.set_font(family, "B", 10)
        pdf.multi_cell(0, 5, txt(f"{item['author']} — {_when(item['created_at'])}"), new_x="LMARGIN", new_y="NEXT")
        pdf.set_font(family, "", 10)
        if item["body"]:
            pdf.multi_cell(0, 5, txt(item["body"]), new_x="LMARGIN", new_y="NEXT")
        for name in item["attachments"]:
            pdf.multi_cell(0, 5, txt(f"[pièce jointe : {name}]"), new_x="LMARGIN", new_y="NEXT")
            attachments.append(f"{name} ({item['author']}, {_when(item['created_at'])})")
        pdf.ln(2)
    pdf.set_font(family, "B", 11)
    pdf.multi_cell(0, 6, txt("Pièces jointes"), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font(family, "", 10)
    for line in attachments or ["aucune"]:
        pdf.multi_cell(0, 5, txt(f"- {line}"), new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())


async def close(core: Core, actor: Actor, conversation_id: int) -> dict[str, Any]:
    """Close the conversation and send its summary letter to every participant mailbox (present
    or departed); closing twice is refused (409), with nothing changed."""
    async with core.read() as s:
        conversation, me = await access.require(s, actor, conversation_id, write=True, closed=ALREADY)
        author_name = await access.author(s, actor, me.mailbox_id, me.access)
        boxes = (await s.execute(
            sa.select(Mailbox.id, Mailbox.address, Mailbox.display_name)
            .join(ConversationParticipant, ConversationParticipant.mailbox_id == Mailbox.id)
            .where(ConversationParticipant.conversation_id == conversation_id)
            .order_by(ConversationParticipant.id))).all()
        patient = await s.get(Patient, conversation.patient_id) if conversation.patient_id else None
        rows = (await s.execute(sa.select(ConversationMessage).where(
            ConversationMessage.conversation_id == conversation_id).order_by(ConversationMessage.id))).scalars().all()
        att_rows = (await s.execute(
            sa.select(ConversationAttachment.message_id, Attachment.filename)
            .join(Attachment, Attachment.id == ConversationAttachment.attachment_id)
            .join(ConversationMessage, ConversationMessage.id == ConversationAttachment.message_id)
            .where(ConversationMessage.conversation_id == conversation_id)
            .order_by(ConversationAttachment.message_id, ConversationAttachment.position))).all()
    names: dict[int, list[str]] = {}
    for mid, filename in att_rows:
        names.setdefault(mid, []).append(filename)
    items = [{"author": m.author_name, "created_at": m.created_at, "body": m.body, "attachments": names.get(m.id, [])}
             for m in rows]
    patient_line = None
    if patient is not None:
        patient_line = f"{patient.family_name} {patient.given_names}".strip() + f" — INS {patient.ins}"
        if patient.birth_date:
            patient_line += f", né(e) le {patient.birth_date}"
    now = utcnow()
    pdf = await asyncio.to_thread(render_pdf, conversation.title, [f"{n} <{a}>" for _, a, n in boxes],
                                  patient_line, items, author_name, now)
    digest, size = await asyncio.to_thread(core.blobs.put_bytes, pdf)
    subject = summary_title(conversation.title)
    filename = att_service.safe_filename(f"Synthese conversation {conversation.title or conversation_id}.pdf")
    async with core.write() as tx:
        s = tx.session
        conversation, me = await access.require(s, actor, conversation_id, write=True, lock=True,
                                                closed=ALREADY)
        conversation.state, conversation.closed_at, conversation.closed_by = "closed", now, actor.account_id
        pdf_att = await att_service.register(core, actor.account_id, digest, size, "application/pdf", filename,
                                             session=s)
        body = (f"{subject}\n\nLa conversation a été close le {_when(now)} par {author_name}. "
                f"Sa synthèse (participants, messages, pièces jointes) est jointe en PDF.")
        letter = Message(message_id=messages.new_message_id(core.settings.domain), from_mailbox_id=me.mailbox_id,
                         author_account_id=actor.account_id, sender_address=me.address, sender_name=author_name[:200],
                         subject=subject[:998], body=body, preview=preview(body), category=Category.LETTER,
                         created_at=now, sent_at=now, origin="local", patient_id=conversation.patient_id,
                         has_attachments=True, context_type="conversation", context_id=conversation_id,
                         search_text=messages.build_search_text(subject, body, author_name, me.address, [filename]))
        s.add(letter)
        await s.flush()
        letter.thread_id = letter.id
        s.add(MessageAttachment(message_id=letter.id, attachment_id=pdf_att.id, position=0))
        for mailbox_id, address, name in boxes:
            s.add(Recipient(message_id=letter.id, kind="to", address=address, display_name=name,
                            mailbox_id=mailbox_id, status="delivered", status_at=now))
        await messages.deliver(tx, letter, [(mailbox_id, Role.IN) for mailbox_id, _, _ in boxes])
        audit.record(s, actor.account_id, "conversation.close", object_type="conversation",
                     object_id=conversation_id, mailbox_id=me.mailbox_id, patient_id=conversation.patient_id,
                     client=actor.client, detail={"summary_message_id": letter.id})
        accounts_, mailbox_ids = await access.audience(s, conversation_id)
        tx.emit("conversation.closed", accounts_, conversation_id=conversation_id, mailbox_ids=mailbox_ids,
                summary_message_id=letter.id, closed_by=author_name)
        return {"id": conversation_id, "state": "closed", "summary_message_id": letter.id,
                "summary_attachment_id": pdf_att.id}
