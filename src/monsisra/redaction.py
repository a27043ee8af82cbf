"""No secret in any log line: a logging filter that masks tokens, passwords and cookies.

Uvicorn prints request lines with their query string (``/api/v1/events?access_token=…``), and
any message or traceback may quote a URL, a header or a form. :func:`redact` masks the values
of sensitive query parameters, form fields, JSON keys, ``Authorization`` and cookie headers, bare
bearer tokens and SMTP ``AUTH`` credentials; a parameter name is recognised however it is percent-encoded
(``access%5Ftoken``), since the server decodes it before using it. :func:`install` puts the
filter on every logger and handler that could print one (uvicorn's and ours); ``monsisra
serve`` and the application's startup both call it, so that it holds whoever configured logging.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import unquote_plus

MASK = "***"
SENSITIVE = frozenset({
    "access_token", "token", "code", "state", "password", "passwd", "pwd", "otp", "id_token", "refresh_token",
    "authorization", "cookie", "set-cookie", "client_secret", "secret", "csrf", "session", "monsisra_session",
    "monsisra_device", "current", "new", "api_key", "apikey",
    # Identity (issue 15): the login's second step, PKCE, logout and hint tokens, trusted browsers.
    "ticket", "code_verifier", "logout_token", "id_token_hint", "monsisra_trusted", "monsisra_psc",
    "recovery_codes", "secret_hash",
})
# name=value: at the start, or after a separator of a query, form, cookie or message.
_PAIR = re.compile(r"(?P<pre>^|[?&;\s\"'(,{\[])(?P<name>[^\s?&;\"'#<>=()]{1,100}?)(?P<eq>=|%3[dD])"
                   r"(?P<value>[^&;\s\"'#<>]*)")
_JSON = re.compile(r"(?P<pre>[\"'](?P<name>[^\"'\s]{1,100})[\"']\s*:\s*)(?P<q>[\"'])(?P<value>[^\"']*)(?P=q)")
_HEADER = re.compile(r"(?i)(?P<pre>\b(?:proxy-)?authorization\b[\"']?\s*[:=,]?\s*(?:(?-i:b)?[\"'])?\s*"
                     r"(?:(?:bearer|basic|token|digest|negotiate)\s+)?)(?P<value>[^\s\"',;)\]}]+)")
_COOKIE = re.compile(r"(?i)(?P<pre>\b(?:set-)?cookie\b[\"']?\s*[:=,]\s*(?:(?-i:b)?[\"'])?)(?P<value>[^\"'\r\n]+)")
_SMTP_AUTH = re.compile(r"(?i)(?P<pre>\bAUTH\s+(?:PLAIN|LOGIN|XOAUTH2|OAUTHBEARER|CRAM-MD5)\s+)(?P<value>[^\s\"']+)")
_BEARER = re.compile(r"(?i)(?P<pre>\bbearer\s+)(?P<value>[A-Za-z0-9\-._~+/%]+=*)")


def _is_sensitive(name: str) -> bool:
    for _ in range(3):  # %255F → %5F → _: however many times it was encoded
        decoded = unquote_plus(name)
        if decoded == name:
            break
        name = decoded
    name = name.strip().lower()
    return name in SENSITIVE or name.endswith(("_token", "token", "password", "secret"))


def _mask_pair(m: re.Match[str]) -> str:
    if not m.group("value") or not _is_sensitive(m.group("name")):
        return m.group(0)
    return f"{m.group('pre')}{m.group('name')}{m.group('eq')}{MASK}"


def _mask_json(m: re.Match[str]) -> str:
    if not _is_sensitive(m.group("name")):
        return m.group(0)
    return f"{m.group('pre')}{m.group('q')}{MASK}{m.group('q')}"


def _mask_value(m: re.Match[str]) -> str:
    return m.group(0) if m.group("value") == MASK else f"{m.group('pre')}{MASK}"


# Each pattern above needs one of these to match: ``=`` (or ``%3D``) for a pair, a quote for a
# JSON key, or one of the words (case-insensitive; « authorization » holds « auth »). A line with
# none of them (most lines: one per inbound message, ~70 µs of six regexes twice) shows no secret.
_NEEDS = re.compile(r"(?i)[=\"']|%3d|auth|cookie|bearer")


def redact(text: str) -> str:
    """``text`` with every secret value it shows replaced by ``***``."""
    if not text or _NEEDS.search(text) is None:
        return text
    return _redact_all(text)


def _redact_all(text: str) -> str:
    """:func:`redact` without its quick look (every pattern tried)."""
    text = _COOKIE.sub(_mask_value, text)
    text = _HEADER.sub(_mask_value, text)
    text = _BEARER.sub(_mask_value, text)
    text = _SMTP_AUTH.sub(_mask_value, text)
    text = _JSON.sub(_mask_json, text)
    return _PAIR.sub(_mask_pair, text)


class RedactSecrets(logging.Filter):
    """Rewrites a record whose message shows a secret; never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            self._scrub(record)
        except Exception:  # a log line must never take the request down with it
            record.msg, record.args = "(ligne de journal masquée : elle n'a pas pu être vérifiée)", ()
        return True

    @staticmethod
    def _scrub(record: logging.LogRecord) -> None:
        if record.exc_info and not record.exc_text:
            # Formatters reuse exc_text once set: the traceback is cleaned once, here.
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        message = record.getMessage()
        if redact(message) == message:
            return
        # Clean the arguments one by one first: uvicorn's access formatter reads them by position.
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: redact(v) if isinstance(v, str) else v for k, v in record.args.items()}
        try:
            message = record.getMessage()
        except Exception:
            message = None
        if message is None or redact(message) != message:
            # The secret sat in something else (a dict, bytes…): keep only the cleaned text.
            record.msg, record.args = redact(message or str(record.msg)), ()
            record.__dict__.pop("color_message", None)
            return
        color = record.__dict__.get("color_message")
        if isinstance(color, str):
            record.__dict__["color_message"] = redact(color)


_FILTER = RedactSecrets()
LOGGERS = ("", "uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi", "monsisra", "websockets", "httpx",
           "sqlalchemy", "mail.log", "asyncio")


def install() -> None:
    """Put the filter on the usual loggers and on every handler configured so far (idempotent)."""
    loggers = [logging.getLogger(name) for name in LOGGERS]
    loggers += [lg for lg in logging.root.manager.loggerDict.values() if isinstance(lg, logging.Logger)]
    for logger in loggers:
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
        for handler in logger.handlers:
            if _FILTER not in handler.filters:
                handler.addFilter(_FILTER)
