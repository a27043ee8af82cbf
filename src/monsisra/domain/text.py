"""Text normalisation shared by search (both engines) and address generation."""

from __future__ import annotations

import re
import unicodedata

_SPACES = re.compile(r"\s+")
_LIGATURES = (("œ", "oe"), ("Œ", "OE"), ("æ", "ae"), ("Æ", "AE"), ("ß", "ss"))
# The combining marks of Latin letters (U+034F, the grapheme joiner, has no combining class);
# other combining marks are looked up one by one among the remaining non-ASCII characters.
_LATIN_MARKS = re.compile("[\u0300-\u034e\u0350-\u036f]+")
_NON_ASCII = re.compile(r"[^\x00-\x7f]")


def _drop_mark(found: re.Match) -> str:
    return "" if unicodedata.combining(found.group()) else found.group()


def fold(text: str) -> str:
    """Lower-case, accent-free copy of ``text`` (``"Évènement"`` → ``"evenement"``), one space
    between words. Runs on every message body indexed: each step is a C-speed pass."""
    if not text.isascii():
        for ligature, letters in _LIGATURES:
            text = text.replace(ligature, letters)
        text = unicodedata.normalize("NFKD", text)
        if not text.isascii():
            text = _LATIN_MARKS.sub("", text)
            if not text.isascii():
                text = _NON_ASCII.sub(_drop_mark, text)
    return " ".join(text.lower().split())


_WORD = re.compile(r"[0-9a-z]+")


def search_terms(query: str, limit: int = 12) -> list[str]:
    """Folded alphanumeric words of a user query, at most ``limit`` of them."""
    return _WORD.findall(fold(query))[:limit]


def preview(text: str, length: int = 140) -> str:
    """A one-line excerpt of a body for message lists."""
    flat = _SPACES.sub(" ", text).strip()
    return flat if len(flat) <= length else flat[: length - 1].rstrip() + "…"
