"""The commands of the selected state that read and change messages: FETCH, STORE, SEARCH,
COPY and MOVE (a mixin of :class:`monsisra.imap.session.Session`)."""

from __future__ import annotations

import bisect
from typing import Any

from monsisra.imap import fetch as fx
from monsisra.imap import search as sx
from monsisra.imap.grammar import Bad, FetchItem, Parser, Section, compress
from monsisra.services import mail_access
from monsisra.services.mail_access import DELETED, FLAG_STATE, Item

Selected = Any  # monsisra.imap.session.Selected (not imported: no import circle)


class No(Exception):
    """A command refused: tagged NO with a response code."""

    def __init__(self, text: str, code: str = "") -> None:
        super().__init__(text)
        self.code = code


def _pairs(values) -> list[tuple[str, object]]:
    """``(NAME value NAME2 (list))`` as [(NAME, value)]; a name without value gets None."""
    if not isinstance(values, list):
        raise Bad("liste de parametres attendue")
    out: list[tuple[str, object]] = []
    i = 0
    while i < len(values):
        name = str(values[i]).upper()
        value = values[i + 1] if i + 1 < len(values) and name not in ("CONDSTORE", "VANISHED") else None
        out.append((name, value))
        i += 1 if value is None else 2
    return out


class SelectedCommands:
    """Needs the session's ``core``, ``actor``, ``sel``, ``condstore``, ``qresync``, ``send``,
    ``untagged``, ``sync``, ``_writable`` and ``_vanished_earlier``."""

    # --- selected: FETCH ---
    async def cmd_fetch(self, tag: str, p: Parser, uid: bool = False) -> str:
        sel = self.sel
        assert sel is not None
        p.sp()
        seqset = p.sequence_set()
        p.sp()
        items = p.fetch_items()
        changedsince = None
        vanished = False
        if p.maybe_sp():
            for param in _pairs(p.any_value()):
                if param[0] == "CHANGEDSINCE":
                    changedsince = int(param[1])
                    self.condstore = True
                elif param[0] == "VANISHED" and uid and self.qresync:
                    vanished = True
                else:
                    raise Bad(f"modificateur de FETCH inconnu : {param[0]}")
        p.end()
        if vanished and changedsince is None:
            raise Bad("VANISHED demande CHANGEDSINCE")
        if uid:  # UID commands may be told of arrivals and removals first (RFC 3501 §7.4.1)
            await self.sync()
        else:
            await mail_access.modseq(self.core, self.actor, sel.folder)  # access, checked once per command
        if any(i.name in ("BINARY", "BINARY.SIZE") for i in items):
            raise Bad("BINARY n'est pas pris en charge")
        if uid and not any(i.name == "UID" for i in items):
            items = [FetchItem("UID"), *items]
        if changedsince is not None and not any(i.name == "MODSEQ" for i in items):
            items = [*items, FetchItem("MODSEQ")]
        targets = self._targets(sel, seqset, uid)
        if vanished:
            largest = sel.uidnext - 1
            await self._vanished_earlier(sel, [r for r in seqset if r.resolve(largest)[0] <= largest],
                                         changedsince)
        for u in targets:
            item = sel.items[u]
            if changedsince is not None and item.modseq <= changedsince:
                continue
            await self._fetch_one(sel, item, items)
        return "FETCH termine"

    def _targets(self, sel: Selected, seqset, uid: bool) -> list[int]:
        """The uids a sequence set names, in order (ranges found by bisection: a client fetching
        one message at a time costs O(log n) per command, not a scan of the folder)."""
        uids = sel.uids
        picked: set[int] = set()
        if uid:
            largest = uids[-1] if uids else 0
            for r in seqset:
                lo, hi = r.resolve(largest)
                picked.update(uids[bisect.bisect_left(uids, lo):bisect.bisect_right(uids, hi)])
        else:
            n = len(uids)
            for r in seqset:
                lo, hi = r.resolve(n)
                if n == 0 or hi > n or lo < 1:
                    raise Bad("numero de message hors limites")
                picked.update(uids[lo - 1:hi])
        return sorted(picked)

    async def _fetch_one(self, sel: Selected, item: Item, items: list[FetchItem]) -> None:
        out: list[fx.Chunk] = []
        content = None
        set_seen = False

        needs_shape = any(i.name in ("BODY", "BODYSTRUCTURE") or (i.section is not None and i.section.path)
                          for i in items)

        async def get_content():
            nonlocal content
            if content is None:
                content = await mail_access.content(self.core, self.actor, sel.folder, item,  # type: ignore[arg-type]
                                                    checked=True)
                if needs_shape:
                    await mail_access.load_shape(self.core, content)
            return content

        for it in items:
            name = it.name
            if name == "UID":
                out.append(b"UID %d" % item.uid)
            elif name == "FLAGS":
                continue  # written last, after a \Seen this fetch may set
            elif name == "MODSEQ":
                continue
            elif name == "INTERNALDATE":
                out.append(b"INTERNALDATE " + fx.internal_date(item.created_at))
            elif name == "RFC822.SIZE":
                out.append(b"RFC822.SIZE %d" % (await get_content()).size)
            elif name == "ENVELOPE":
                out.append(b"ENVELOPE " + fx.envelope_of(await get_content()))
            elif name in ("BODYSTRUCTURE", "BODY"):
                c = await get_content()
                out.append(name.encode() + b" " + fx.bodystructure(c, c.shape or {}, extended=name == "BODYSTRUCTURE"))
            elif name in ("RFC822", "RFC822.HEADER", "RFC822.TEXT"):
                c = await get_content()
                section = Section((), {"RFC822": "", "RFC822.HEADER": "HEADER", "RFC822.TEXT": "TEXT"}[name])
                set_seen |= name != "RFC822.HEADER"
                out += [name.encode() + b" ", *fx.literal(fx.section_data(c, section))]
            elif name == "BODY[]":
                c = await get_content()
                assert it.section is not None
                data = fx.partial(fx.section_data(c, it.section), it.partial)
                label = f"BODY[{it.section.spec()}]" + (f"<{it.partial[0]}>" if it.partial else "")
                out += [label.encode() + b" ", *fx.literal(data)]
                set_seen |= not it.peek
        if set_seen and not sel.readonly and not item.read:
            await mail_access.set_flags(self.core, self.actor, sel.folder, item, {"read": True})  # type: ignore[arg-type]
            item = await self._refresh(sel, item)
        if content is not None and any(i.name in ("BODY[]", "RFC822", "RFC822.TEXT") for i in items):
            await mail_access.record_read(self.core, self.actor, sel.folder, item, content)  # type: ignore[arg-type]
        if any(i.name == "FLAGS" for i in items) or set_seen:
            out.append(b"FLAGS " + sel.flags(item).encode())
        if any(i.name == "MODSEQ" for i in items):
            out.append(b"MODSEQ (%d)" % item.modseq)
        parts: list[fx.Chunk] = [b"* %d FETCH (" % sel.seq_of(item.uid)]
        for n, chunk_list in enumerate(_group(out)):
            if n:
                parts.append(b" ")
            parts += chunk_list
        parts.append(b")\r\n")
        await self.send(*parts)

    async def _refresh(self, sel: Selected, item: Item, uids: list[int] | None = None) -> Item:
        """The session's copy of these messages (default: this one) read again after a change."""
        snap = await mail_access.snapshot(self.core, self.actor, sel.folder,  # type: ignore[arg-type]
                                          uids if uids is not None else [item.uid])
        for i in snap.items:
            if i.uid in sel.items:
                sel.items[i.uid] = i
        return sel.items.get(item.uid, item)

    # --- selected: STORE ---
    async def cmd_store(self, tag: str, p: Parser, uid: bool = False) -> str:
        sel = self._writable()
        p.sp()
        seqset = p.sequence_set()
        p.sp()
        unchangedsince = None
        if p.peek() == ord("("):
            for param in _pairs(p.any_value()):
                if param[0] != "UNCHANGEDSINCE":
                    raise Bad(f"modificateur de STORE inconnu : {param[0]}")
                unchangedsince = int(param[1])
                self.condstore = True
            p.sp()
        op = p.atom().upper()
        if op not in ("FLAGS", "+FLAGS", "-FLAGS", "FLAGS.SILENT", "+FLAGS.SILENT", "-FLAGS.SILENT"):
            raise Bad(f"STORE : {op} inconnu")
        p.sp()
        norm = {_norm_flag(f) for f in p.flag_list()}
        p.end()
        silent = op.endswith(".SILENT")
        mode = op[0] if op[0] in "+-" else "="
        modified = []
        changed_uids = []
        for u in self._targets(sel, seqset, uid):
            item = sel.items[u]
            if unchangedsince is not None and item.modseq > unchangedsince:
                modified.append(u if uid else sel.seq_of(u))
                continue
            changes = {}
            for flag, state in FLAG_STATE.items():
                want = (flag in norm) if mode == "=" else (True if mode == "+" else False) \
                    if flag in norm else getattr(item, state)
                if want != getattr(item, state):
                    changes[state] = want
            if DELETED in norm or mode == "=":
                want_deleted = (DELETED in norm) if mode == "=" else mode == "+"
                (sel.deleted.add if want_deleted else sel.deleted.discard)(u)
            if changes:
                await mail_access.set_flags(self.core, self.actor, sel.folder, item, changes)  # type: ignore[arg-type]
            changed_uids.append(u)
        for start in range(0, len(changed_uids), 1000):
            chunk = changed_uids[start:start + 1000]
            await self._refresh(sel, sel.items[chunk[0]], chunk)
        for u in changed_uids:
            item = sel.items[u]
            if silent and unchangedsince is None:
                continue
            extra = f" MODSEQ ({item.modseq})" if self.condstore else ""
            uid_part = f"UID {u} " if uid else ""
            await self.untagged(f"{sel.seq_of(u)} FETCH ({uid_part}FLAGS {sel.flags(item)}{extra})")
        if modified:
            return f"[MODIFIED {compress(modified)}] STORE termine en partie"
        return "STORE termine"

    # --- selected: SEARCH ---
    async def cmd_search(self, tag: str, p: Parser, uid: bool = False) -> str:
        sel = self.sel
        assert sel is not None
        p.sp()
        if p.s[p.i:p.i + 7].upper() == b"RETURN ":
            raise Bad("ESEARCH n'est pas pris en charge")
        node = sx.parse(p)
        p.end()
        if uid:
            await self.sync()
        items = [sel.items[u] for u in sel.uids]
        ctx = sx.Context(items, sel.deleted)
        if sx.needs(node, "text"):
            ctx.texts = await mail_access.search_text(self.core, self.actor, sel.folder,  # type: ignore[arg-type]
                                                      [i.message_id for i in items])
        if sx.needs(node, "size"):
            for i in items:
                ctx.sizes[i.message_id] = (await mail_access.content(self.core, self.actor, sel.folder, i)).size  # type: ignore[arg-type]
        seqs = sx.evaluate(node, ctx)
        found = [items[s - 1].uid if uid else s for s in seqs]
        modseq = ""
        if sx.needs(node, "modseq") and seqs:
            modseq = f" (MODSEQ {max(items[s - 1].modseq for s in seqs)})"
        await self.untagged("SEARCH" + "".join(f" {n}" for n in found) + modseq)
        return "SEARCH termine"

    # --- selected: COPY / MOVE ---
    async def cmd_copy(self, tag: str, p: Parser, uid: bool = False, move: bool = False) -> str:
        sel = self._writable() if move else self.sel
        assert sel is not None
        p.sp()
        seqset = p.sequence_set()
        p.sp()
        dst = await mail_access.folder(self.core, self.actor, p.mailbox())  # type: ignore[arg-type]
        p.end()
        if not dst.selectable:
            raise No("dossier non selectionnable", "NONEXISTENT")
        targets = self._targets(sel, seqset, uid)
        if dst.name == sel.folder.name:
            raise No("le message est deja dans ce dossier", "CANNOT")
        mail_access.move_changes(sel.folder, dst)  # refused before anything changes
        pairs = []
        for u in targets:
            new_uid = await mail_access.move(self.core, self.actor, sel.folder, dst, sel.items[u],  # type: ignore[arg-type]
                                             keep=not move)
            if new_uid is not None:
                pairs.append((u, new_uid))
        code = ""
        if pairs:
            snap_validity = sel.uidvalidity
            code = f"[COPYUID {snap_validity} {','.join(str(a) for a, _ in pairs)} " \
                   f"{','.join(str(b) for _, b in pairs)}] "
        if move:
            await self.untagged(f"OK {code}deplaces")
            await self.sync()
            return "MOVE termine"
        return f"{code}COPY termine"

    async def cmd_move(self, tag: str, p: Parser, uid: bool = False) -> str:
        return await self.cmd_copy(tag, p, uid, move=True)


def _norm_flag(flag: str) -> str:
    low = flag.lower()
    for known in ("\\Seen", "\\Flagged", "\\Deleted", "\\Draft", "\\Answered", "$Todo"):
        if low == known.lower():
            return known
    return flag


def _group(out: list[fx.Chunk]) -> list[list[fx.Chunk]]:
    """FETCH data items: a label chunk and its literal travel together."""
    groups: list[list[fx.Chunk]] = []
    i = 0
    while i < len(out):
        c = out[i]
        if isinstance(c, bytes) and c.endswith(b" ") and i + 2 < len(out) + 1 and i + 1 < len(out) \
                and isinstance(out[i + 1], bytes) and out[i + 1].startswith(b"{"):  # type: ignore[union-attr]
            groups.append([c, out[i + 1], out[i + 2]])
            i += 3
            continue
        groups.append([c])
        i += 1
    return groups
