"""Writing in conversations: start one, post, add participants, leave, read, typing.

Each function validates first (nothing written on bad input), writes in one transaction and
publishes its events after the commit to every account that may use a present participant
mailbox (``mailbox_ids`` lets each socket drop what its account may no longer see).
"""

from __future__ import annotations

import asyncio
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

import monsisra.services.conversations.access as access
import monsisra.services.conversations.photos as photos
from monsisra.domain.addresses import domain_of, normalize_address
from monsisra.domain.clock import iso, utcnow
from monsisra.domain.delegation import Right
from monsisra.domain.model import Access, MailboxKind
from monsisra.domain.text import TextRefused, check_line, clean_multiline, preview
from monsisra.services import attachments as att_service
from monsisra.services import audit, mailboxes, patients
from monsisra.services.core import Actor, Core, Tx
from monsisra.services.errors import Invalid, NotFound, TooLarge
from monsisra.store.conversations import (
    Conversation,
    ConversationAttachment,
    ConversationMessage,
    ConversationParticipant,
)
from monsisra.store.models import Attachment, Mailbox, MailboxAccess, Patient
from monsisra.store.patients import CareTeamMember

MAX_TITLE = 200
PATIENT_RECORD = "patient.record"  # event type: something was added to a patient's shared record
MAX_BODY = 20_000
MAX_PARTICIPANTS = 100
MAX_ATTACHMENTS = 10
CONVERSABLE = (MailboxKind.PER, MailboxKind.ORG, MailboxKind.CAB)


def _title(raw: str) -> str:
    try:
        title = check_line(raw or "", "titre").strip()
    except TextRefused as exc:
        raise Invalid(str(exc)) from None
    if len(title) > MAX_TITLE:
        raise Invalid(f"titre trop long (au plus {MAX_TITLE} caractères)")
    return title


def _body(raw: str, *, required: bool) -> str:
    body = clean_multiline(raw or "").strip()
    if len(body) > MAX_BODY:
        raise Invalid(f"message trop long (au plus {MAX_BODY} caractères)")
    if required and not body:
        raise Invalid("message vide : écrivez un texte ou joignez un fichier")
    return body


async def _participant_boxes(s: AsyncSession, core: Core, raws: list[str]) -> list[Mailbox]:
    """The local professionals' and services' mailboxes named; every bad address is listed with
    its reason (``invalid_addresses``), in French."""
    if len(raws) > MAX_PARTICIPANTS:
        raise Invalid(f"trop de participants (au plus {MAX_PARTICIPANTS})")
    local = core.settings.domain.lower()
    wanted: list[str] = []
    bad: list[dict[str, str]] = []
    for raw in raws:
        address = normalize_address(str(raw or ""))
        if address is None:
            bad.append({"address": str(raw), "reason": "adresse mal formée"})
        elif domain_of(address) != local:
            bad.append({"address": address, "reason": "une conversation réunit des boîtes de cette plateforme"})
        elif address not in wanted:
            wanted.append(address)
    found = await mailboxes.by_address(s, wanted)
    for address in wanted:
        box = found.get(address)
        if box is None:
            bad.append({"address": address, "reason": "boîte inconnue sur cette plateforme"})
        elif box.kind not in CONVERSABLE:
            bad.append({"address": address, "reason": "une boîte applicative ne participe pas aux conversations"})
    if bad:
        raise Invalid("participants invalides : " + ", ".join(b["address"] for b in bad), invalid_addresses=bad)
    return [found[a] for a in wanted]


async def _acting_mailbox(s: AsyncSession, actor: Actor, from_mailbox: int | None) -> tuple[int, str]:
    """(mailbox, access) the actor starts from: the one asked for, else its own."""
    if from_mailbox is None:
        row = (await s.execute(
            sa.select(MailboxAccess.mailbox_id, MailboxAccess.access)
            .join(Mailbox, Mailbox.id == MailboxAccess.mailbox_id)
            .where(MailboxAccess.account_id == actor.account_id, MailboxAccess.access == Access.OWNER,
                   Mailbox.active.is_(True)).order_by(Mailbox.id).limit(1))).first()
        if row is None:
            raise Invalid("aucune boîte personnelle : précisez la boîte depuis laquelle écrire (from_mailbox)")
        return row.mailbox_id, row.access
    return from_mailbox, await mailboxes.require_right(s, actor, from_mailbox, Right.SEND)


async def _attachments(core: Core, actor: Actor, ids: list[str]) -> list[tuple[Attachment, Attachment | None]]:
    """The attachments to post (photos replaced by their cleaned copy, with a thumbnail)."""
    ids = list(dict.fromkeys(ids))
    if len(ids) > MAX_ATTACHMENTS:
        raise Invalid(f"trop de pièces jointes (au plus {MAX_ATTACHMENTS})")
    if not ids:
        return []
    async with core.read() as s:
        found = await att_service.readable(s, actor, ids)
    missing = [a for a in ids if a not in found]
    if missing:
        raise NotFound("pièce jointe introuvable : " + ", ".join(missing))
    total = sum(found[a].size for a in ids)
    if total > core.settings.max_message_bytes:
        raise TooLarge(f"pièces jointes trop volumineuses : {total // 1024} Ko au total, "
                       f"limite {core.settings.max_message_bytes // (1024 * 1024)} Mo")
    out: list[tuple[Attachment, Attachment | None]] = []
    for a in (found[i] for i in ids):
        if a.content_type not in photos.PHOTO_TYPES:
            out.append((a, None))
            continue
        data = await asyncio.to_thread(core.blobs.read, a.sha256)
        try:
            body, kind, thumb = await asyncio.to_thread(photos.clean, data, a.content_type)
        except photos.BadPhoto:
            raise Invalid(f"photo illisible : {a.filename}") from None
        digest, size = await asyncio.to_thread(core.blobs.put_bytes, body)
        t_digest, t_size = await asyncio.to_thread(core.blobs.put_bytes, thumb)
        clean = await att_service.register(core, actor.account_id, digest, size, kind,
                                           photos.renamed(a.filename, kind))
        small = await att_service.register(core, actor.account_id, t_digest, t_size, "image/jpeg",
                                           "miniature-" + photos.renamed(a.filename, "image/jpeg"))
        out.append((await _attachment_row(core, clean.id), await _attachment_row(core, small.id)))
    return out


async def _attachment_row(core: Core, attachment_id: str) -> Attachment:
    async with core.read() as s:
        return await s.get(Attachment, attachment_id)


def attachment_view(a: Attachment, thumb: Attachment | None) -> dict[str, Any]:
    return {"id": a.id, "filename": a.filename, "content_type": a.content_type, "size": a.size,
            "thumbnail_id": thumb.id if thumb else None}


def message_view(m: ConversationMessage, address: str | None, atts: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": m.id, "conversation_id": m.conversation_id, "body": m.body, "kind": m.kind,
            "author": {"name": m.author_name, "address": address, "mailbox_id": m.mailbox_id},
            "created_at": iso(m.created_at), "attachments": atts}


async def _insert_message(tx: Tx, conversation: Conversation, mailbox_id: int | None, address: str | None,
                          author_id: int | None, author_name: str, body: str, kind: str = "text",
                          atts: list[tuple[Attachment, Attachment | None]] = ()) -> dict[str, Any]:
    s = tx.session
    now = utcnow()
    message = ConversationMessage(conversation_id=conversation.id, mailbox_id=mailbox_id,
                                  author_account_id=author_id, author_name=author_name[:300], kind=kind, body=body,
                                  created_at=now)
    s.add(message)
    await s.flush()
    for pos, (a, thumb) in enumerate(atts):
        s.add(ConversationAttachment(message_id=message.id, attachment_id=a.id, position=pos,
                                     thumbnail_id=thumb.id if thumb else None))
    conversation.last_message_id = message.id
    conversation.last_message_at = now
    if mailbox_id is not None and kind == "text":
        # What one writes, one has read (the poster's own unread count stays at zero).
        await s.execute(sa.update(ConversationParticipant).where(
            ConversationParticipant.conversation_id == conversation.id,
            ConversationParticipant.mailbox_id == mailbox_id).values(
            last_read_message_id=message.id, last_read_at=now, last_read_by=author_id))
    await s.flush()
    return message_view(message, address, [attachment_view(a, t) for a, t in atts])


async def _emit_message(tx: Tx, conversation: Conversation, view: dict[str, Any]) -> None:
    accounts_, boxes = await access.audience(tx.session, conversation.id)
    tx.emit("conversation.message", accounts_, conversation_id=conversation.id, mailbox_ids=boxes,
            title=conversation.title, message=view, preview=preview(view["body"]))
    if conversation.patient_id is not None:
        # The patient's care team may be reading the record: told that it changed, never what
        # (their page fetches it again, and that read is audited like any other).
        team = set(await tx.session.scalars(sa.select(CareTeamMember.account_id).where(
            CareTeamMember.patient_id == conversation.patient_id)))
        watchers = sorted(team - set(accounts_))
        if watchers:
            tx.emit(PATIENT_RECORD, watchers, patient_id=conversation.patient_id, conversation_id=conversation.id)


async def start(core: Core, actor: Actor, *, from_mailbox: int | None = None, title: str = "",
                participants: list[str], patient_id: int | None = None,
                patient: patients.PatientRef | None = None, body: str = "",
                attachments: list[str] | None = None) -> int:
    """Open a conversation from ``from_mailbox`` (default: the actor's own mailbox) with the
    mailboxes at ``participants``, optionally about a patient, optionally with a first message;
    returns its id. The acting mailbox is a participant whether named or not."""
    title = _title(title)
    body = _body(body, required=False)
    atts = await _attachments(core, actor, attachments or [])
    async with core.write() as tx:
        s = tx.session
        box_id, box_access = await _acting_mailbox(s, actor, from_mailbox)
        others = [m for m in await _participant_boxes(s, core, participants) if m.id != box_id]
        if not others:
            raise Invalid("au moins un autre participant est nécessaire")
        found_patient = None
        if patient_id is not None:
            found_patient = await s.get(Patient, patient_id)
            if found_patient is None:
                raise Invalid("patient inconnu")
        elif patient is not None:
            found_patient = await patients.resolve(s, patient)
        now = utcnow()
        conversation = Conversation(title=title, state="open", patient_id=found_patient.id if found_patient else None,
                                    created_by=actor.account_id, created_at=now)
        s.add(conversation)
        await s.flush()
        for m in [box_id, *[o.id for o in others]]:
            s.add(ConversationParticipant(conversation_id=conversation.id, mailbox_id=m, joined_at=now,
                                          added_by=actor.account_id))
        await s.flush()
        me = await s.get(Mailbox, box_id)
        author_name = await access.author(s, actor, box_id, box_access)
        audit.record(s, actor.account_id, "patient.conversation" if found_patient else "conversation.start",
                     object_type="conversation", object_id=conversation.id, mailbox_id=box_id,
                     patient_id=found_patient.id if found_patient else None, client=actor.client,
                     detail={"participants": 1 + len(others)})
        accounts_, boxes = await access.audience(s, conversation.id)
        tx.emit("conversation.new", accounts_, conversation_id=conversation.id, mailbox_ids=boxes, title=title)
        if body or atts:
            view = await _insert_message(tx, conversation, box_id, me.address, actor.account_id, author_name,
                                         body, atts=atts)
            await _emit_message(tx, conversation, view)
        return conversation.id


async def post(core: Core, actor: Actor, conversation_id: int, body: str = "",
               attachments: list[str] | None = None, from_mailbox: int | None = None) -> dict[str, Any]:
    """Post a message; returns it as the conversation shows it. Absent participants who asked
    for it answer with their absence message."""
    body = _body(body, required=not attachments)
    if attachments:
        # Photos are processed before the transaction: first make sure the actor may post here.
        async with core.read() as s:
            await access.require(s, actor, conversation_id, write=True, from_mailbox=from_mailbox)
    atts = await _attachments(core, actor, attachments or [])
    async with core.write() as tx:
        s = tx.session
        conversation, me = await access.require(s, actor, conversation_id, write=True, from_mailbox=from_mailbox,
                                                lock=True)
        author_name = await access.author(s, actor, me.mailbox_id, me.access)
        view = await _insert_message(tx, conversation, me.mailbox_id, me.address, actor.account_id, author_name,
                                     body, atts=atts)
        if conversation.patient_id is not None:
            audit.record(s, actor.account_id, "patient.conversation.post", object_type="conversation",
                         object_id=conversation.id, patient_id=conversation.patient_id, mailbox_id=me.mailbox_id,
                         client=actor.client)
        await _emit_message(tx, conversation, view)
        import monsisra.services.conversations.absence as absence

        for reply in await absence.replies(s, conversation.id, me.mailbox_id):
            auto = await _insert_message(tx, conversation, reply.mailbox_id, reply.address, reply.account_id,
                                         reply.name, reply.text, kind="auto")
            await _emit_message(tx, conversation, auto)
    return view


async def add_participants(core: Core, actor: Actor, conversation_id: int, addresses: list[str]) -> list[int]:
    """Add mailboxes (a departed one comes back); they see the whole history. Returns the
    mailbox ids added."""
    if not addresses:
        raise Invalid("aucun participant à ajouter")
    async with core.write() as tx:
        s = tx.session
        conversation, me = await access.require(s, actor, conversation_id, write=True, lock=True)
        boxes = await _participant_boxes(s, core, addresses)
        rows = {p.mailbox_id: p for p in await s.scalars(sa.select(ConversationParticipant).where(
            ConversationParticipant.conversation_id == conversation_id))}
        now = utcnow()
        added: list[Mailbox] = []
        for box in boxes:
            row = rows.get(box.id)
            if row is None:
                s.add(ConversationParticipant(conversation_id=conversation_id, mailbox_id=box.id, joined_at=now,
                                              added_by=actor.account_id))
                added.append(box)
            elif row.left_at is not None:
                row.left_at, row.joined_at, row.added_by = None, now, actor.account_id
                added.append(box)
        if not added:
            raise Invalid("ces boîtes participent déjà à la conversation")
        await s.flush()
        author_name = await access.author(s, actor, me.mailbox_id, me.access)
        names = ", ".join(b.display_name for b in added)
        view = await _insert_message(tx, conversation, me.mailbox_id, me.address, actor.account_id, author_name,
                                     f"{author_name} a ajouté {names} à la conversation.", kind="system")
        audit.record(s, actor.account_id, "conversation.add", object_type="conversation", object_id=conversation_id,
                     mailbox_id=me.mailbox_id, patient_id=conversation.patient_id, client=actor.client,
                     detail={"added": [b.address for b in added]})
        accounts_, _ = await access.audience(s, conversation_id)
        tx.emit("conversation.new", accounts_, conversation_id=conversation_id, mailbox_ids=[b.id for b in added],
                title=conversation.title)
        await _emit_message(tx, conversation, view)
        return [b.id for b in added]


async def leave(core: Core, actor: Actor, conversation_id: int, from_mailbox: int | None = None) -> None:
    """The actor's mailbox leaves: it keeps the history up to now and hears nothing more."""
    async with core.write() as tx:
        s = tx.session
        conversation, me = await access.require(s, actor, conversation_id, from_mailbox=from_mailbox, lock=True)
        if not me.active:
            raise Invalid("vous avez déjà quitté cette conversation")
        author_name = await access.author(s, actor, me.mailbox_id, me.access)
        if conversation.state == "open":
            view = await _insert_message(tx, conversation, me.mailbox_id, me.address, actor.account_id, author_name,
                                         f"{author_name} a quitté la conversation.", kind="system")
            await _emit_message(tx, conversation, view)
        await s.execute(sa.update(ConversationParticipant).where(ConversationParticipant.id == me.participant_id)
                        .values(left_at=utcnow()))
        audit.record(s, actor.account_id, "conversation.leave", object_type="conversation", object_id=conversation_id,
                     mailbox_id=me.mailbox_id, client=actor.client)


async def mark_read(core: Core, actor: Actor, conversation_id: int, up_to: int | None = None) -> dict[str, Any]:
    """Everything up to ``up_to`` (default: the last message) is read for the actor's mailbox;
    who read it is recorded (a colleague of a service, a delegate) and told to everyone."""
    async with core.write() as tx:
        s = tx.session
        conversation, me = await access.require(s, actor, conversation_id)
        last = conversation.last_message_id or 0
        target = last if up_to is None else min(up_to, last)
        if up_to is not None and up_to > last:
            raise Invalid("message inconnu dans cette conversation")
        if Right.FLAGS not in me.rights:
            # A read-only delegate reads without marking anything read for the owner (as for mail).
            target = 0
        now = utcnow()
        if target and (me.last_read_message_id or 0) < target:
            await s.execute(sa.update(ConversationParticipant).where(ConversationParticipant.id == me.participant_id)
                            .values(last_read_message_id=target, last_read_at=now, last_read_by=actor.account_id))
            reader = await access.author(s, actor, me.mailbox_id, "owner")
            accounts_, boxes = await access.audience(s, conversation_id)
            tx.emit("conversation.read", accounts_, conversation_id=conversation_id, mailbox_ids=boxes,
                    mailbox_id_read=me.mailbox_id, address=me.address, reader_name=reader, message_id=target,
                    read_at=iso(now))
        return {"conversation_id": conversation_id, "mailbox_id": me.mailbox_id,
                "last_read_message_id": max(target, me.last_read_message_id or 0)}


async def typing(core: Core, actor: Actor, conversation_id: int) -> None:
    """« … écrit » to the other present participants (nothing stored)."""
    async with core.read() as s:
        _, me = await access.require(s, actor, conversation_id, write=True)
        name = await access.author(s, actor, me.mailbox_id, "owner")
        accounts_, boxes = await access.audience(s, conversation_id)
    from monsisra.events import Event

    others = [a for a in accounts_ if a != actor.account_id]
    if others:
        await core.bus.publish([Event("conversation.typing", others, {
            "conversation_id": conversation_id, "mailbox_ids": boxes, "name": name, "address": me.address,
            "account_id": actor.account_id})])
