"""Issue 11, platform items, through the real HTTP boundary on SQLite and PostgreSQL: a locked or
unreachable database (503), browser-facing error pages and French validation messages, file
names that lie, directory search fuzzing, oversized ids and cursors, keep-alive after a 500,
file modes, partial uploads, and no existence oracle on receipts and delivery routes."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import random
import re
import socket
import sqlite3
import stat
import subprocess
import sys
import time
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

import httpx
import pytest
import sqlalchemy as sa
from starlette.routing import Mount, Route

from monsisra.api.deps import MAX_ID
from monsisra.services import accounts, mailboxes
from monsisra.services.demo import minimal_pdf
from monsisra.store.models import Message
from tests.support import free_port, fresh_database, make_settings, start_server, unique

DOMAIN = "monsisra.localhost"
BROWSER = {"accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
UNAVAILABLE = "base de données momentanément indisponible, réessayez dans quelques secondes"
# Words of pydantic's and Starlette's English messages (quoted values are removed before the check).
ENGLISH = re.compile(r"\b(field|input|should|required|must|valid|string|integer|boolean|number|list|dictionary|"
                     r"object|characters?|items?|greater|less|than|equal|least|most|extra|permitted|decode|"
                     r"expecting|error|not|the|be|or|found|allowed|method|missing|parsing|unable|value)\b", re.I)


# --- helpers ------------------------------------------------------------------------------------


def box_of(client: httpx.Client, kind: str = "PER") -> int:
    return next(b["id"] for b in client.get("/api/v1/mailboxes").json() if b["kind"] == kind)


def send(client: httpx.Client, **body) -> dict:
    body.setdefault("from_mailbox", box_of(client))
    r = client.post("/api/v1/messages", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def problem_of(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    body = r.json()
    assert body["status"] == status and body["title"] and body["detail"]
    assert "Traceback" not in r.text
    return body


def french_page(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("text/html"), r.headers
    assert "content-security-policy" in r.headers
    assert '<html lang="fr">' in r.text and "Traceback" not in r.text
    return r.text


def no_english(text: str) -> None:
    unquoted = re.sub(r"'[^']*'", "", text)
    assert not ENGLISH.search(unquoted), text


@contextlib.contextmanager
def web_login(server, username: str, password: str = "demo") -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=30, follow_redirects=False) as client:
        r = client.post("/connexion", data={"username": username, "password": password})
        assert r.status_code == 303, r.text
        yield client


def csrf_of(html: str) -> str:
    match = re.search(r'<meta name="csrf-token" content="([0-9a-f]+)">', html)
    assert match
    return match.group(1)


def new_user(server, first: str = "Test") -> tuple[str, int, str]:
    """A fresh professional: (login, mailbox id, address); the password is ``secret-pass``."""
    username = unique("hp")
    _account, mailbox = server.call(accounts.create_account, server.core, accounts.NewAccount(
        username=username, password="secret-pass", first_name=first, last_name=username))
    return username, mailbox.id, mailbox.address


@pytest.fixture(scope="module")
def short_lock_server(backend, tmp_path_factory):
    """A server of its own whose statements wait half a second for a lock (default: 30 s)."""
    with fresh_database(backend, tmp_path_factory.mktemp(f"lockdb-{backend}")) as url:
        settings = make_settings(url, tmp_path_factory.mktemp(f"lockdata-{backend}"), smtp_enabled=False,
                                 run_workers=False, database_busy_timeout=0.5)
        running = start_server(settings)
        try:
            yield running
        finally:
            running.stop()


@contextlib.contextmanager
def database_locked(server, mailbox_id: int) -> Iterator[None]:
    """Another process's lock: the whole SQLite file (BEGIN EXCLUSIVE from a sqlite3 connection),
    or the mailbox row on PostgreSQL (SELECT … FOR UPDATE in another session)."""
    url = sa.make_url(server.settings.database_url)
    if url.get_backend_name() == "sqlite":
        conn = sqlite3.connect(url.database, isolation_level=None)
        conn.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            conn.execute("ROLLBACK")
            conn.close()
        return
    import asyncpg

    loop = asyncio.new_event_loop()
    conn = loop.run_until_complete(asyncpg.connect(user=url.username or "postgres", host=url.host or "127.0.0.1",
                                                   port=url.port or 5432, database=url.database,
                                                   password=url.password))
    try:
        loop.run_until_complete(conn.execute("BEGIN"))
        loop.run_until_complete(conn.execute("SELECT id FROM mailboxes WHERE id = $1 FOR UPDATE", mailbox_id))
        yield
    finally:
        loop.run_until_complete(conn.execute("ROLLBACK"))
        loop.run_until_complete(conn.close())
        loop.close()


# --- 5: a database locked for a while ---------------------------------------------------------------


def test_locked_database_answers_503_with_retry_after_and_writes_nothing(short_lock_server):
    server = short_lock_server
    sender, sender_box, _ = new_user(server, "Expéditrice")
    reader, reader_box, reader_address = new_user(server, "Lectrice")
    alice = server.login(sender, "secret-pass")
    bob = server.login(reader, "secret-pass")
    first = send(alice, to=[reader_address], subject="Avant le verrou", body="x")
    subject = f"Pendant le verrou {unique()}"
    with web_login(server, reader, "secret-pass") as web:
        csrf = csrf_of(web.get("/boite").text)
        with database_locked(server, reader_box):
            # API: a state change and a send, both waiting on the lock, then told to retry.
            for r in (bob.patch(f"/api/v1/mailboxes/{reader_box}/messages/{first['id']}", json={"favorite": True}),
                      alice.post("/api/v1/messages", json={"from_mailbox": sender_box, "to": [reader_address],
                                                           "subject": subject, "body": "y"})):
                body = problem_of(r, 503)
                assert body["detail"] == UNAVAILABLE and int(r.headers["retry-after"]) > 0
            # A page: the same meaning, in French HTML.
            page = web.post(f"/message/{reader_box}/{first['id']}/etat", data={"favorite": "1", "csrf": csrf},
                            headers=BROWSER)
            text = french_page(page, 503)
            assert "momentanément indisponible" in text and int(page.headers["retry-after"]) > 0
    # Nothing half-written; once the lock is gone, the same calls succeed.
    state = bob.get(f"/api/v1/mailboxes/{reader_box}/messages/{first['id']}").json()["state"]
    assert state["favorite"] is False

    async def count(core):
        async with core.read() as s:
            return await s.scalar(sa.select(sa.func.count()).select_from(Message).where(Message.subject == subject))

    assert server.call(count, server.core) == 0
    assert bob.patch(f"/api/v1/mailboxes/{reader_box}/messages/{first['id']}", json={"favorite": True}).json()[
        "favorite"] is True
    send(alice, to=[reader_address], subject=subject, body="y")
    assert server.call(count, server.core) == 1


def test_unreachable_database_answers_503_page_and_problem(tmp_path):
    """PostgreSQL refusing connections (nothing listens on the port): 503, never a 500."""
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/absente"
    server = start_server(make_settings(url, tmp_path / "data", smtp_enabled=False, run_workers=False))
    try:
        with server.client("un-jeton") as api:
            r = api.get("/api/v1/mailboxes")
            assert problem_of(r, 503)["detail"] == UNAVAILABLE and r.headers["retry-after"]
        with httpx.Client(base_url=server.base_url, timeout=30) as browser:
            text = french_page(browser.get("/connexion", headers=BROWSER), 503)
            assert "Réessayez dans quelques secondes" in text or "réessayez dans quelques secondes" in text
    finally:
        server.stop()


# --- 14: browser-facing errors are pages; validation messages in French -----------------------------


def test_unknown_urls_are_french_pages_for_browsers_and_problems_for_the_api(server):
    with httpx.Client(base_url=server.base_url, timeout=30) as anon:
        for path in ("/nope", "/boite/inconnue/1", f"/{unique()}.html", "/static/absent.css", "/docs/x"):
            text = french_page(anon.get(path, headers=BROWSER), 404)
            assert "Page introuvable" in text and 'href="/boite"' in text
        # Without an Accept header (curl), a page address is still answered as a page.
        assert "Page introuvable" in french_page(anon.get("/nope"), 404)
        text = french_page(anon.post("/boite", headers=BROWSER), 405)
        assert "Méthode non autorisée" in text
        for path in ("/api/v1/nope", "/fhir/Nope", "/api/v1/mailboxes/1/nope", "/api"):
            no_english(problem_of(anon.get(path, headers=BROWSER), 404)["detail"])
        body = problem_of(anon.delete("/api/v1/mailboxes", headers=BROWSER), 405)
        no_english(body["detail"])
        # A client asking for JSON on a page address gets a problem.
        problem_of(anon.get("/nope", headers={"accept": "application/json"}), 404)


def test_a_missing_or_foreign_message_says_message_introuvable(server):
    alice = server.login("alice.martin")
    claire_user, claire_box, _ = new_user(server, "Claire")
    foreign = send(alice, to=[f"bruno.petit@{DOMAIN}"], subject="Pas pour Claire", body="secret")
    alice_box = box_of(alice)
    with web_login(server, claire_user, "secret-pass") as web:
        answers = []
        for mb, mid in ((claire_box, foreign["id"]), (claire_box, MAX_ID), (alice_box, foreign["id"])):
            full = french_page(web.get(f"/message/{mb}/{mid}", params={"plein": "1"}, headers=BROWSER), 404)
            assert "Message introuvable" in full and "Pas pour Claire" not in full and "<main" in full
            pane = web.get(f"/message/{mb}/{mid}", headers={"HX-Request": "true"})
            assert pane.status_code == 404 and "Message introuvable" in pane.text and "<html" not in pane.text
            answers.append(pane.text)
        assert len(set(answers)) == 1  # nothing tells a foreign message from a missing one
        inbox = web.get("/boite", params={"bal": claire_box, "ouvrir": foreign["id"]}, headers=BROWSER)
        assert inbox.status_code == 200 and "Message introuvable" in inbox.text and "secret" not in inbox.text
        # Service errors met by a page are pages too (a foreign mailbox's list).
        text = french_page(web.get("/boite/liste", params={"bal": alice_box}, headers=BROWSER), 404)
        assert "introuvable" in text


INVALID_REQUESTS: list[tuple[str, str, dict]] = [
    # (method, path, httpx keyword arguments); {box} is the caller's mailbox
    ("POST", "/api/v1/messages", {"json": {}}),
    ("POST", "/api/v1/messages", {"json": {"from_mailbox": "abc"}}),
    ("POST", "/api/v1/messages", {"json": {"from_mailbox": 1.5}}),
    ("POST", "/api/v1/messages", {"json": {"from_mailbox": 0}}),
    ("POST", "/api/v1/messages", {"json": {"from_mailbox": 2**40}}),
    ("POST", "/api/v1/messages", {"json": {"from_mailbox": 1, "to": "x@y"}}),
    ("POST", "/api/v1/messages", {"json": {"from_mailbox": 1, "to": [1, None]}}),
    ("POST", "/api/v1/messages", {"json": {"from_mailbox": 1, "category": "spam"}}),
    ("POST", "/api/v1/messages", {"json": {"from_mailbox": 1, "draft": "peut-être"}}),
    ("POST", "/api/v1/messages", {"json": {"from_mailbox": 1, "patient": "x"}}),
    ("POST", "/api/v1/messages", {"json": {"from_mailbox": 1, "patient": {}}}),
    ("POST", "/api/v1/messages", {"json": {"from_mailbox": 1, "attachments": {"a": 1}}}),
    ("POST", "/api/v1/messages", {"json": {"from_mailbox": 1, "subject": ["a"], "body": {"b": 1}}}),
    ("POST", "/api/v1/messages", {"json": []}),
    ("POST", "/api/v1/messages", {"json": None}),
    ("POST", "/api/v1/messages", {"content": b"{pas du json", "headers": {"content-type": "application/json"}}),
    ("POST", "/api/v1/messages", {"content": b'{"from_mailbox": 1,}', "headers": {"content-type": "application/json"}}),
    ("PATCH", "/api/v1/me", {"json": {"appear_absent": "bof"}}),
    ("PATCH", "/api/v1/me", {"json": {"inbox_categories": "letter"}}),
    ("PATCH", "/api/v1/mailboxes/{box}/messages/1", {"json": {"read": [], "favorite": "2"}}),
    ("PATCH", "/api/v1/mailboxes/abc/messages/1", {"json": {}}),
    ("GET", "/api/v1/mailboxes/{box}/messages", {"params": {"view": "corbeille", "limit": "abc"}}),
    ("GET", "/api/v1/mailboxes/{box}/messages", {"params": {"limit": 0, "category": "x"}}),
    ("GET", "/api/v1/mailboxes/{box}/messages", {"params": {"limit": 10_000}}),
    ("GET", "/api/v1/mailboxes/{box}/messages", {"params": {"q": "x" * 300}}),
    ("GET", "/api/v1/mailboxes/{box}/messages", {"params": {"cursor": "A" * 500}}),
    ("GET", "/api/v1/mailboxes/0/counts", {}),
    ("GET", "/api/v1/mailboxes/-5/counts", {}),
    ("GET", "/api/v1/mailboxes/1e3/counts", {}),
    ("GET", "/api/v1/mailboxes/{box}/threads/deux", {}),
    ("GET", "/api/v1/messages/trois/receipts", {}),
    ("GET", "/api/v1/messages/0/delivery", {}),
    ("GET", "/api/v1/attachments/abc", {"params": {"disposition": "ailleurs"}}),
    ("GET", "/api/v1/attachments/" + "a" * 100, {}),
    ("POST", "/api/v1/attachments", {"data": {"pas": "de fichier"}}),
    ("POST", "/api/v1/auth/token", {"data": {}}),
    ("GET", "/api/v1/directory/search", {"params": {"kind": "magiciens", "limit": 0, "offset": -1}}),
    ("GET", "/api/v1/directory/search", {"params": {"limit": "vingt", "offset": 5000}}),
    ("GET", "/api/v1/directory/search", {"params": {"q": "x" * 1500}}),
    ("GET", "/api/v1/directory/communes", {"params": {"limit": 500}}),
    ("PATCH", "/api/v1/directory/me", {"json": {"inconnu": 1}}),
    ("PATCH", "/api/v1/directory/me", {"json": {"expert": {}}}),
    ("PATCH", "/api/v1/directory/me", {"json": {"expert": {"description": 5, "specialties": "x"}}}),
    ("PATCH", "/api/v1/directory/me", {"json": {"modalities": {"visites": "souvent"}}}),
    ("PATCH", "/api/v1/directory/me", {"json": {"modalities": ["a"]}}),
    ("POST", "/api/v1/admin/trust", {"json": {"domains": []}}),
    ("POST", "/api/v1/admin/trust", {"json": {"domains": ["a.fr"] * 1001}}),
    ("POST", "/api/v1/admin/trust", {"json": {"domains": "a.fr", "note": 3}}),
    ("GET", "/api/v1/admin/outbox", {"params": {"status": "perdu", "limit": 0}}),
    ("POST", "/api/v1/mailboxes/{box}/messages/1/mdn", {"json": {"send": "oui-non"}}),
]


@pytest.mark.parametrize("method,path,kwargs", INVALID_REQUESTS,
                         ids=[f"{m} {p} {i}" for i, (m, p, _k) in enumerate(INVALID_REQUESTS)])
def test_validation_errors_are_entirely_french(server, method, path, kwargs):
    admin = server.login("admin")
    alice = server.login("alice.martin")
    client = admin if "/admin/" in path else alice
    url = path.replace("{box}", str(box_of(alice)))
    r = client.request(method, url, **kwargs)
    body = problem_of(r, 422)
    assert body["title"] == "Données invalides"
    assert "Field required" not in r.text and "Input should" not in r.text and "Value error" not in r.text
    no_english(body["detail"])
    assert body["errors"], body
    for error in body["errors"]:
        assert error["loc"] and error["msg"], error
        no_english(error["msg"])


# --- 15: /docs from our own files (the Chromium side is in test_hardening_platform_browser.py) -------


def test_docs_page_is_ours_under_the_strict_csp(server):
    with httpx.Client(base_url=server.base_url, timeout=30) as anon:
        r = anon.get("/docs")
        assert r.status_code == 200 and r.headers["content-security-policy"].startswith("default-src 'self'")
        assert "script-src 'self';" in r.headers["content-security-policy"]
        scripts = re.findall(r"<script([^>]*)>(.*?)</script>", r.text, re.S)
        assert scripts and all('src="/static/' in attrs and not body.strip() for attrs, body in scripts)
        assert "http://" not in r.text and "https://" not in r.text and "cdn" not in r.text.lower()
        for src in re.findall(r'(?:src|href)="(/static/[^"?]+)', r.text):
            assert anon.get(src).status_code == 200, src
        assert anon.get("/redoc", headers=BROWSER).status_code == 404


# --- 16: file names that lie -------------------------------------------------------------------------

FORMAT_CHARS = ["\u202e", "\u202d", "\u202a", "\u202b", "\u202c", "\u2066", "\u2067", "\u2068", "\u2069",
                "\u200e", "\u200f", "\u061c", "\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad",
                "\u180e", "\x00", "\x1b", "\x7f", "\x85", "\u2028", "\u2029"]


def served_names(client: httpx.Client, name: str) -> tuple[str, str, str]:
    """Upload ``name``; returns (name in the JSON, Content-Disposition filename=, filename*=)."""
    r = client.post("/api/v1/attachments", files={"file": (name, minimal_pdf(["nom"]), "application/pdf")})
    assert r.status_code == 201, r.text
    att = r.json()
    got = client.get(f"/api/v1/attachments/{att['id']}")
    assert got.status_code == 200
    disposition = got.headers["content-disposition"]
    plain = re.search(r'filename="([^"]*)"', disposition).group(1)
    star = unquote(re.search(r"filename\*=UTF-8''(\S+)", disposition).group(1))
    return att["filename"], plain, star


def test_bidi_and_invisible_characters_are_removed_from_file_names(server):
    alice = server.login("alice.martin")
    rng = random.Random(16)
    names = [f"photo{c}gpj.exe" for c in FORMAT_CHARS]
    names += [f"{rng.choice(['scan', 'CR', 'résultat'])}{c1}{rng.choice(['fdp', 'gnp', 'gpj'])}{c2}.{ext}"
              for c1, c2, ext in ((rng.choice(FORMAT_CHARS), rng.choice(FORMAT_CHARS), rng.choice(['exe', 'js', 'scr']))
                                  for _ in range(12))]
    for name in names:
        for shown in served_names(alice, name):
            assert not any(unicodedata.category(ch) in ("Cf", "Cc", "Zl", "Zp") for ch in shown), (name, shown)
            # The extension shown at the end is the real one, the last of the original name.
            assert shown.endswith("." + name.rsplit(".", 1)[1]), (name, shown)
        assert served_names(alice, name)[0].startswith(name[:2])


@pytest.mark.parametrize("reserved", ["CON", "prn", "Aux", "nul", "COM1", "com9", "LPT1", "lpt9", "CONIN$"])
def test_windows_reserved_names_are_made_harmless(server, reserved):
    alice = server.login("alice.martin")
    for name in (reserved, f"{reserved}.txt", f"{reserved.lower()}.tar.gz", f"{reserved} .pdf", f"{reserved}.",
                 f"{reserved}\u202e.pdf"):
        for shown in served_names(alice, name):
            stem = shown.split(".", 1)[0].rstrip(" ").upper()
            assert stem not in {"CON", "PRN", "AUX", "NUL", "CONIN$"} and not re.fullmatch(r"(COM|LPT)[0-9]", stem), \
                (name, shown)
            assert shown.startswith("_") and not shown.endswith((".", " ")), (name, shown)
    # Names that only begin like a device stay as they are.
    assert served_names(alice, "console.pdf")[0] == "console.pdf"
    assert served_names(alice, "COM10.pdf")[0] == "COM10.pdf"


def test_trailing_dots_spaces_and_dot_lookalikes(server):
    alice = server.login("alice.martin")
    assert served_names(alice, "compte rendu.pdf. . ..")[0] == "compte rendu.pdf"
    name, plain, star = served_names(alice, "ordonnance.exe\u2024pdf")  # ONE DOT LEADER poses as a dot
    assert name == star == "ordonnance.exe_pdf" and plain == "ordonnance.exe_pdf"
    long_name = "r" * 400 + "\u202e.pdf"
    shown = served_names(alice, long_name)[0]
    assert len(shown) <= 200 and shown.endswith(".pdf")


# --- 17: directory search never answers 500 ----------------------------------------------------------


def fuzz_queries(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    pieces = ["'", '"', " ", "  ", "*", ":", "&", "|", "!", "(", ")", "-", "+", "^", "~", "\\", "/", ";", ",", ".",
              "AND", "OR", "NOT", "NEAR", "NEAR/2", "<->", ":*", "&&", "||", "!!", "''", '""', "%", "_", "[", "]",
              "{", "}", "\u202e", "\u00a0", "\u3000", "é", "Ç", "ß", "ﬁ", "😀", "中文", "\x00", "\t", "\n",
              "petit", "clermont", "cardio", "dr", "saint-étienne", "d'ascq", "l'", "0", "63", "2A", "x" * 70,
              "é" * 300, "a" * 900]
    out = ["'", " ", "", "''", '"', "*", "(", ")", "AND", "NEAR", ":", "&", "|", "!", "-", "\u202e", "😀"]
    while len(out) < n:
        out.append("".join(rng.choice(pieces) for _ in range(rng.randint(1, 6)))[:1000])
    return out


def test_directory_search_survives_hundreds_of_odd_queries(server):
    alice = server.login("alice.martin")
    normal = alice.get("/api/v1/directory/search", params={"q": "petit"}).json()
    assert normal["professionals"]["total"] >= 1
    failures = []
    for i, query in enumerate(fuzz_queries(320, seed=17)):
        params = {"q": query} if i % 3 == 0 else {"where": query} if i % 3 == 1 else {"q": "petit", "where": query,
                                                                                      "near": query}
        r = alice.get("/api/v1/directory/search", params=params)
        if r.status_code != 200:
            failures.append((params, r.status_code, r.text[:200]))
        else:
            body = r.json()
            assert {"professionals", "services"} <= set(body)
    assert not failures, failures[:5]
    # Punctuation only: an empty answer; punctuation around a name: the name's answer.
    empty = alice.get("/api/v1/directory/search", params={"q": "' \" * ( )"}).json()
    assert empty["professionals"]["items"] == [] and empty["services"]["items"] == []
    same = alice.get("/api/v1/directory/search", params={"q": "'petit'!"}).json()
    assert same["professionals"]["total"] == normal["professionals"]["total"]


# --- 17: huge integers never reach SQL ------------------------------------------------------------

HUGE = [str(MAX_ID), "2147483648", "9223372036854775807", "9223372036854775808", "18446744073709551616", "1" + "0" * 40,
        "-1", "0", "-9223372036854775809"]


def _fill(path: str, value: str) -> str:
    return re.sub(r"\{[^}]+\}", value, path)


def test_every_api_route_bounds_its_ids_offsets_and_limits(server):
    alice = server.login("alice.martin")
    admin = server.login("admin")
    spec = alice.get("/openapi.json").json()
    checked = 0
    for path, item in spec["paths"].items():
        for method, op in item.items():
            params = op.get("parameters", [])
            integer_query = [p["name"] for p in params if p["in"] == "query" and
                             (p.get("schema", {}).get("type") == "integer" or
                              any(s.get("type") == "integer" for s in p.get("schema", {}).get("anyOf", [])))]
            has_path = "{" in path
            if not has_path and not integer_query:
                continue
            for value in HUGE:
                for client in (alice, admin):
                    url = _fill(path, value)
                    query = {name: value for name in integer_query}
                    r = client.request(method.upper(), url, params=query, json={} if method in ("post", "patch")
                                       else None)
                    assert r.status_code < 500, (method, url, query, r.text)
                    assert "Traceback" not in r.text
                    checked += 1
    assert checked > 100


def test_huge_cursors_are_refused_in_french(server):
    alice = server.login("alice.martin")
    box = box_of(alice)
    for raw in (b"d9223372036854775808", b"d" + b"9" * 30, b"d-1", b"d", b"x12", b"d12\xff"):
        cursor = base64.urlsafe_b64encode(raw).decode().rstrip("=")
        for q in (None, "compte"):
            r = alice.get(f"/api/v1/mailboxes/{box}/messages", params={"cursor": cursor, **({"q": q} if q else {})})
            assert problem_of(r, 422)["detail"] == "curseur de pagination invalide"
    # The largest accepted value is a real cursor: it pages, on either engine.
    top = base64.urlsafe_b64encode(b"d9223372036854775807").decode().rstrip("=")
    for q in (None, "compte"):
        r = alice.get(f"/api/v1/mailboxes/{box}/messages", params={"cursor": top, **({"q": q} if q else {})})
        assert r.status_code == 200, r.text


def flat_routes(routes, prefix: str = "") -> Iterator[tuple[str, set[str]]]:
    """(path, methods) of every HTTP route, through FastAPI's lazily included routers."""
    for route in routes:
        if isinstance(route, Route):
            yield prefix + route.path, set(route.methods or {"GET"})
        elif hasattr(route, "original_router"):
            yield from flat_routes(route.original_router.routes, prefix + route.include_context.prefix)
        elif hasattr(route, "routes") and not isinstance(route, Mount):
            yield from flat_routes(route.routes, prefix + getattr(route, "path", ""))


def test_every_web_route_bounds_its_ids(server):
    """Pages are not in the OpenAPI document: their routes are read from the application."""
    page_routes = [(path, methods) for path, methods in flat_routes(server.app.routes)
                   if "{" in path and not path.startswith(("/api/", "/fhir/", "/static"))]
    assert len(page_routes) >= 4, page_routes
    with web_login(server, "alice.martin") as web:
        csrf = csrf_of(web.get("/boite").text)
        for path, methods in page_routes:
            for method in sorted(methods - {"HEAD"}):
                for value in HUGE:
                    r = web.request(method, _fill(path, value), headers={**BROWSER, "X-CSRF-Token": csrf})
                    assert r.status_code < 500, (method, path, value, r.text[:300])
                    if r.status_code == 404:
                        assert "introuvable" in r.text
        for params in ({"bal": "9" * 18}, {"bal": "9" * 30}, {"ouvrir": "9" * 25, "ouvrir_bal": "9" * 25},
                       {"n": "9" * 25}, {"apres": "A" * 60}):
            for path in ("/boite", "/boite/liste", "/boite/compteurs"):
                r = web.get(path, params=params, headers=BROWSER)
                assert r.status_code < 500, (path, params, r.text[:300])
        for param in ("repondre", "transferer", "brouillon"):
            r = web.get("/ecrire", params={param: f"{'9' * 25}:{'9' * 25}"}, headers=BROWSER)
            assert r.status_code < 500
            r = web.get("/ecrire", params={param: f"1:{MAX_ID}"}, headers=BROWSER)
            assert r.status_code in (200, 404)
        r = web.post("/ecrire", data={"csrf": csrf, "from_mailbox": "9" * 30, "to": f"bruno.petit@{DOMAIN}",
                                      "draft_id": "9" * 30, "in_reply_to": "9" * 30, "subject": "s"},
                     headers=BROWSER)
        assert r.status_code < 500


# --- 17: a 500 keeps the keep-alive connection ----------------------------------------------------


def _read_response(sock: socket.socket, buffer: bytes) -> tuple[int, dict[str, str], bytes, bytes]:
    """One HTTP/1.1 response (Content-Length framed) from ``sock``; returns the rest of the buffer."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection"
        buffer += chunk
    head, _, rest = buffer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers["content-length"])
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection"
        rest += chunk
    return status, headers, rest[:length], rest[length:]


def test_an_unexpected_error_keeps_the_connection_usable(server, monkeypatch, caplog):
    token = server.login("alice.martin").headers["authorization"]
    marker = f"panne-{unique()}"

    async def broken(*_args, **_kwargs):
        raise RuntimeError(marker)

    monkeypatch.setattr(mailboxes, "list_for", broken)
    with web_login(server, "alice.martin") as web:
        cookie = "; ".join(f"{k}={v}" for k, v in web.cookies.items())
    host = server.base_url.removeprefix("http://")
    address = ("127.0.0.1", server.settings.http_port)
    with caplog.at_level(logging.INFO), socket.create_connection(address, timeout=30) as sock:
        buffer = b""
        requests = [
            (f"GET /api/v1/mailboxes HTTP/1.1\r\nHost: {host}\r\nAuthorization: {token}\r\n\r\n", 500, "problem"),
            (f"GET /parametres HTTP/1.1\r\nHost: {host}\r\nAccept: text/html\r\nCookie: {cookie}\r\n\r\n", 200, "html"),
            (f"GET /boite HTTP/1.1\r\nHost: {host}\r\nAccept: text/html\r\nCookie: {cookie}\r\n\r\n", 500, "html"),
            (f"GET /api/v1/me HTTP/1.1\r\nHost: {host}\r\nAuthorization: {token}\r\n\r\n", 500, "problem"),
        ]
        for raw, status, kind in requests:
            sock.sendall(raw.encode())
            got, headers, body, buffer = _read_response(sock, buffer)
            assert got == status, (raw, body[:300])
            assert headers.get("connection", "").lower() != "close", headers
            if status == 500 and kind == "problem":
                problem = json.loads(body)
                assert problem["status"] == 500 and marker not in body.decode() and "Traceback" not in body.decode()
            if kind == "html":
                assert headers["content-type"].startswith("text/html")
            if status == 500 and kind == "html":
                assert "Erreur interne" in body.decode()
        monkeypatch.undo()
        sock.sendall(f"GET /api/v1/mailboxes HTTP/1.1\r\nHost: {host}\r\nAuthorization: {token}\r\n\r\n".encode())
        got, _headers, body, buffer = _read_response(sock, buffer)
        assert got == 200 and json.loads(body)
    logged = [r for r in caplog.records if r.exc_info and marker in str(r.exc_info[1])]
    assert len(logged) == 3, [r.getMessage() for r in logged]  # once per failed request, not twice
    assert all(token.split()[-1] not in r.getMessage() for r in caplog.records)


# --- 17: file modes -----------------------------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_database_keys_and_data_dir_are_owner_only_after_start_and_write(tmp_path):
    """An install left readable by others (an older version, a 022 umask) is taken back at
    start; what is created after is owner-only."""
    data = tmp_path / "var"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)
    db = data / "monsisra.db"
    with fresh_database("sqlite", data) as url:
        for path in (db, data / "monsisra.db-wal"):
            path.touch()
            os.chmod(path, 0o644)
        (data / "secret_key").write_text("clé-ancienne-" + "x" * 40)
        os.chmod(data / "secret_key", 0o644)
        settings = make_settings(url, data, smtp_enabled=False, run_workers=False, secret_key=None)
        server = start_server(settings)
        try:
            username, _box, address = new_user(server)
            client = server.login(username, "secret-pass")
            pdf = ("cr.pdf", minimal_pdf(["modes"]), "application/pdf")
            r = client.post("/api/v1/attachments", files={"file": pdf})
            assert r.status_code == 201
            send(client, to=[address], subject="écrit", body="x")
            from monsisra.gateway.tls import certificate_paths

            _cert, key = certificate_paths(settings)
            assert mode(data) == 0o700
            for path in (db, data / "monsisra.db-wal", data / "monsisra.db-shm", data / "secret_key", key):
                assert path.exists() and mode(path) & 0o077 == 0, (path, oct(mode(path)))
            blob = settings.blob_dir / r.json()["sha256"][:2] / r.json()["sha256"][2:4] / r.json()["sha256"]
            assert mode(blob) & 0o077 == 0
        finally:
            server.stop()


def test_the_cli_creates_owner_only_files(tmp_path):
    env = {**os.environ, "MONSISRA_DATA_DIR": str(tmp_path / "var"),
           "MONSISRA_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'var' / 'monsisra.db'}"}
    out = subprocess.run([sys.executable, "-c", "import os, sys; os.umask(0o022); from monsisra.cli import app; "
                          "app(['db', 'upgrade'])"], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert mode(tmp_path / "var") == 0o700
    for path in (tmp_path / "var").iterdir():
        assert mode(path) & 0o077 == 0, (path, oct(mode(path)))


# --- 17: partial uploads left by a crash ----------------------------------------------------------------


def _partials(tmp: Path) -> tuple[list[Path], list[Path]]:
    tmp.mkdir(parents=True, exist_ok=True)
    old, fresh = [], []
    for i in range(3):
        p = tmp / f"up-ancien{i}-{unique()}"
        p.write_bytes(b"partiel" * 100)
        os.utime(p, (time.time() - 3 * 3600, time.time() - (3600 + 60 + i * 600)))
        old.append(p)
        q = tmp / f"up-recent{i}-{unique()}"
        q.write_bytes(b"en cours")
        os.utime(q, (time.time(), time.time() - i * 600))
        fresh.append(q)
    return old, fresh


def test_hourly_maintenance_sweeps_old_partial_uploads(server):
    from monsisra.services.maintenance import purge

    old, fresh = _partials(server.settings.blob_dir / "tmp")
    report = server.call(purge, server.core)
    assert report.partial_uploads >= len(old)
    assert not any(p.exists() for p in old) and all(p.exists() for p in fresh)
    for p in fresh:
        p.unlink()


def test_start_sweeps_old_partial_uploads(tmp_path):
    data = tmp_path / "data"
    old, fresh = _partials(data / "blobs" / "tmp")
    with fresh_database("sqlite", tmp_path) as url:
        server = start_server(make_settings(url, data, smtp_enabled=False, run_workers=False))
        try:
            assert not any(p.exists() for p in old) and all(p.exists() for p in fresh)
        finally:
            server.stop()


# --- 17: no oracle between someone else's message and no message -----------------------------------------


def test_receipts_delivery_and_neighbours_do_not_tell_foreign_from_missing(server):
    alice = server.login("alice.martin")
    outsider_name, outsider_box, _ = new_user(server, "Curieux")
    outsider = server.login(outsider_name, "secret-pass")
    upload = ("cr.pdf", minimal_pdf(["oracle"]), "application/pdf")
    pdf = alice.post("/api/v1/attachments", files={"file": upload}).json()
    sent = send(alice, to=[f"bruno.petit@{DOMAIN}"], subject="Confidentiel",
                body="x", attachments=[pdf["id"]])
    alice_box = box_of(alice)
    missing_id = MAX_ID
    mine, theirs = f"/api/v1/mailboxes/{outsider_box}", f"/api/v1/mailboxes/{alice_box}"
    nobody = f"/api/v1/mailboxes/{missing_id}"
    pairs = [
        (f"/api/v1/messages/{sent['id']}/receipts", f"/api/v1/messages/{missing_id}/receipts"),
        (f"/api/v1/messages/{sent['id']}/delivery", f"/api/v1/messages/{missing_id}/delivery"),
        (f"/api/v1/attachments/{pdf['id']}", "/api/v1/attachments/" + "0" * 32),
        (f"{mine}/messages/{sent['id']}", f"{mine}/messages/{missing_id}"),
        (f"{mine}/messages/{sent['id']}/mdn", f"{mine}/messages/{missing_id}/mdn"),
        (f"{theirs}/messages/{sent['id']}", f"{nobody}/messages/{sent['id']}"),
        (f"{theirs}/counts", f"{nobody}/counts"),
        (f"{theirs}/threads/{sent['id']}", f"{nobody}/threads/{sent['id']}"),
    ]
    for existing, absent in pairs:
        a, b = outsider.get(existing), outsider.get(absent)
        assert a.status_code == b.status_code == 404, (existing, a.text, b.text)
        assert a.json()["detail"] == b.json()["detail"] and a.json()["title"] == b.json()["title"], (a.text, b.text)
    for path in (f"/api/v1/messages/{sent['id']}/receipts", f"/api/v1/messages/{sent['id']}/delivery"):
        assert outsider.get(path).json()["detail"] == "message introuvable"
        assert alice.get(path).status_code == 200
    patch = (outsider.patch(f"/api/v1/mailboxes/{outsider_box}/messages/{sent['id']}", json={"read": True}),
             outsider.patch(f"/api/v1/mailboxes/{outsider_box}/messages/{missing_id}", json={"read": True}))
    assert patch[0].status_code == patch[1].status_code == 404 and patch[0].json() == patch[1].json()
    thread = outsider.get(f"/api/v1/mailboxes/{outsider_box}/threads/{sent['id']}")
    assert thread.status_code == 200 and thread.json() == {"items": []}
