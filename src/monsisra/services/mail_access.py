"""Mailboxes as mail clients see them (IMAP): which folders an account has, what each holds,
how IMAP flags and moves map onto MonSisra's per-mailbox state, and each message as a file.

Folders are the web page's views: every mailbox the account may use (own, service, delegated)
gives INBOX (« Réception »), Envoyés (\\Sent), Brouillons (\\Drafts), Archivés (\\Archive),
Favoris (\\Flagged), Corbeille (\\Trash) and one folder per category. A message's IMAP uid is
its delivery's ``uid``: strictly increasing per mailbox, and renewed when the message changes
folder (archived, to the bin and back — ``messages.states``), so a folder never shows a uid
below one it has announced. Favoris overlaps the others with a uid space of its own: a message
takes a new uid of the mailbox (``favorite_uid``) each time it enters Favoris, so a client that
syncs by UIDNEXT sees a message flagged long after it arrived. Category folders overlap the
others with the message's uid.

Flags: ``\\Seen`` is read, ``\\Flagged`` is favourite, ``$Todo`` is « à traiter »; ``\\Deleted``
is kept by the IMAP session and EXPUNGE puts the messages in the bin (restorable 30 days).

Every change goes through ``messages.update_state`` — the same rules, audit and live events as
the web page. Messages are served from their stored raw MIME when kept (received by SMTP),
else rendered once through ``domain.mail`` into a cache file; clients read slices of files.

A message has one place in a mailbox, so COPY into Archivés, INBOX or Corbeille *moves* it (the
source keeps nothing; into Favoris it flags it, and it stays where it was). Clients save that
way — mutt's « save » is COPY, then \\Deleted and EXPUNGE of the source — so EXPUNGE leaves
alone a message that already left the folder: saved to Archivés, it is archived, never binned.
"""

from __future__ import annotations

import asyncio
import json
import os
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from monsisra.domain import delegation
from monsisra.domain.delegation import Right
from monsisra.domain.mail import mime, structure
from monsisra.domain.model import CATEGORY_LABELS, Category, Role
from monsisra.services import accounts, app_passwords, attachments, audit, mailboxes, messages, submission, totp
from monsisra.services.core import Actor, Core
from monsisra.services.errors import AuthFailed, Conflict, Invalid, NotFound
from monsisra.store.models import VIEW_SQL, Delivery, Mailbox, MailboxAccess, Message
from monsisra.store.reach import ImapVanished, ImapVanishedFloor

SEEN, FLAGGED, DELETED, DRAFT, TO_HANDLE = "\\Seen", "\\Flagged", "\\Deleted", "\\Draft", "$Todo"
PERMANENT_FLAGS = (SEEN, FLAGGED, DELETED, TO_HANDLE)
FLAG_STATE = {SEEN: "read", FLAGGED: "favorite", TO_HANDLE: "todo"}  # TO_HANDLE: « à traiter »

INBOX, SENT, DRAFTS, ARCHIVED, FAVORITES, TRASH, CATEGORY = (
    "inbox", "sent", "drafts", "archived", "favorites", "trash", "category")
VIEW_NAMES = {SENT: "Envoyés", DRAFTS: "Brouillons", ARCHIVED: "Archivés", FAVORITES: "Favoris",
              TRASH: "Corbeille"}
SPECIAL_USE = {SENT: "\\Sent", DRAFTS: "\\Drafts", ARCHIVED: "\\Archive", FAVORITES: "\\Flagged",
               TRASH: "\\Trash"}
CATEGORIES = "Catégories"
OTHER_INBOX = "Réception"


@dataclass(frozen=True)
class Folder:
    name: str  # the full name, "/"-separated
    mailbox_id: int
    view: str  # inbox sent drafts archived favorites trash category; "" for a parent that holds nothing
    category: str | None = None
    writable: bool = True

    @property
    def selectable(self) -> bool:
        return bool(self.view)

    @property
    def special_use(self) -> str | None:
        return SPECIAL_USE.get(self.view)

    def condition(self) -> str:
        if self.view == CATEGORY:
            return VIEW_SQL["all"]
        return VIEW_SQL[self.view if self.view != FAVORITES else "favorites"]


@dataclass(frozen=True)
class Item:
    """One message of a folder as the IMAP session keeps it."""

    uid: int
    message_id: int
    role: str
    read: bool
    favorite: bool
    todo: bool
    modseq: int
    created_at: datetime
    raw_sha256: str | None = None  # the message as received, when kept
    patient_id: int | None = None

    def flags(self) -> list[str]:
        out = []
        if self.read:
            out.append(SEEN)
        if self.favorite:
            out.append(FLAGGED)
        if self.todo:
            out.append(TO_HANDLE)
        if self.role == "draft":
            out.append(DRAFT)
        return out


@dataclass(frozen=True)
class Snapshot:
    uidvalidity: int
    uidnext: int
    highest_modseq: int
    items: list[Item]


_LOGIN_LOCKS: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()


SECOND_FACTOR_REFUSAL = ("Ce compte est protégé par un second facteur : utilisez un mot de passe d'application "
                         "(Paramètres › Mots de passe d'application).")


async def login(core: Core, username: str, password: str, client: str | None, via: str) -> Actor:
    """A mail client's login (IMAP, SMTP submission): one of the account's app passwords
    (``services/app_passwords.py``), or its password when it has no second factor — with one,
    the password alone would bypass it and is refused with :data:`SECOND_FACTOR_REFUSAL`.

    Every attempt that is not a valid app password goes through the password check, throttled
    exactly like the web login; a valid app password (138 random bits, not guessable) is let in
    even while a guesser has the account locked out, so that the owner's client keeps working.
    Logins of one account are taken one at a time in this process: a client opening ten
    connections at once must not count ten attempts before the first success clears them."""
    key = username.strip().lower()[:120]
    lock = _LOGIN_LOCKS.get(key)
    if lock is None:
        lock = _LOGIN_LOCKS[key] = asyncio.Lock()
    async with lock:
        found = await app_passwords.check(core, username, password, client, via)
        if found is not None:
            account, app_password_id = found
            await audit.record_now(core, [audit.entry(account.id, f"login.{via}", client=client,
                                                      detail={"method": "app_password", "id": app_password_id})])
            return Actor(account.id, account.username, account.is_admin, client=client)
        account = await accounts.authenticate(core, username, password, client)
    if await totp.is_enrolled(core, account.id):
        await audit.record_now(core, [audit.entry(account.id, "login.failure", client=client,
                                                  detail={"via": via, "reason": "second_factor"})])
        raise AuthFailed(SECOND_FACTOR_REFUSAL)
    await audit.record_now(core, [audit.entry(account.id, f"login.{via}", client=client,
                                              detail={"method": "password"})])
    return Actor(account.id, account.username, account.is_admin, client=client)


async def folders(core: Core, actor: Actor) -> list[Folder]:
    """The folder tree of every mailbox the account may read; its own mailbox at the top."""
    async with core.read() as s:
        rows = (await s.execute(
            sa.select(Mailbox.id, Mailbox.address, Mailbox.owner_account_id, MailboxAccess.rights)
            .join(MailboxAccess, MailboxAccess.mailbox_id == Mailbox.id)
            .where(MailboxAccess.account_id == actor.account_id, Mailbox.active.is_(True))
            .order_by(Mailbox.id))).all()
    rows = [r for r in rows if Right.READ in delegation.decode(r.rights)]
    if not rows:
        return []
    primary = next((r for r in rows if r.owner_account_id == actor.account_id), rows[0])
    out: list[Folder] = []
    for r in [primary] + [r for r in rows if r is not primary]:
        writable = Right.FLAGS in delegation.decode(r.rights)
        prefix = "" if r is primary else f"{r.address}/"
        if prefix:
            out.append(Folder(r.address, r.id, ""))
        out.append(Folder("INBOX" if not prefix else prefix + OTHER_INBOX, r.id, INBOX, writable=writable))
        for view in (SENT, DRAFTS, ARCHIVED, FAVORITES, TRASH):
            out.append(Folder(prefix + VIEW_NAMES[view], r.id, view, writable=writable))
        out.append(Folder(prefix + CATEGORIES, r.id, ""))
        for cat in Category:
            out.append(Folder(f"{prefix}{CATEGORIES}/{CATEGORY_LABELS.get(cat, cat.value)}", r.id, CATEGORY,
                              category=cat.value, writable=writable))
    return out


async def folder(core: Core, actor: Actor, name: str) -> Folder:
    for f in await folders(core, actor):
        if f.name == name:
            return f
    raise NotFound("dossier introuvable")


async def snapshot(core: Core, actor: Actor, f: Folder, uids: list[int] | None = None) -> Snapshot:
    """The folder's messages in uid order (only ``uids`` when given), with the mailbox's uid
    bookkeeping; access checked now (a delegation taken back ends the view at the next look)."""
    d = Delivery.__table__.c
    m = Message.__table__.c
    uid = _uid_column(f)
    stmt = (sa.select(uid, d.message_id, d.role, d.read, d.favorite, d.todo, d.modseq, d.created_at,
                      m.raw_sha256, m.patient_id)
            .join(Message.__table__, m.id == d.message_id)
            .where(d.mailbox_id == f.mailbox_id, sa.text(_qualified(f.condition()))).order_by(uid))
    if f.category:
        stmt = stmt.where(d.category == f.category)
    if uids is not None:
        stmt = stmt.where(uid.in_(uids[:1000]))
    async with core.read() as s:
        await mailboxes.require_right(s, actor, f.mailbox_id, Right.READ)
        box = (await s.execute(sa.select(Mailbox.uidvalidity, Mailbox.next_uid, Mailbox.modseq)
                               .where(Mailbox.id == f.mailbox_id))).one()
        items = [Item(*row) for row in (await s.execute(stmt)).all()]
    return Snapshot(box.uidvalidity, box.next_uid, box.modseq, items)


async def modseq(core: Core, actor: Actor, f: Folder) -> int:
    """The mailbox's modification sequence, access checked: every change to what any of its
    folders shows bumps it, so an unchanged value means the session's view is current."""
    async with core.read() as s:
        row = (await s.execute(sa.select(Mailbox.modseq, MailboxAccess.rights)
                               .join(MailboxAccess, MailboxAccess.mailbox_id == Mailbox.id)
                               .where(Mailbox.id == f.mailbox_id, MailboxAccess.account_id == actor.account_id))
               ).first()
        if row is None or Right.READ not in delegation.decode(row.rights):
            await mailboxes.require_right(s, actor, f.mailbox_id, Right.READ)  # the refusal, audited
        return int(row.modseq) if row is not None else 0


def _uid_column(f: Folder) -> Any:
    """A message's uid in this folder: Favoris has its own (``favorite_uid``, see the docstring)."""
    d = Delivery.__table__.c
    return sa.func.coalesce(d.favorite_uid, d.uid) if f.view == FAVORITES else d.uid


def _qualified(cond: str) -> str:
    """A view's condition on ``deliveries`` columns, usable beside ``messages`` in a join."""
    import re

    return re.sub(r"\b(role|archived|deleted|read|favorite|todo)\b", r"deliveries.\1", cond)


async def vanished_since(core: Core, actor: Actor, f: Folder, since: int) -> list[int] | None:
    """The uids removed from the folder's mailbox after ``since`` (QRESYNC), from its expunge
    history (``messages.placement.record_vanished``); None when ``since`` is older than what the
    history still holds (pruned after 90 days, or before it began): the caller then answers
    every uid it cannot show. Uids that left Favoris alone count for Favoris only."""
    async with core.read() as s:
        await mailboxes.require_right(s, actor, f.mailbox_id, Right.READ)
        floor = await s.scalar(sa.select(ImapVanishedFloor.modseq).where(ImapVanishedFloor.mailbox_id == f.mailbox_id))
        if floor is not None and since < floor:
            return None
        stmt = sa.select(ImapVanished.uid).where(ImapVanished.mailbox_id == f.mailbox_id,
                                                 ImapVanished.modseq > since)
        if f.view != FAVORITES:
            stmt = stmt.where(ImapVanished.favorites_only.is_(False))
        return sorted(set(await s.scalars(stmt)))


async def status(core: Core, actor: Actor, f: Folder) -> dict[str, int]:
    snap = await snapshot(core, actor, f)
    return {"MESSAGES": len(snap.items), "RECENT": 0, "UIDNEXT": snap.uidnext, "UIDVALIDITY": snap.uidvalidity,
            "UNSEEN": sum(1 for i in snap.items if not i.read), "HIGHESTMODSEQ": snap.highest_modseq}


async def set_flags(core: Core, actor: Actor, f: Folder, item: Item, changes: dict[str, bool]) -> None:
    """Apply IMAP flag changes (state names: read, favorite, todo) to one message."""
    if not f.writable:
        raise Conflict("accès en lecture seule à cette boîte")
    if f.view == TRASH or not changes:
        return  # a message in the bin takes no other change
    await messages.update_state(core, actor, f.mailbox_id, item.message_id, changes, role=item.role)


def move_changes(src: Folder, dst: Folder) -> dict[str, bool]:
    """The state changes that take a message from one folder to another (same mailbox)."""
    if src.mailbox_id != dst.mailbox_id:
        raise Conflict("déplacement entre deux boîtes différentes impossible")
    changes: dict[str, bool] = {}
    if dst.view == ARCHIVED:
        changes["archived"] = True
    elif dst.view == INBOX:
        changes["archived"] = False
    elif dst.view == TRASH:
        changes["deleted"] = True
    elif dst.view == FAVORITES:
        changes["favorite"] = True
    else:
        raise Conflict(f"on ne peut pas classer un message dans « {dst.name} »")
    if src.view == TRASH and dst.view != TRASH:
        changes["deleted"] = False
    return changes


async def move(core: Core, actor: Actor, src: Folder, dst: Folder, item: Item, *, keep: bool = False
               ) -> int | None:
    """Move (or copy, ``keep``) a message between folders of one mailbox; its uid in ``dst``."""
    if not src.writable:
        raise Conflict("accès en lecture seule à cette boîte")
    changes = move_changes(src, dst)
    if src.view == FAVORITES and not keep and dst.view != FAVORITES:
        changes["favorite"] = False
    await messages.update_state(core, actor, src.mailbox_id, item.message_id, changes, role=item.role)
    async with core.read() as s:
        return await s.scalar(sa.select(_uid_column(dst)).where(
            Delivery.mailbox_id == src.mailbox_id, Delivery.message_id == item.message_id,
            Delivery.role == item.role, sa.text(dst.condition())).order_by(Delivery.id.desc()).limit(1))


APPEND_REFUSED = ("on ne depose un message que dans Brouillons (un brouillon) ou Envoyes (la copie d'un envoi) : "
                  "les autres dossiers sont les vues de MonSisra")


async def append(core: Core, actor: Actor, f: Folder, raw: bytes) -> int:
    """IMAP APPEND: into Brouillons the message becomes a draft (the web page opens it); into
    Envoyés, the copy a client saves after sending through our submission is recognised by its
    Message-ID and not stored twice, and a message sent elsewhere becomes a sent copy that no
    one receives (its From must be a mailbox the account may send from). Returns its uid in
    ``f`` (APPENDUID)."""
    if f.view not in (DRAFTS, SENT):
        raise Conflict(APPEND_REFUSED)
    try:
        parsed = await asyncio.to_thread(mime.parse, raw)
    except mime.MailError as exc:
        raise Invalid(f"message illisible : {exc}") from None
    if f.view == SENT:
        message_id = submission.client_message_id(parsed)
        async with core.read() as s:
            await mailboxes.require_right(s, actor, f.mailbox_id, Right.READ)
            uid = None if message_id is None else await s.scalar(
                sa.select(Delivery.uid).join(Message, Message.id == Delivery.message_id)
                .where(Delivery.mailbox_id == f.mailbox_id, Delivery.role == Role.SENT, Delivery.deleted.is_(False),
                       Message.message_id == message_id).order_by(Delivery.id.desc()).limit(1))
        if uid is not None:
            return int(uid)
    ids = await attachments.store_parts(core, actor, parsed.attachments)
    copy = f.view == SENT  # sent elsewhere: a copy here, nobody receives it (it was sent already)
    if copy and not parsed.sender_address:
        raise Invalid("message sans expéditeur (From)")
    if copy and await submission.sending_mailbox(core, actor, parsed.sender_address) != f.mailbox_id:
        raise Conflict("la copie d'un envoi va dans l'Envoyés de la boîte qui l'a envoyé (son expéditeur)")
    made = await messages.send(core, actor, messages.Compose(
        from_mailbox=f.mailbox_id, to=[a for _, a in parsed.to], cc=[a for _, a in parsed.cc],
        subject=parsed.subject, body=parsed.text, html=parsed.html, attachments=ids, draft=not copy,
        copy_only=copy, message_id=submission.client_message_id(parsed) if copy else None))
    async with core.read() as s:
        return int(await s.scalar(sa.select(Delivery.uid).where(
            Delivery.mailbox_id == f.mailbox_id, Delivery.message_id == made["id"],
            Delivery.role == (Role.SENT if copy else Role.DRAFT))))


async def expunge(core: Core, actor: Actor, f: Folder, items: list[Item]) -> list[int]:
    """Messages marked \\Deleted leave the folder for the bin; returns the uids gone."""
    if f.view == TRASH or not items:
        return []
    if not f.writable:
        raise Conflict("accès en lecture seule à cette boîte")
    # Only what is still in the folder under that uid: a message copied to Archivés (mutt's save
    # is COPY, \Deleted, EXPUNGE) has already left it and must not follow into the bin.
    still = {i.uid for i in (await snapshot(core, actor, f, [i.uid for i in items])).items}
    gone = []
    for item in [i for i in items if i.uid in still]:
        await messages.update_state(core, actor, f.mailbox_id, item.message_id, {"deleted": True}, role=item.role)
        gone.append(item.uid)
    return gone


# --- messages as files -------------------------------------------------------------------------


@dataclass
class Content:
    """A message as a file; its MIME shape is read only when a FETCH needs more than the bytes."""

    path: Path
    size: int
    key: str
    patient_id: int | None = None
    shape: dict[str, Any] | None = None

    def read(self, start: int, end: int) -> bytes:
        with open(self.path, "rb") as fh:
            fh.seek(start)
            return fh.read(max(0, end - start))

    def header_end(self) -> int:
        """Where the top-level header ends (the body begins), from the file's first bytes."""
        if self.shape is not None:
            return int(self.shape["body"])
        head = self.read(0, min(self.size, 256 * 1024))
        return structure.header_end(head, 0, len(head))


_SHAPES: OrderedDict[str, dict[str, Any]] = OrderedDict()
_SHAPES_MAX = 2048
_RENDER_LOCKS: dict[int, asyncio.Lock] = {}


def _cache_dir(core: Core) -> Path:
    return core.settings.data_dir / "imap-cache"


async def content(core: Core, actor: Actor, f: Folder, item: Item, *, checked: bool = False) -> Content:
    """The message as RFC 5322 bytes on disk: its stored raw MIME when kept, else rendered once
    through ``domain.mail`` into the cache. ``checked``: the caller verified the actor's access
    to the folder for this command (:func:`modseq`)."""
    if not checked:
        async with core.read() as s:
            await mailboxes.require_right(s, actor, f.mailbox_id, Right.READ)
    if item.raw_sha256 and core.blobs.exists(item.raw_sha256):
        path, key = core.blobs.path(item.raw_sha256), f"raw-{item.raw_sha256}"
    else:
        path, key = await _rendered(core, item.message_id), f"msg-{item.message_id}"
    return Content(path, path.stat().st_size, key, item.patient_id)


async def load_shape(core: Core, c: Content) -> dict[str, Any]:
    if c.shape is None:
        c.shape = await _shape(core, c.key, c.path)
    return c.shape


async def record_read(core: Core, actor: Actor, f: Folder, item: Item, c: Content) -> None:
    """A body fetched over IMAP: access to patient data is audited like a read on the web page."""
    patient_id = c.patient_id
    if patient_id is not None:
        await audit.record_now(core, [audit.entry(
            actor.account_id, "message.read", object_type="message", object_id=item.message_id,
            patient_id=patient_id, mailbox_id=f.mailbox_id, client=actor.client, detail={"via": "imap"})])


async def _rendered(core: Core, message_pk: int) -> Path:
    path = _cache_dir(core) / f"{message_pk % 256:02x}" / f"{message_pk}.eml"
    if path.exists():
        return path
    lock = _RENDER_LOCKS.setdefault(message_pk, asyncio.Lock())
    async with lock:
        if not path.exists():
            from monsisra.services import outbound

            _, data = await outbound.render(core, message_pk)
            await asyncio.to_thread(_write_file, path, data)
    _RENDER_LOCKS.pop(message_pk, None)
    return path


def _write_file(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
    tmp.replace(path)


async def _shape(core: Core, key: str, path: Path) -> dict[str, Any]:
    shape = _SHAPES.get(key)
    if shape is not None:
        _SHAPES.move_to_end(key)
        return shape
    shape_file = _cache_dir(core) / "shapes" / f"{key}.json"
    try:
        shape = json.loads(await asyncio.to_thread(shape_file.read_bytes))
    except (OSError, ValueError):
        shape = await asyncio.to_thread(lambda: structure.parse(path.read_bytes()))
        await asyncio.to_thread(_write_file, shape_file, json.dumps(shape).encode())
    _SHAPES[key] = shape
    if len(_SHAPES) > _SHAPES_MAX:
        _SHAPES.popitem(last=False)
    return shape


async def search_text(core: Core, actor: Actor, f: Folder, message_ids: list[int]) -> dict[int, dict[str, str]]:
    """What SEARCH FROM/TO/SUBJECT/BODY/TEXT look into, per message."""
    async with core.read() as s:
        await mailboxes.require_right(s, actor, f.mailbox_id, Right.READ)
        rows = (await s.execute(sa.select(Message.id, Message.subject, Message.sender_address, Message.sender_name,
                                          Message.body, Message.search_text)
                                .where(Message.id.in_(message_ids)))).all()
    return {r.id: {"subject": r.subject or "", "from": f"{r.sender_name} {r.sender_address}",
                   "body": r.body or "", "text": r.search_text or ""} for r in rows}
