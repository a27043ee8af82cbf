"""Text normalisation shared by search (both engines) and address generation."""

from __future__ import annotations

import functools
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


# A token of SQLite's FTS5 ``unicode61`` tokenizer is a run of letters and digits; everything
# else separates tokens. ``search_text`` is already folded (lower-case, accent-free).
_ALNUM = r"[^\W_]"


@functools.lru_cache(maxsize=512)
def _word_tests(query: str) -> tuple[tuple[str, re.Pattern[str]], ...]:
    tests = []
    for word in query.split():
        prefix = word.endswith("*")
        word = word.rstrip("*")
        end = "" if prefix else f"(?!{_ALNUM})"
        tests.append((word, re.compile(f"(?<!{_ALNUM}){re.escape(word)}{end}")))
    return tuple(tests)


def words_match(text: str | None, query: str) -> bool:
    """Whether folded ``text`` holds every word of ``query`` as FTS5 would match it: ``word*``
    is a token starting with ``word``, a bare ``word`` a whole token. The per-row test of the
    windowed mailbox search on SQLite (registered as the SQL function ``monsisra_words``)."""
    if not text:
        return False
    return all(word in text and pattern.search(text) for word, pattern in _word_tests(query))


def preview(text: str, length: int = 140) -> str:
    """A one-line excerpt of a body for message lists."""
    flat = _SPACES.sub(" ", text).strip()
    return flat if len(flat) <= length else flat[: length - 1].rstrip() + "…"


# --- the one rule for text that enters (DESIGN §6: bad input gets a clear error) -------------
#
# Multi-line text (bodies, descriptions) keeps tab and line breaks; every other C0/C1 control
# character is dropped, and line breaks are normalised to "\n". Single-line text (subjects, names,
# logins, card fields) may hold no control character and no line or paragraph separator at all
# (U+0085, U+2028, U+2029 included): typed by a user it is refused, received from elsewhere (SMTP)
# it is flattened to spaces.

_DROPPED = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x84\x86-\x9f]")
_BREAKS = re.compile("\r\n?|[\x85\u2028\u2029]")
_NOT_ONE_LINE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


class TextRefused(ValueError):
    """A single-line value holds a control character or a line break (French message)."""


def clean_multiline(text: str) -> str:
    """Multi-line text as stored: "\\n" line breaks, tabs kept, other controls removed."""
    if _NOT_ONE_LINE.search(text) is None:
        return text
    return _DROPPED.sub("", _BREAKS.sub("\n", text))


def flatten_line(text: str) -> str:
    """Received single-line text (a header, a name): every control or break becomes one space."""
    if _NOT_ONE_LINE.search(text) is None:
        return text
    return " ".join(_NOT_ONE_LINE.sub(" ", text).split())


def check_line(text: str, label: str) -> str:
    """Typed single-line text: tabs become spaces, any other control or line break is refused."""
    text = text.replace("\t", " ")
    found = _NOT_ONE_LINE.search(text)
    if found is not None:
        raise TextRefused(f"{label} : caractère interdit (U+{ord(found.group()):04X}) ; "
                          "une seule ligne, sans caractère de contrôle")
    return text


def is_one_line(text: str) -> bool:
    return _NOT_ONE_LINE.search(text) is None


def decoded_words(text: str) -> str:
    """``text`` as a mail reader shows it, RFC 2047 encoded words (``=?utf-8?q?…?=``) decoded:
    a value that is one line only until decoded must be refused as a subject or a name."""
    if "=?" not in text:
        return text
    from email.header import decode_header, make_header

    try:
        return str(make_header(decode_header(text)))
    except (ValueError, LookupError, UnicodeError):
        return text
