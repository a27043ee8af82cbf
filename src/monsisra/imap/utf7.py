"""Modified UTF-7 of IMAP mailbox names (RFC 3501 §5.1.3): « Envoyés » is ``Envoy&AOk-s``."""

from __future__ import annotations

import base64


def encode(name: str) -> bytes:
    out = bytearray()
    pending: list[str] = []

    def flush() -> None:
        if pending:
            b64 = base64.b64encode("".join(pending).encode("utf-16-be")).rstrip(b"=").replace(b"/", b",")
            out.extend(b"&" + b64 + b"-")
            pending.clear()

    for ch in name:
        if 0x20 <= ord(ch) <= 0x7E:
            flush()
            out.extend(b"&-" if ch == "&" else ch.encode())
        else:
            pending.append(ch)
    flush()
    return bytes(out)


def decode(raw: bytes) -> str:
    """The name a client sent; bytes that are not valid modified UTF-7 are taken as UTF-8."""
    out: list[str] = []
    i = 0
    try:
        while i < len(raw):
            c = raw[i:i + 1]
            if c != b"&":
                out.append(c.decode("ascii"))
                i += 1
                continue
            end = raw.index(b"-", i)
            chunk = raw[i + 1:end]
            if not chunk:
                out.append("&")
            else:
                b64 = chunk.replace(b",", b"/")
                out.append(base64.b64decode(b64 + b"=" * (-len(b64) % 4)).decode("utf-16-be"))
            i = end + 1
    except (ValueError, UnicodeDecodeError):
        return raw.decode("utf-8", "replace")
    return "".join(out)
