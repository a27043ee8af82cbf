"""Text normalisation shared by search (both engines) and address generation."""

from __future__ import annotations

import re
import unicodedata

_SPACES = re.compile(r"\s+")
_LIGATURES = str.maketrans({"œ": "oe", "Œ": "OE", "æ": "ae", "Æ": "AE", "ß": "ss"})


def fold(text: str) -> str:
    """Lower-case, accent-free copy of ``text`` (``"Évènement"`` → ``"evenement"``)."""
    text = text.translate(_LIGATURES)
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return _SPACES.sub(" ", stripped.lower()).strip()


_WORD = re.compile(r"[0-9a-z]+")


def search_terms(query: str, limit: int = 12) -> list[str]:
    """Folded alphanumeric words of a user query, at most ``limit`` of them."""
    return _WORD.findall(fold(query))[:limit]


def preview(text: str, length: int = 140) -> str:
    """A one-line excerpt of a body for message lists."""
    flat = _SPACES.sub(" ", text).strip()
    return flat if len(flat) <= length else flat[: length - 1].rstrip() + "…"
