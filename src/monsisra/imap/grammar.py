"""The IMAP4rev1 command grammar (RFC 3501, with LITERAL+ RFC 7888, CONDSTORE/QRESYNC RFC 7162):
reading a command line with its literals off the wire, and a recursive-descent parser for the
pieces commands are made of (atoms, quoted strings, literals, lists, sequence sets, FETCH items,
SEARCH keys). Bytes in, values out — except APPEND's large literals, written to files as they
arrive; :class:`Bad` for anything that does not parse.
"""

from __future__ import annotations

import asyncio
import os
import re
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

MAX_LINE = 64 * 1024
MAX_LITERAL = 64 * 1024 * 1024
LITERAL_MARK = 0  # NUL stands for "a literal here" in the joined command text (NUL is never valid text)
_LITERAL_TAIL = re.compile(rb"\{(\d{1,10})(\+?)\}\r?\n?$")
ATOM_SPECIALS = set(b'(){ %*"\\]') | set(range(0x20)) | {0x7F}


class Bad(Exception):
    """A command that does not parse: answered BAD, the connection goes on."""


class LineTooLong(Bad):
    pass


@dataclass
class RawCommand:
    """A command's text with NULs where its literals were, and the literals in order."""

    text: bytes
    literals: list[bytes | Spooled] = field(default_factory=list)

    def discard(self) -> None:
        for lit in self.literals:
            if isinstance(lit, Spooled):
                lit.path.unlink(missing_ok=True)


@dataclass
class Spooled:
    """An APPEND literal written to a file as it arrived (never whole in memory)."""

    path: Path
    size: int


class TooBig(Exception):
    """An APPEND literal over the message size limit: answered ``NO [TOOBIG]``."""

    def __init__(self, tag: str, limit: int) -> None:
        super().__init__(f"message trop gros (limite {limit // (1024 * 1024)} Mo)")
        self.tag = tag


_APPEND = re.compile(rb"^(\S+) APPEND ", re.IGNORECASE)
CHUNK = 64 * 1024


async def _spool(reader: asyncio.StreamReader, size: int, directory: Path) -> Spooled:
    fd, name = await asyncio.to_thread(_new_file, directory)
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as fh:
            left = size
            while left:
                chunk = await reader.readexactly(min(CHUNK, left))
                await asyncio.to_thread(fh.write, chunk)
                left -= len(chunk)
    except BaseException:
        os.unlink(path)
        raise
    return Spooled(path, size)


def _new_file(directory: Path) -> tuple[int, str]:
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    return tempfile.mkstemp(dir=directory, prefix="append-")


async def _skip(reader: asyncio.StreamReader, size: int) -> None:
    left = size
    while left:
        left -= len(await reader.readexactly(min(CHUNK, left)))


async def read_command(reader: asyncio.StreamReader, continuation: Callable[[], Awaitable[None]],
                       spool_dir: Path | None = None, max_append: int = MAX_LITERAL) -> RawCommand | None:
    """One command off the wire (None at end of stream). A synchronising literal ``{n}`` is
    answered with ``continuation()`` before its bytes are read; ``{n+}`` is not (LITERAL+).
    APPEND's literals go to files in ``spool_dir`` as they arrive; one over ``max_append`` is
    :class:`TooBig` — refused before it is sent when synchronising, read and dropped if not."""
    parts: list[bytes] = []
    literals: list[bytes | Spooled] = []
    total = 0
    while True:
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            RawCommand(b"", literals).discard()
            if not exc.partial and not parts:
                return None
            raise Bad("ligne incomplete") from None
        except asyncio.LimitOverrunError:
            RawCommand(b"", literals).discard()
            raise LineTooLong("ligne trop longue") from None
        total += len(line)
        if total > MAX_LINE:
            RawCommand(b"", literals).discard()
            raise LineTooLong("commande trop longue")
        m = _LITERAL_TAIL.search(line)
        if m is None:
            parts.append(line.rstrip(b"\r\n"))
            return RawCommand(b"".join(parts), literals)
        size = int(m.group(1))
        parts.append(line[: m.start()] + bytes([LITERAL_MARK]))
        append = spool_dir is not None and _APPEND.match(parts[0])
        if append and size > max_append:
            RawCommand(b"", literals).discard()
            if m.group(2) and size <= MAX_LITERAL:  # LITERAL+: the bytes come anyway
                await _skip(reader, size)
                await reader.readuntil(b"\n")
            elif m.group(2):
                raise LineTooLong("litteral trop grand")
            raise TooBig(append.group(1).decode("ascii", "replace"), max_append)
        if size > MAX_LITERAL:
            RawCommand(b"", literals).discard()
            raise LineTooLong("litteral trop grand")
        if not m.group(2):
            await continuation()
        if append and size > CHUNK:
            literals.append(await _spool(reader, size, spool_dir))  # type: ignore[arg-type]
        else:
            literals.append(await reader.readexactly(size))


@dataclass(frozen=True)
class SeqRange:
    """``lo:hi`` of a sequence set; None stands for ``*`` (the largest number in use)."""

    lo: int | None
    hi: int | None

    def resolve(self, largest: int) -> tuple[int, int]:
        lo = largest if self.lo is None else self.lo
        hi = largest if self.hi is None else self.hi
        return (lo, hi) if lo <= hi else (hi, lo)


SequenceSet = list[SeqRange]


def in_set(n: int, seq: SequenceSet, largest: int) -> bool:
    for r in seq:
        lo, hi = r.resolve(largest)
        if lo <= n <= hi:
            return True
    return False


def compress(numbers) -> str:
    """``1:3,7,9:10`` from numbers (sorted or not)."""
    out: list[str] = []
    run: list[int] = []
    for n in sorted(set(numbers)):
        if run and n == run[1] + 1:
            run[1] = n
            continue
        if run:
            out.append(str(run[0]) if run[0] == run[1] else f"{run[0]}:{run[1]}")
        run = [n, n]
    if run:
        out.append(str(run[0]) if run[0] == run[1] else f"{run[0]}:{run[1]}")
    return ",".join(out)


@dataclass(frozen=True)
class Section:
    """What a ``BODY[...]`` asks for: a part path (empty: the whole message), and a text part of it."""

    path: tuple[int, ...] = ()
    text: str = ""  # "" | HEADER | TEXT | MIME | HEADER.FIELDS | HEADER.FIELDS.NOT
    fields: tuple[str, ...] = ()

    def spec(self) -> str:
        bits = ".".join(map(str, self.path))
        if self.text:
            bits = f"{bits}.{self.text}" if bits else self.text
        if self.fields:
            bits += " (" + " ".join(f.upper() for f in self.fields) + ")"
        return bits


@dataclass(frozen=True)
class FetchItem:
    name: str  # one of SIMPLE_ITEMS, or BODY[] (with a section), BINARY, BINARY.SIZE
    section: Section | None = None
    peek: bool = False
    partial: tuple[int, int] | None = None


MACROS = {
    "ALL": ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"],
    "FAST": ["FLAGS", "INTERNALDATE", "RFC822.SIZE"],
    "FULL": ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"],
}
SIMPLE_ITEMS = {"FLAGS", "UID", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY", "BODYSTRUCTURE", "MODSEQ",
                "RFC822", "RFC822.HEADER", "RFC822.TEXT"}
MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


class Parser:
    """A cursor over one command's text; each method reads one grammar element or raises Bad."""

    def __init__(self, raw: RawCommand) -> None:
        self.s = raw.text
        self.lits = list(raw.literals)
        self.i = 0
        self.lit_i = 0

    # --- low level ---
    def at_end(self) -> bool:
        return self.i >= len(self.s)

    def peek(self) -> int | None:
        return self.s[self.i] if self.i < len(self.s) else None

    def expect(self, ch: bytes) -> None:
        if self.s[self.i:self.i + len(ch)] != ch:
            raise Bad(f"attendu {ch.decode()!r} en position {self.i}")
        self.i += len(ch)

    def sp(self) -> None:
        self.expect(b" ")

    def maybe_sp(self) -> bool:
        if self.peek() == 0x20:
            self.i += 1
            return True
        return False

    def end(self) -> None:
        if not self.at_end():
            raise Bad("caracteres en trop en fin de commande")

    def message_literal(self) -> bytes | Spooled:
        """APPEND's message: in memory when small, else a file (see :func:`read_command`)."""
        if self.peek() != LITERAL_MARK:
            raise Bad("message attendu en litteral {taille}")
        return self._take_any_literal()

    def _take_literal(self) -> bytes:
        lit = self._take_any_literal()
        if not isinstance(lit, bytes):
            raise Bad("litteral inattendu")
        return lit

    def _take_any_literal(self) -> bytes | Spooled:
        if self.lit_i >= len(self.lits):
            raise Bad("litteral manquant")
        self.i += 1
        lit = self.lits[self.lit_i]
        self.lit_i += 1
        return lit

    # --- tokens ---
    def atom(self, extra: bytes = b"", stop: bytes = b"") -> str:
        """An atom (``extra`` lists specials allowed here, e.g. ``]`` or ``*``; ``stop`` ends it)."""
        start = self.i
        allowed = set(extra)
        stops = set(stop)
        while self.i < len(self.s):
            c = self.s[self.i]
            if (c in ATOM_SPECIALS and c not in allowed) or c >= 0x80 or c in stops:
                break
            self.i += 1
        if self.i == start:
            raise Bad(f"atome attendu en position {start}")
        return self.s[start:self.i].decode("ascii")

    def tag(self) -> str:
        start = self.i
        while self.i < len(self.s) and self.s[self.i] not in ATOM_SPECIALS and self.s[self.i] != ord("+") \
                and self.s[self.i] < 0x80:
            self.i += 1
        if self.i == start:
            raise Bad("etiquette manquante")
        return self.s[start:self.i].decode("ascii")

    def quoted(self) -> bytes:
        self.expect(b'"')
        out = bytearray()
        while True:
            if self.i >= len(self.s):
                raise Bad("chaine entre guillemets non terminee")
            c = self.s[self.i]
            if c == ord('"'):
                self.i += 1
                return bytes(out)
            if c == ord("\\"):
                self.i += 1
                if self.i >= len(self.s) or self.s[self.i] not in b'"\\':
                    raise Bad("echappement invalide dans une chaine")
                c = self.s[self.i]
            elif c in (0, 0x0A, 0x0D):
                raise Bad("caractere interdit dans une chaine")
            out.append(c)
            self.i += 1

    def string_bytes(self) -> bytes:
        c = self.peek()
        if c == ord('"'):
            return self.quoted()
        if c == LITERAL_MARK:
            return self._take_literal()
        raise Bad(f"chaine attendue en position {self.i}")

    def astring_bytes(self) -> bytes:
        c = self.peek()
        if c in (ord('"'), LITERAL_MARK):
            return self.string_bytes()
        return self.atom(b"]").encode()

    def astring(self) -> str:
        return self.astring_bytes().decode("utf-8", "replace")

    def mailbox(self) -> str:
        """A mailbox name (modified UTF-7 decoded; INBOX in any case is INBOX)."""
        from monsisra.imap.utf7 import decode

        name = decode(self.astring_bytes())
        return "INBOX" if name.upper() == "INBOX" else name

    def list_mailbox(self) -> str:
        from monsisra.imap.utf7 import decode

        c = self.peek()
        if c in (ord('"'), LITERAL_MARK):
            return decode(self.string_bytes())
        return decode(self.atom(b"%*]").encode())

    def number(self) -> int:
        start = self.i
        while self.i < len(self.s) and 0x30 <= self.s[self.i] <= 0x39:
            self.i += 1
        if self.i == start or self.i - start > 20:
            raise Bad(f"nombre attendu en position {start}")
        return int(self.s[start:self.i])

    def nz_number(self) -> int:
        n = self.number()
        if n <= 0:
            raise Bad("nombre non nul attendu")
        return n

    def paren_list(self, item: Callable[[], object]) -> list:
        self.expect(b"(")
        out: list = []
        if self.peek() == ord(")"):
            self.i += 1
            return out
        while True:
            out.append(item())
            if self.peek() == ord(")"):
                self.i += 1
                return out
            self.sp()

    def flag(self) -> str:
        if self.peek() == ord("\\"):
            self.i += 1
            return "\\" + self.atom(b"*")
        return self.atom()

    def flag_list(self) -> list[str]:
        if self.peek() == ord("("):
            return self.paren_list(self.flag)
        out = [self.flag()]
        while self.peek() == 0x20 and self.i + 1 < len(self.s) and self.s[self.i + 1] != ord("("):
            self.i += 1
            out.append(self.flag())
        return out

    def sequence_set(self) -> SequenceSet:
        out: SequenceSet = []
        while True:
            lo = self._seq_number()
            hi = lo
            if self.peek() == ord(":"):
                self.i += 1
                hi = self._seq_number()
            out.append(SeqRange(lo, hi))
            if self.peek() != ord(","):
                return out
            self.i += 1

    def _seq_number(self) -> int | None:
        if self.peek() == ord("*"):
            self.i += 1
            return None
        return self.nz_number()

    def date(self) -> date:
        if self.peek() == ord('"'):
            text = self.quoted().decode("ascii", "replace")
        else:
            text = self.atom()
        try:
            day, mon, year = text.split("-")
            return date(int(year), MONTHS.index(mon.capitalize()) + 1, int(day))
        except (ValueError, IndexError):
            raise Bad(f"date invalide : {text}") from None

    def datetime_(self) -> datetime:
        text = self.quoted().decode("ascii", "replace")
        try:
            return datetime.strptime(text.strip(), "%d-%b-%Y %H:%M:%S %z")
        except ValueError:
            raise Bad(f"date-heure invalide : {text}") from None

    # --- FETCH ---
    def fetch_items(self) -> list[FetchItem]:
        if self.peek() == ord("("):
            return self.paren_list(self.fetch_item)
        save = self.i
        word = self.atom().upper()
        if word in MACROS:
            return [FetchItem(n) for n in MACROS[word]]
        self.i = save
        return [self.fetch_item()]

    def fetch_item(self) -> FetchItem:
        word = self.atom(stop=b"[").upper()
        if word in ("BODY", "BODY.PEEK", "BINARY", "BINARY.PEEK") and self.peek() == ord("["):
            section = self.section()
            partial = None
            if self.peek() == ord("<"):
                self.i += 1
                start = self.number()
                self.expect(b".")
                length = self.nz_number()
                self.expect(b">")
                partial = (start, length)
            return FetchItem("BINARY" if word.startswith("BINARY") else "BODY[]", section, word.endswith(".PEEK"),
                             partial)
        if word == "BINARY.SIZE" and self.peek() == ord("["):
            return FetchItem("BINARY.SIZE", self.section())
        if word not in SIMPLE_ITEMS:
            raise Bad(f"element FETCH inconnu : {word}")
        return FetchItem(word)

    def section(self) -> Section:
        self.expect(b"[")
        path: list[int] = []
        text = ""
        fields: tuple[str, ...] = ()
        while self.peek() is not None and 0x30 <= self.peek() <= 0x39:  # type: ignore[operator]
            path.append(self.nz_number())
            if self.peek() == ord("."):
                self.i += 1
                if self.peek() is not None and not (0x30 <= self.peek() <= 0x39):  # type: ignore[operator]
                    break
            else:
                break
        if self.peek() != ord("]"):
            text = self.atom().upper()
            if text not in ("HEADER", "TEXT", "MIME", "HEADER.FIELDS", "HEADER.FIELDS.NOT"):
                raise Bad(f"section inconnue : {text}")
            if text == "MIME" and not path:
                raise Bad("MIME demande un numero de partie")
            if text.startswith("HEADER.FIELDS"):
                self.sp()
                fields = tuple(self.paren_list(lambda: self.astring().upper()))
        self.expect(b"]")
        return Section(tuple(path), text, fields)

    # --- generic parenthesised parameters (SELECT, FETCH and STORE modifiers, LIST options) ---
    def any_value(self):
        c = self.peek()
        if c == ord("("):
            return self.paren_list(self.any_value)
        if c in (ord('"'), LITERAL_MARK):
            return self.string_bytes().decode("utf-8", "replace")
        return self.atom(b"*:,").upper() if c != ord("\\") else self.flag()
