"""The hash chain of the audit log: a canonical encoding of an entry and its SHA-256.

Each entry holds its position ``seq`` (1, 2, 3… with no gap), the hash of the entry before it
(``prev_hash``; :data:`GENESIS` for the first) and its own ``hash``, the SHA-256 of the canonical
encoding of every field that matters, ``prev_hash`` and ``seq`` included. Altering a field changes
its hash; removing or inserting an entry breaks the numbering or the link to the previous hash;
rewriting the whole tail consistently needs the head (kept apart, and printed by
``monsisra audit verify`` so that it can be written down elsewhere).

The encoding is JSON with sorted keys, no spaces, UTF-8, times as UTC ISO 8601 with
microseconds, text as stored (one line: :func:`domain.text.flatten_line`). Version 1.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from monsisra.domain.text import flatten_line

VERSION = 1
GENESIS = "0" * 64
FIELDS = ("seq", "prev_hash", "at", "account_id", "action", "object_type", "object_id", "patient_id", "mailbox_id",
          "client", "detail")
TEXT_FIELDS = ("action", "object_type", "object_id", "client")


def _time(value: datetime) -> str:
    aware = value if value.tzinfo else value.replace(tzinfo=UTC)
    return aware.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical(entry: Mapping[str, Any]) -> bytes:
    """The bytes hashed for one entry (a mapping with :data:`FIELDS`)."""
    data: dict[str, Any] = {"v": VERSION}
    for name in FIELDS:
        value = entry.get(name)
        if name == "at":
            value = _time(value)
        elif name in TEXT_FIELDS and isinstance(value, str):
            value = flatten_line(value)
        data[name] = value
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def entry_hash(entry: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical(entry)).hexdigest()


def link(entries: list[dict[str, Any]], head_seq: int, head_hash: str) -> tuple[int, str]:
    """Number and hash ``entries`` (in place) after the head; returns the new head."""
    seq, prev = head_seq, head_hash
    for entry in entries:
        seq += 1
        entry["seq"], entry["prev_hash"] = seq, prev
        entry["hash"] = prev = entry_hash(entry)
    return seq, prev
