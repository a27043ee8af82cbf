"""SEARCH keys (RFC 3501 §6.4.4, MODSEQ of RFC 7162): parsed into a small tree, then evaluated
over the selected folder's messages; text keys look into the stored text of each message."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date

from monsisra.domain.text import fold
from monsisra.imap.grammar import Bad, Parser, in_set
from monsisra.services.mail_access import Item

Node = tuple
_FLAG_KEYS = {
    "SEEN": ("read", True), "UNSEEN": ("read", False), "FLAGGED": ("favorite", True),
    "UNFLAGGED": ("favorite", False), "DELETED": ("deleted", True), "UNDELETED": ("deleted", False),
    "DRAFT": ("draft", True), "UNDRAFT": ("draft", False), "ANSWERED": ("never", True),
    "UNANSWERED": ("never", False), "NEW": ("new", True), "RECENT": ("never", True), "OLD": ("never", False),
}
_TEXT_KEYS = {"FROM": "from", "SUBJECT": "subject", "BODY": "body", "TEXT": "text", "TO": "text", "CC": "text",
              "BCC": "text"}
_DATE_KEYS = {"SINCE", "BEFORE", "ON", "SENTSINCE", "SENTBEFORE", "SENTON"}


def parse(p: Parser) -> Node:
    """The keys up to the end of the command, ANDed."""
    keys = []
    if p.s[p.i:p.i + 8].upper() == b"CHARSET ":
        p.i += 8
        charset = p.astring().upper()
        if charset not in ("UTF-8", "US-ASCII"):
            raise Bad("[BADCHARSET (UTF-8 US-ASCII)] jeu de caracteres non pris en charge")
        p.sp()
    while True:
        keys.append(_key(p))
        if p.at_end() or p.peek() == ord(")"):
            return ("and", keys)
        p.sp()


def _key(p: Parser) -> Node:
    c = p.peek()
    if c == ord("("):
        p.i += 1
        inner = parse(p)
        p.expect(b")")
        return inner
    if c is not None and (0x30 <= c <= 0x39 or c == ord("*")):
        return ("seq", p.sequence_set())
    word = p.atom().upper()
    if word == "ALL":
        return ("all",)
    if word in _FLAG_KEYS:
        return ("flag", *_FLAG_KEYS[word])
    if word in ("KEYWORD", "UNKEYWORD"):
        p.sp()
        kw = p.flag()
        return ("flag", "todo" if kw.lower() == "$todo" else "never", word == "KEYWORD")
    if word == "UID":
        p.sp()
        return ("uid", p.sequence_set())
    if word == "NOT":
        p.sp()
        return ("not", _key(p))
    if word == "OR":
        p.sp()
        a = _key(p)
        p.sp()
        return ("or", a, _key(p))
    if word in _DATE_KEYS:
        p.sp()
        return ("date", word.removeprefix("SENT"), p.date())
    if word in _TEXT_KEYS:
        p.sp()
        return ("text", _TEXT_KEYS[word], fold(p.astring()))
    if word == "HEADER":
        p.sp()
        p.astring()
        p.sp()
        return ("text", "text", fold(p.astring()))
    if word in ("LARGER", "SMALLER"):
        p.sp()
        return ("size", word, p.number())
    if word == "MODSEQ":
        p.sp()
        if p.peek() == ord('"'):  # entry name and type: only the value matters here
            p.quoted()
            p.sp()
            p.atom()
            p.sp()
        return ("modseq", p.number())
    raise Bad(f"critere de recherche inconnu : {word}")


def needs(node: Node, what: str) -> bool:
    if node[0] == what:
        return True
    if node[0] == "and":
        return any(needs(n, what) for n in node[1])
    if node[0] in ("or", "not"):
        return any(needs(n, what) for n in node[1:] if isinstance(n, tuple))
    return False


@dataclass
class Context:
    items: list[Item]
    deleted: set[int]
    texts: dict[int, dict[str, str]] = field(default_factory=dict)
    sizes: dict[int, int] = field(default_factory=dict)


def evaluate(node: Node, ctx: Context) -> list[int]:
    """Sequence numbers (1-based) of the messages matching."""
    largest_seq = len(ctx.items)
    largest_uid = ctx.items[-1].uid if ctx.items else 0
    test = _compile(node, ctx, largest_seq, largest_uid)
    return [i + 1 for i, item in enumerate(ctx.items) if test(i + 1, item)]


def _compile(node: Node, ctx: Context, largest_seq: int, largest_uid: int) -> Callable[[int, Item], bool]:
    kind = node[0]
    if kind == "and":
        tests = [_compile(n, ctx, largest_seq, largest_uid) for n in node[1]]
        return lambda s, it: all(t(s, it) for t in tests)
    if kind == "or":
        a, b = (_compile(n, ctx, largest_seq, largest_uid) for n in node[1:])
        return lambda s, it: a(s, it) or b(s, it)
    if kind == "not":
        a = _compile(node[1], ctx, largest_seq, largest_uid)
        return lambda s, it: not a(s, it)
    if kind == "all":
        return lambda s, it: True
    if kind == "seq":
        return lambda s, it: in_set(s, node[1], largest_seq)
    if kind == "uid":
        return lambda s, it: in_set(it.uid, node[1], largest_uid)
    if kind == "flag":
        _, name, want = node
        if name == "deleted":
            return lambda s, it: (it.uid in ctx.deleted) == want
        if name == "draft":
            return lambda s, it: (it.role == "draft") == want
        if name == "new":
            return lambda s, it: not it.read
        if name == "never":
            return lambda s, it: not want
        return lambda s, it: bool(getattr(it, name)) == want
    if kind == "date":
        _, op, day = node

        def on(s: int, it: Item) -> bool:
            d = (it.created_at if it.created_at.tzinfo else it.created_at.replace(tzinfo=UTC)).date()
            return d >= day if op == "SINCE" else d < day if op == "BEFORE" else d == day
        return on
    if kind == "text":
        _, where, needle = node
        return lambda s, it: needle in fold(ctx.texts.get(it.message_id, {}).get(where, ""))
    if kind == "size":
        _, op, n = node
        return lambda s, it: (ctx.sizes.get(it.message_id, 0) > n) if op == "LARGER" \
            else (ctx.sizes.get(it.message_id, 0) < n)
    if kind == "modseq":
        return lambda s, it: it.modseq >= node[1]
    raise Bad("critere de recherche inconnu")


__all__ = ["Context", "date", "evaluate", "needs", "parse"]
