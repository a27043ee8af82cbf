"""One IMAP connection: states (not authenticated, authenticated, selected), the commands, and
the selected folder's view kept in step with the store (EXISTS, EXPUNGE/VANISHED, FETCH FLAGS).

Every rule is the services': the session only maps IMAP onto ``services.mail_access``.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import contextlib
import logging
import ssl
from dataclasses import dataclass, field

from monsisra.imap import fetch as fx
from monsisra.imap.grammar import (
    Bad,
    LineTooLong,
    Parser,
    RawCommand,
    Spooled,
    TooBig,
    compress,
    in_set,
    read_command,
)
from monsisra.imap.selected import No, SelectedCommands, _pairs
from monsisra.imap.utf7 import encode as utf7
from monsisra.services import mail_access
from monsisra.services.core import Actor, Core
from monsisra.services.errors import AuthFailed, Conflict, Forbidden, NotFound, ServiceError, Throttled
from monsisra.services.mail_access import DELETED, Folder, Item

log = logging.getLogger("monsisra.imap")
BASE_CAPS = "IMAP4rev1 LITERAL+ SASL-IR ID ENABLE IDLE NAMESPACE CHILDREN UNSELECT"
AUTH_CAPS = "UIDPLUS MOVE CONDSTORE QRESYNC SPECIAL-USE LIST-EXTENDED"
ALL_FLAGS = "(\\Seen \\Flagged \\Deleted \\Draft $Todo)"
PERMANENT = "(\\Seen \\Flagged \\Deleted $Todo)"
IDLE_RECHECK = 30.0
AUTOLOGOUT = 30 * 60.0
STOPPING = "BYE serveur en cours d'arret, reconnectez-vous dans un instant"
CHUNK = 256 * 1024


@dataclass
class Selected:
    folder: Folder
    readonly: bool
    uids: list[int] = field(default_factory=list)
    items: dict[int, Item] = field(default_factory=dict)
    deleted: set[int] = field(default_factory=set)
    uidvalidity: int = 0
    uidnext: int = 0
    highest_modseq: int = 0

    def seq_of(self, uid: int) -> int:
        return bisect.bisect_left(self.uids, uid) + 1

    def flags(self, item: Item) -> str:
        flags = item.flags() + ([DELETED] if item.uid in self.deleted else [])
        return "(" + " ".join(flags) + ")"


class Session(SelectedCommands):
    def __init__(self, core: Core, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                 tls_context: ssl.SSLContext, implicit_tls: bool) -> None:
        self.core = core
        self.reader = reader
        self.writer = writer
        self.tls_context = tls_context
        self.tls = implicit_tls
        peer = writer.get_extra_info("peername")
        self.client = str(peer[0]) if isinstance(peer, tuple) and peer else "-"
        self.actor: Actor | None = None
        self.sel: Selected | None = None
        self.condstore = False
        self.qresync = False
        self.done = False
        self.busy = False  # a command is being carried out (IDLE's wait does not count)
        self.stopping = False

    # --- output ---
    async def send(self, *chunks: fx.Chunk) -> None:
        for chunk in chunks:
            if isinstance(chunk, bytes):
                self.writer.write(chunk)
                continue
            pos = chunk.start
            with open(chunk.content.path, "rb") as fh:  # noqa: ASYNC230 (local file, read in chunks)
                fh.seek(pos)
                while pos < chunk.end:
                    data = fh.read(min(CHUNK, chunk.end - pos))
                    if not data:
                        break
                    pos += len(data)
                    self.writer.write(data)
                    await self.writer.drain()
        await self.writer.drain()

    def line(self, text: str) -> bytes:
        return text.encode("utf-8", "replace") + b"\r\n"

    async def untagged(self, text: str) -> None:
        await self.send(self.line("* " + text))

    def caps(self) -> str:
        if self.actor is not None:
            return f"{BASE_CAPS} {AUTH_CAPS}"
        if not self.tls:
            return f"{BASE_CAPS} STARTTLS LOGINDISABLED"
        return f"{BASE_CAPS} AUTH=PLAIN"

    # --- the loop ---
    async def run(self) -> None:
        await self.untagged(f"OK [CAPABILITY {self.caps()}] MonSisra IMAP pret")
        while not self.done:
            try:
                raw = await asyncio.wait_for(read_command(
                    self.reader, self._continue, self.core.settings.data_dir / "imap-append",
                    self.core.settings.max_message_bytes), AUTOLOGOUT)
            except TooBig as exc:
                await self.send(self.line(f"{exc.tag} NO [TOOBIG] {exc}"))
                continue
            except TimeoutError:
                await self.untagged("BYE deconnexion apres inactivite")
                return
            except LineTooLong as exc:
                await self.untagged(f"BYE {exc}")
                return
            except Bad as exc:
                await self.untagged(f"BAD {exc}")
                continue
            if raw is None:
                return
            self.busy = True
            try:
                await self.dispatch(raw)
            finally:
                self.busy = False
                raw.discard()
            if self.stopping:
                if not self.writer.is_closing():
                    await self.untagged(STOPPING)
                return

    def stop(self) -> None:
        """The server is stopping: BYE now when waiting for a command, else after the current one
        (an APPEND being stored, a FETCH being sent) has its tagged reply."""
        self.stopping = True
        if self.busy:
            return
        with contextlib.suppress(Exception):
            self.writer.write(self.line("* " + STOPPING))
            self.writer.close()  # the pending read ends: run() returns

    async def _continue(self) -> None:
        await self.send(b"+ pret pour le litteral\r\n")

    async def dispatch(self, raw: RawCommand) -> None:
        p = Parser(raw)
        try:
            tag = p.tag()
        except Bad:
            await self.untagged("BAD commande sans etiquette")
            return
        try:
            p.sp()
            name = p.atom().upper()
            uid = False
            if name == "UID":
                p.sp()
                name = p.atom().upper()
                uid = True
                if name not in ("FETCH", "STORE", "SEARCH", "COPY", "MOVE", "EXPUNGE"):
                    raise Bad(f"UID {name} : commande inconnue")
            handler = getattr(self, f"cmd_{name.lower()}", None)
            if handler is None:
                raise Bad(f"commande inconnue : {name[:40]}")
            self._check_state(name)
            text = await (handler(tag, p, uid) if name in _UID_COMMANDS else handler(tag, p))
            if text is not None:
                await self.send(self.line(f"{tag} OK {text}"))
        except Bad as exc:
            await self.send(self.line(f"{tag} BAD {fx.ascii_text(str(exc))}"))
        except No as exc:
            code = f"[{exc.code}] " if exc.code else ""
            await self.send(self.line(f"{tag} NO {code}{fx.ascii_text(str(exc))}"))
        except (ConnectionError, asyncio.IncompleteReadError):
            self.done = True
        except ServiceError as exc:
            code = {NotFound: "NONEXISTENT", Forbidden: "NOPERM", Conflict: "CANNOT"}.get(type(exc), "")
            await self.send(self.line(f"{tag} NO {'[' + code + '] ' if code else ''}{fx.ascii_text(exc.detail)}"))
        except Exception:
            log.exception("IMAP command failed")
            await self.send(self.line(f"{tag} NO [SERVERBUG] erreur du serveur"))

    def _check_state(self, name: str) -> None:
        if name in _ANY_STATE:
            return
        if name in _NOT_AUTH:
            if self.actor is not None:
                raise Bad("deja authentifie")
            return
        if self.actor is None:
            raise Bad("authentifiez-vous d'abord (LOGIN ou AUTHENTICATE)")
        if name in _SELECTED and self.sel is None:
            raise Bad("aucun dossier selectionne")

    # --- any state ---
    async def cmd_capability(self, tag: str, p: Parser) -> str:
        p.end()
        await self.untagged(f"CAPABILITY {self.caps()}")
        return "CAPABILITY termine"

    async def cmd_noop(self, tag: str, p: Parser) -> str:
        p.end()
        await self.sync()
        return "NOOP termine"

    async def cmd_check(self, tag: str, p: Parser) -> str:
        return await self.cmd_noop(tag, p)

    async def cmd_logout(self, tag: str, p: Parser) -> str:
        p.end()
        await self.untagged("BYE a bientot")
        self.done = True
        return "LOGOUT termine"

    async def cmd_id(self, tag: str, p: Parser) -> str:
        p.sp()
        p.any_value()
        p.end()
        await self.untagged('ID ("name" "MonSisra" "vendor" "MonSisra")')
        return "ID termine"

    # --- not authenticated ---
    async def cmd_starttls(self, tag: str, p: Parser) -> None:
        p.end()
        if self.tls:
            raise Bad("TLS deja actif")
        await self.send(self.line(f"{tag} OK commencez la negociation TLS"))
        if self.reader._buffer:  # type: ignore[attr-defined]  # plaintext sent after STARTTLS: injection
            self.done = True
            return
        await self.writer.start_tls(self.tls_context)
        self.tls = True
        return None

    async def cmd_login(self, tag: str, p: Parser) -> str:
        p.sp()
        user = p.astring()
        p.sp()
        password = p.astring()
        p.end()
        return await self._authenticate(user, password)

    async def cmd_authenticate(self, tag: str, p: Parser) -> str:
        p.sp()
        mech = p.atom().upper()
        initial = None
        if p.maybe_sp():
            initial = p.atom(b"=").encode()
        p.end()
        if mech != "PLAIN":
            raise No("mecanisme non pris en charge (PLAIN seulement)", "CANNOT")
        if not self.tls:
            raise No("authentification refusee sans TLS : utilisez STARTTLS", "PRIVACYREQUIRED")
        if initial is None:
            await self.send(b"+ \r\n")
            initial = (await self.reader.readline()).strip()
        if initial == b"*":
            raise Bad("authentification annulee")
        try:
            _, user, password = base64.b64decode(initial if initial != b"=" else b"", validate=True) \
                .decode("utf-8").split("\0")
        except (ValueError, UnicodeDecodeError):
            raise Bad("reponse PLAIN mal formee") from None
        return await self._authenticate(user, password)

    async def _authenticate(self, user: str, password: str) -> str:
        if not self.tls:
            raise No("connexion refusee sans TLS : utilisez STARTTLS ou le port IMAPS", "PRIVACYREQUIRED")
        try:
            self.actor = await mail_access.login(self.core, user, password, self.client, "imap")
        except Throttled as exc:
            raise No(exc.detail, "UNAVAILABLE") from None
        except AuthFailed as exc:
            raise No(exc.detail.replace("›", ">"), "AUTHENTICATIONFAILED") from None
        return f"[CAPABILITY {self.caps()}] connecte"

    # --- authenticated ---
    async def cmd_enable(self, tag: str, p: Parser) -> str:
        enabled = []
        while p.maybe_sp():
            cap = p.atom().upper()
            if cap in ("CONDSTORE", "QRESYNC"):
                self.condstore = True
                if cap == "QRESYNC":
                    self.qresync = True
                enabled.append(cap)
        p.end()
        await self.untagged("ENABLED" + "".join(" " + c for c in enabled))
        return "ENABLE termine"

    async def cmd_namespace(self, tag: str, p: Parser) -> str:
        p.end()
        await self.untagged('NAMESPACE (("" "/")) NIL NIL')
        return "NAMESPACE termine"

    async def cmd_list(self, tag: str, p: Parser, lsub: bool = False) -> str:
        p.sp()
        selection: list = []
        if p.peek() == ord("("):
            selection = [str(s).upper() for s in p.any_value()]
            p.sp()
        ref = p.list_mailbox()
        p.sp()
        pattern = p.list_mailbox()
        if p.maybe_sp():
            if p.atom().upper() != "RETURN":
                raise Bad("RETURN attendu")
            p.sp()
            p.any_value()
        p.end()
        verb = "LSUB" if lsub else "LIST"
        if pattern == "":
            await self.untagged(f'{verb} (\\Noselect) "/" ""')
            return f"{verb} termine"
        regex = _pattern(ref + pattern)
        folders = await mail_access.folders(self.core, self.actor)  # type: ignore[arg-type]
        names = {f.name for f in folders}
        for f in folders:
            if not regex(f.name):
                continue
            if "SPECIAL-USE" in selection and not f.special_use:
                continue
            children = any(n.startswith(f.name + "/") for n in names)
            attrs = ["\\HasChildren" if children else "\\HasNoChildren"]
            if not f.selectable:
                attrs.insert(0, "\\Noselect")
            if f.special_use:
                attrs.append(f.special_use)
            if "SUBSCRIBED" in selection:
                attrs.append("\\Subscribed")
            await self.send(f"* {verb} ({' '.join(attrs)}) \"/\" ".encode() + fx.qstring(utf7(f.name)) + b"\r\n")
        return f"{verb} termine"

    async def cmd_lsub(self, tag: str, p: Parser) -> str:
        return await self.cmd_list(tag, p, lsub=True)

    async def cmd_subscribe(self, tag: str, p: Parser) -> str:
        p.sp()
        await mail_access.folder(self.core, self.actor, p.mailbox())  # type: ignore[arg-type]
        p.end()
        return "abonnement enregistre"

    async def cmd_unsubscribe(self, tag: str, p: Parser) -> str:
        return await self.cmd_subscribe(tag, p)

    async def cmd_create(self, tag: str, p: Parser) -> str:
        raise No("les dossiers sont ceux de MonSisra : on ne peut pas en creer", "CANNOT")

    cmd_delete = cmd_rename = cmd_create

    async def cmd_append(self, tag: str, p: Parser) -> str:
        """Into Brouillons (a draft) or Envoyés (the copy of a message sent by our submission);
        other folders are MonSisra's views (``mail_access.append``)."""
        p.sp()
        f = await mail_access.folder(self.core, self.actor, p.mailbox())  # type: ignore[arg-type]
        p.sp()
        if p.peek() == ord("("):
            p.flag_list()  # a draft is \\Draft and a sent copy \\Seen whatever the client says
            p.sp()
        if p.peek() == ord('"'):
            p.datetime_()  # the message's date is its own
            p.sp()
        literal = p.message_literal()
        p.end()
        if isinstance(literal, Spooled):
            if literal.size > self.core.settings.max_message_bytes:
                raise No("message trop gros", "TOOBIG")
            data = await asyncio.to_thread(literal.path.read_bytes)
        else:
            data = literal
        if len(data) > self.core.settings.max_message_bytes:
            raise No("message trop gros", "TOOBIG")
        try:
            uid = await mail_access.append(self.core, self.actor, f, data)  # type: ignore[arg-type]
        except Conflict as exc:
            raise No(exc.detail, "CANNOT") from None
        box = await mail_access.snapshot(self.core, self.actor, f, [uid])  # type: ignore[arg-type]
        return f"[APPENDUID {box.uidvalidity} {uid}] APPEND termine"

    async def cmd_status(self, tag: str, p: Parser) -> str:
        p.sp()
        name = p.mailbox()
        p.sp()
        wanted = [str(w).upper() for w in p.any_value()]
        p.end()
        f = await mail_access.folder(self.core, self.actor, name)  # type: ignore[arg-type]
        if not f.selectable:
            raise No("dossier non selectionnable", "NONEXISTENT")
        values = await mail_access.status(self.core, self.actor, f)  # type: ignore[arg-type]
        unknown = [w for w in wanted if w not in values]
        if unknown:
            raise Bad(f"STATUS : element inconnu {unknown[0]}")
        body = " ".join(f"{w} {values[w]}" for w in wanted)
        await self.send(b"* STATUS " + fx.qstring(utf7(f.name)) + f" ({body})\r\n".encode())
        return "STATUS termine"

    async def cmd_select(self, tag: str, p: Parser, readonly: bool = False) -> str:
        p.sp()
        name = p.mailbox()
        qresync = None
        if p.maybe_sp():
            for param in _pairs(p.any_value()):
                if param[0] == "CONDSTORE":
                    self.condstore = True
                elif param[0] == "QRESYNC" and self.qresync:
                    qresync = param[1]
                else:
                    raise Bad(f"parametre de SELECT inconnu : {param[0]}")
        p.end()
        self.sel = None
        f = await mail_access.folder(self.core, self.actor, name)  # type: ignore[arg-type]
        if not f.selectable:
            raise No("dossier non selectionnable", "NONEXISTENT")
        sel = Selected(f, readonly or not f.writable)
        snap = await mail_access.snapshot(self.core, self.actor, f)  # type: ignore[arg-type]
        sel.uids = [i.uid for i in snap.items]
        sel.items = {i.uid: i for i in snap.items}
        sel.uidvalidity, sel.uidnext, sel.highest_modseq = snap.uidvalidity, snap.uidnext, snap.highest_modseq
        await self.untagged(f"FLAGS {ALL_FLAGS}")
        await self.untagged(f"OK [PERMANENTFLAGS {'()' if sel.readonly else PERMANENT}] etats conserves")
        await self.untagged(f"{len(sel.uids)} EXISTS")
        await self.untagged("0 RECENT")
        unseen = next((n for n, u in enumerate(sel.uids, 1) if not sel.items[u].read), None)
        if unseen:
            await self.untagged(f"OK [UNSEEN {unseen}] premier message non lu")
        await self.untagged(f"OK [UIDVALIDITY {sel.uidvalidity}] validite des UID")
        await self.untagged(f"OK [UIDNEXT {sel.uidnext}] prochain UID")
        await self.untagged(f"OK [HIGHESTMODSEQ {sel.highest_modseq}] derniere modification")
        self.sel = sel
        if qresync:
            await self._qresync(sel, qresync)
        return f"[{'READ-ONLY' if sel.readonly else 'READ-WRITE'}] {'EXAMINE' if readonly else 'SELECT'} termine"

    async def cmd_examine(self, tag: str, p: Parser) -> str:
        return await self.cmd_select(tag, p, readonly=True)

    async def _qresync(self, sel: Selected, params: list) -> None:
        if not params or len(params) < 2:
            raise Bad("QRESYNC : (uidvalidity modseq [uids]) attendu")
        if int(params[0]) != sel.uidvalidity:
            return
        since = int(params[1])
        known = _seqset(str(params[2])) if len(params) > 2 and not isinstance(params[2], list) else None
        await self._vanished_earlier(sel, known, since)
        for uid in sel.uids:
            item = sel.items[uid]
            if item.modseq > since:
                await self.untagged(
                    f"{sel.seq_of(uid)} FETCH (UID {uid} FLAGS {sel.flags(item)} MODSEQ ({item.modseq}))")

    async def _vanished_earlier(self, sel: Selected, known, since: int | None = None) -> None:
        """Uids the client may know (below UIDNEXT, or in ``known``) that are gone: those the
        expunge history says were removed after ``since``; when it no longer reaches that far
        back (or without ``since``), every such uid not in the folder now (RFC 7162 allows it)."""
        present = set(sel.uids)
        removed = None if since is None else \
            await mail_access.vanished_since(self.core, self.actor, sel.folder, since)  # type: ignore[arg-type]
        if known is None:
            candidates = range(1, sel.uidnext) if removed is None else removed
            gone = [u for u in candidates if u not in present and u < sel.uidnext]
        else:
            wanted = {u for r in known for u in range(r.resolve(sel.uidnext - 1)[0], r.resolve(sel.uidnext - 1)[1] + 1)}
            candidates = sorted(wanted) if removed is None else [u for u in removed if u in wanted]
            gone = [u for u in candidates if u not in present and u < sel.uidnext]
        if gone:
            await self.untagged(f"VANISHED (EARLIER) {compress(gone)}")

    async def cmd_unselect(self, tag: str, p: Parser) -> str:
        p.end()
        self.sel = None
        return "UNSELECT termine"

    async def cmd_close(self, tag: str, p: Parser) -> str:
        p.end()
        sel = self.sel
        if sel and not sel.readonly and sel.deleted:
            await mail_access.expunge(self.core, self.actor, sel.folder,  # type: ignore[arg-type]
                                      [sel.items[u] for u in sel.deleted if u in sel.items])
        self.sel = None
        return "CLOSE termine"

    async def cmd_expunge(self, tag: str, p: Parser, uid: bool = False) -> str:
        sel = self._writable()
        targets = set(sel.deleted)
        if uid:
            p.sp()
            subset = p.sequence_set()
            largest = sel.uids[-1] if sel.uids else 0
            targets = {u for u in targets if in_set(u, subset, largest)}
        p.end()
        await mail_access.expunge(self.core, self.actor, sel.folder,  # type: ignore[arg-type]
                                  [sel.items[u] for u in sorted(targets) if u in sel.items])
        sel.deleted -= targets
        await self.sync()
        return "EXPUNGE termine"

    # --- IDLE ---
    async def cmd_idle(self, tag: str, p: Parser) -> str:
        p.end()
        assert self.actor is not None
        sub = self.core.bus.subscribe(self.actor.account_id)
        try:
            await self.send(b"+ en attente\r\n")
            await self.sync()
            reading = asyncio.ensure_future(self.reader.readline())
            self.busy = False  # waiting: a stopping server says BYE without waiting for DONE
            if self.stopping:
                self.stop()
            try:
                while True:
                    waiting = asyncio.ensure_future(sub.get())
                    done, _ = await asyncio.wait({reading, waiting}, timeout=IDLE_RECHECK,
                                                 return_when=asyncio.FIRST_COMPLETED)
                    if waiting not in done:
                        waiting.cancel()
                    if reading in done:
                        line = reading.result()
                        if not line:
                            self.done = True
                            return "IDLE termine"
                        if line.strip().upper() != b"DONE":
                            raise Bad("DONE attendu")
                        break
                    if waiting in done and not self._concerns(waiting.result()):
                        continue
                    while not sub.queue.empty():  # one look for a burst of events
                        sub.queue.get_nowait()
                    await self.sync()
            finally:
                if not reading.done():
                    reading.cancel()
        finally:
            sub.close()
        return "IDLE termine"

    def _concerns(self, payload: dict) -> bool:
        if self.sel is None:
            return False
        mid = self.sel.folder.mailbox_id
        return payload.get("mailbox_id") == mid or mid in (payload.get("mailbox_ids") or [])

    # --- keeping the selected view in step ---
    async def sync(self) -> None:
        sel = self.sel
        if sel is None:
            return
        if await mail_access.modseq(self.core, self.actor, sel.folder) == sel.highest_modseq:  # type: ignore[arg-type]
            return  # nothing changed in the mailbox since the last look (one row read)
        snap = await mail_access.snapshot(self.core, self.actor, sel.folder)  # type: ignore[arg-type]
        now = {i.uid: i for i in snap.items}
        gone = [u for u in sel.uids if u not in now]
        if gone:
            if self.qresync:
                await self.untagged(f"VANISHED {compress(gone)}")
                keep = set(gone)
                sel.uids = [u for u in sel.uids if u not in keep]
            else:
                for u in sorted(gone, reverse=True):
                    await self.untagged(f"{sel.seq_of(u)} EXPUNGE")
                    sel.uids.pop(sel.seq_of(u) - 1)
            for u in gone:
                sel.items.pop(u, None)
                sel.deleted.discard(u)
        for u in sel.uids:
            old, new = sel.items[u], now[u]
            if (old.read, old.favorite, old.todo, old.modseq) != (new.read, new.favorite, new.todo, new.modseq):
                sel.items[u] = new
                if (old.read, old.favorite, old.todo) != (new.read, new.favorite, new.todo) or self.condstore:
                    extra = f" MODSEQ ({new.modseq})" if self.condstore else ""
                    await self.untagged(f"{sel.seq_of(u)} FETCH (UID {u} FLAGS {sel.flags(new)}{extra})")
        added = sorted(u for u in now if u not in sel.items)
        if added:
            # Rarely a uid below the last shown (a message flagged into Favoris): kept in order.
            for u in added:
                bisect.insort(sel.uids, u)
                sel.items[u] = now[u]
            await self.untagged(f"{len(sel.uids)} EXISTS")
        sel.uidnext, sel.highest_modseq = snap.uidnext, snap.highest_modseq

    def _writable(self) -> Selected:
        sel = self.sel
        assert sel is not None
        if sel.readonly:
            raise No("dossier ouvert en lecture seule", "READ-ONLY")
        return sel


_UID_COMMANDS = {"FETCH", "STORE", "SEARCH", "COPY", "MOVE", "EXPUNGE"}
_ANY_STATE = {"CAPABILITY", "NOOP", "LOGOUT", "ID"}
_NOT_AUTH = {"STARTTLS", "LOGIN", "AUTHENTICATE"}
_SELECTED = {"CHECK", "CLOSE", "UNSELECT", "EXPUNGE", "FETCH", "STORE", "SEARCH", "COPY", "MOVE"}


def _seqset(text: str):
    from monsisra.imap.grammar import RawCommand as _Raw

    p = Parser(_Raw(text.encode()))
    seq = p.sequence_set()
    p.end()
    return seq


def _pattern(pattern: str):
    import re

    regex = "".join(".*" if c == "*" else "[^/]*" if c == "%" else re.escape(c) for c in pattern)
    compiled = re.compile(regex + r"\Z", re.IGNORECASE if pattern.upper().startswith("INBOX") else 0)

    def match(name: str) -> bool:
        return bool(compiled.match(name))

    return match


async def close_quietly(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        writer.close()
        await asyncio.wait_for(writer.wait_closed(), 5)
