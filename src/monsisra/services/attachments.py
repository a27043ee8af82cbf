"""Attachments: streamed upload into the blob store, type sniffed from content, guarded reads."""

from __future__ import annotations

import asyncio
import re
import secrets
import unicodedata
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

import filetype
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from monsisra.domain.html import sanitize_html
from monsisra.domain.mail import mime
from monsisra.services.core import Actor, Core
from monsisra.services.errors import Invalid, NotFound, TooLarge
from monsisra.store import blobs
from monsisra.store.models import Attachment, Delivery, MailboxAccess, MessageAttachment

# Types a browser may render inline; anything else is served as a download.
INLINE_TYPES = {"application/pdf", "image/png", "image/jpeg", "image/gif", "image/webp", "text/plain"}


@dataclass(frozen=True)
class AttachmentView:
    id: str
    filename: str
    content_type: str
    size: int
    sha256: str

    def as_dict(self) -> dict:
        return {"id": self.id, "filename": self.filename, "content_type": self.content_type,
                "size": self.size, "sha256": self.sha256}


def view(a: Attachment) -> AttachmentView:
    return AttachmentView(a.id, a.filename, a.content_type, a.size, a.sha256)


_UNSAFE = re.compile(r'[/\\:*?"<>|]+')
_SPACES = re.compile(r"\s+")
# Characters drawn as nothing that are not format characters (Hangul fillers, braille blank).
_INVISIBLE = frozenset("\u115f\u1160\u3164\uffa0\u2800")
# Characters drawn as a full stop: "photo.exe\u2024jpg" must not read as a .jpg.
_DOT_LOOKALIKES = frozenset("\u2024\ufe52\uff0e\u0701\u0702\ua60e\U00010a50")
# Names Windows keeps for devices, whatever the extension ("con.txt", "Com1.tar.gz").
_RESERVED = re.compile(r"(con|prn|aux|nul|conin\$|conout\$|com[0-9¹²³]|lpt[0-9¹²³])", re.IGNORECASE)
MAX_FILENAME = 200


def _visible(ch: str) -> str:
    """What one character becomes in a display filename: format and control characters (bidi
    overrides, embeddings and isolates, marks, zero-width characters), line separators and
    unpaired surrogates are dropped; any other space is a plain space."""
    category = unicodedata.category(ch)
    if category in ("Cc", "Cf", "Cs", "Zl", "Zp") or ch in _INVISIBLE or "\ue000" <= ch <= "\uf8ff":
        return "" if category != "Cc" or ch not in "\t\n\r" else " "
    if category == "Zs":
        return " "
    if ch in _DOT_LOOKALIKES:
        return "_"
    return ch


def safe_filename(name: str | None, default: str = "piece-jointe") -> str:
    """A display filename that says what the file is: no directories, no control, format or
    shell characters, no Windows device name, and its last extension is the one shown at its end
    (at most 200 characters)."""
    name = unicodedata.normalize("NFC", name or "")
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(_visible(ch) for ch in name)
    name = _SPACES.sub(" ", _UNSAFE.sub("_", name)).strip(" .")
    if not name:
        return default
    if len(name) > MAX_FILENAME:
        stem, dot, ext = name.rpartition(".")
        if dot and 0 < len(ext) <= 10:
            name = stem[: MAX_FILENAME - len(ext) - 1].rstrip(" .") + "." + ext
        else:
            name = name[:MAX_FILENAME].rstrip(" .")
    # Windows ignores what follows the first dot and trailing spaces when it looks for a device.
    if _RESERVED.fullmatch(unicodedata.normalize("NFKC", name.split(".", 1)[0]).rstrip(" ")):
        name = "_" + name
    return name or default


def sniff(head: bytes, filename: str) -> str:
    """The MIME type from the content's magic bytes; never the client's claim."""
    kind = filetype.guess(head)
    if kind is not None:
        return kind.mime
    if head.lstrip().startswith(b"<?xml") or head.lstrip().startswith(b"<ClinicalDocument"):
        return "application/xml"
    if not head or b"\x00" in head:
        return "application/octet-stream"
    # A multi-byte character cut at the end of a full head is still text.
    sample = head[:-4] if len(head) >= 8192 else head
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError:
        return "application/octet-stream"
    return "text/plain"


async def upload(core: Core, actor: Actor, filename: str | None, chunks: AsyncIterator[bytes]) -> AttachmentView:
    """Store an upload; 413 past the message size limit, with nothing kept."""
    limit = core.settings.max_message_bytes
    try:
        digest, size, head = await core.blobs.put_stream(chunks, limit)
    except blobs.TooLarge:
        raise TooLarge(f"fichier trop volumineux : la limite est de {limit // (1024 * 1024)} Mo par message") from None
    return await register(core, actor.account_id, digest, size, sniff(head, filename or ""), filename)


async def register(core: Core, account_id: int | None, digest: str, size: int, content_type: str,
                   filename: str | None, session: AsyncSession | None = None) -> AttachmentView:
    """Record metadata for bytes already in the blob store."""
    att = Attachment(id=secrets.token_hex(16), sha256=digest, size=size, content_type=content_type,
                     filename=safe_filename(filename), uploaded_by=account_id)
    if session is not None:
        session.add(att)
        return view(att)
    async with core.write() as tx:
        tx.session.add(att)
    return view(att)


async def store_parts(core: Core, actor: Actor, parts: Iterable[Any]) -> list[str]:
    """The attachments of a message a mail client handed over (parsed MIME parts with ``data``,
    ``content_type`` and ``filename``), in the blob store and recorded for the actor: their ids."""
    ids = []
    for part in parts:
        digest, size = await asyncio.to_thread(core.blobs.put_bytes, part.data)
        att = await register(core, actor.account_id, digest, size, part.content_type or "application/octet-stream",
                             part.filename)
        ids.append(att.id)
    return ids


async def readable(session: AsyncSession, actor: Actor, attachment_ids: list[str]) -> dict[str, Attachment]:
    """The attachments among ``attachment_ids`` the actor may use: own uploads, or carried by
    a message in a mailbox the actor may use."""
    if not attachment_ids:
        return {}
    rows = await session.scalars(sa.select(Attachment).where(Attachment.id.in_(attachment_ids)))
    found = {a.id: a for a in rows}
    allowed = {i for i, a in found.items() if a.uploaded_by == actor.account_id}
    others = [i for i in found if i not in allowed]
    if others:
        via_message = await session.scalars(
            sa.select(MessageAttachment.attachment_id)
            .join(Delivery, Delivery.message_id == MessageAttachment.message_id)
            .join(MailboxAccess, MailboxAccess.mailbox_id == Delivery.mailbox_id)
            .where(MessageAttachment.attachment_id.in_(others), MailboxAccess.account_id == actor.account_id,
                   Delivery.deleted.is_(False))
        )
        allowed.update(via_message)
    others = [i for i in found if i not in allowed]
    if others:
        allowed.update(await _via_conversation(session, actor, others))
    return {i: found[i] for i in allowed}


async def _via_conversation(session: AsyncSession, actor: Actor, ids: list[str]) -> set[str]:
    """Files (and their thumbnails) posted in a conversation the actor's mailboxes take part in,
    before those mailboxes left it."""
    from monsisra.store.conversations import ConversationAttachment, ConversationMessage, ConversationParticipant

    ca = ConversationAttachment
    rows = await session.execute(
        sa.select(ca.attachment_id, ca.thumbnail_id)
        .join(ConversationMessage, ConversationMessage.id == ca.message_id)
        .join(ConversationParticipant, ConversationParticipant.conversation_id == ConversationMessage.conversation_id)
        .join(MailboxAccess, MailboxAccess.mailbox_id == ConversationParticipant.mailbox_id)
        .where(sa.or_(ca.attachment_id.in_(ids), ca.thumbnail_id.in_(ids)),
               MailboxAccess.account_id == actor.account_id,
               sa.or_(ConversationParticipant.left_at.is_(None),
                      ConversationMessage.created_at <= ConversationParticipant.left_at)))
    wanted = set(ids)
    return {x for pair in rows for x in pair if x in wanted}


async def open_for(core: Core, actor: Actor, attachment_id: str) -> AttachmentView:
    """Metadata of an attachment the actor may read, or 404."""
    async with core.read() as session:
        found = await readable(session, actor, [attachment_id])
    if attachment_id not in found:
        raise NotFound("pièce jointe introuvable")
    return view(found[attachment_id])


# --- attached messages (.eml) --------------------------------------------------------------------

EML_TYPES = {"message/rfc822", "message/global"}
EMBEDDED_MAX = 25 * 1024 * 1024


async def _embedded(core: Core, actor: Actor, attachment_id: str):
    meta = await open_for(core, actor, attachment_id)
    if meta.content_type not in EML_TYPES:
        raise NotFound("cette pièce jointe n'est pas un message")
    data = await asyncio.get_running_loop().run_in_executor(None, core.blobs.read, meta.sha256)
    try:
        return meta, mime.parse_embedded(data[:EMBEDDED_MAX])
    except mime.MailError as exc:
        raise Invalid(f"message joint illisible : {exc}") from None


async def embedded_message(core: Core, actor: Actor, attachment_id: str) -> dict:
    """An attached message as the reading pane shows it: sender, date, subject, recipients, its
    text (and sanitised HTML) and its own attachments, each openable by its index."""
    meta, mail = await _embedded(core, actor, attachment_id)
    return {
        "id": meta.id, "filename": meta.filename, "subject": mail.subject,
        "sender": {"name": mail.sender_name, "address": mail.sender_address},
        "date": mail.date.isoformat() if mail.date else None,
        "to": [{"name": n, "address": a} for n, a in mail.to], "cc": [{"name": n, "address": a} for n, a in mail.cc],
        "body": mail.text, "html": sanitize_html(mail.html) if mail.html else None,
        "attachments": [{"index": i, "filename": safe_filename(p.filename, f"piece-jointe-{i + 1}"),
                         "content_type": _part_type(p), "size": len(p.data)} for i, p in enumerate(mail.parts)],
    }


def _part_type(part) -> str:
    return part.content_type if part.content_type in EML_TYPES else sniff(part.data[:8192], part.filename or "")


async def embedded_part(core: Core, actor: Actor, attachment_id: str, index: int) -> tuple[str, str, bytes]:
    """(filename, content type sniffed from the bytes, bytes) of one attachment of an attached message."""
    _meta, mail = await _embedded(core, actor, attachment_id)
    if not 0 <= index < len(mail.parts):
        raise NotFound("pièce jointe introuvable dans ce message")
    part = mail.parts[index]
    return safe_filename(part.filename, f"piece-jointe-{index + 1}"), _part_type(part), part.data
