"""Issue 11, sessions and transport: sessions that really end (live sockets included, on every
process), no secret in any log line, login throttling that holds, HTTPS with a Secure cookie,
a cap on live sockets per account, and a logout that always logs out.

Everything goes through the real boundary: HTTP and WebSocket against the in-process server,
and real ``monsisra serve`` processes where the process matters (HTTPS, logs, Redis).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import ssl
import subprocess
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from argon2 import PasswordHasher
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from monsisra.services import accounts
from monsisra.store.models import Account, AuditEvent
from tests.identity_support import EXE, ServeProcess
from tests.support import POSTGRES_URL, REDIS_URL, free_port, fresh_database, make_settings, start_server

DOMAIN = "monsisra.localhost"


# --- helpers --------------------------------------------------------------------------------


def ws_url(base: str) -> str:
    return base.replace("http://", "ws://").replace("https://", "wss://") + "/api/v1/events"


def recv_event(ws, wanted: str, timeout: float = 15.0) -> dict:
    """The next event of type ``wanted`` (others skipped), within a bounded wait."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no {wanted!r} event within {timeout}s")
        event = json.loads(ws.recv(timeout=remaining))
        if event["type"] == wanted:
            return event


def recv_subject(ws, subject: str, timeout: float = 15.0) -> dict:
    """The ``message.new`` event of the message titled ``subject`` (others skipped), bounded."""
    deadline = time.monotonic() + timeout
    while True:
        event = recv_event(ws, "message.new", timeout=max(deadline - time.monotonic(), 0.01))
        if event.get("subject") == subject:
            return event


def closed_without(ws, subject: str, timeout: float = 15.0) -> tuple[int, str]:
    """Read until the server closes the socket (bounded); no ``message.new`` with ``subject``
    may arrive first. Returns the close code and reason."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"socket still open after {timeout}s")
        try:
            event = json.loads(ws.recv(timeout=remaining))
        except ConnectionClosed as closed:
            assert closed.rcvd is not None, "closed without a close frame"
            return closed.rcvd.code, closed.rcvd.reason
        except TimeoutError:
            continue
        assert not (event["type"] == "message.new" and event.get("subject") == subject), \
            f"the ended session still received {subject!r}"


def token_login(base_url: str, username: str, password: str, **headers: str) -> str:
    r = httpx.post(f"{base_url}/api/v1/auth/token", data={"username": username, "password": password},
                   headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["access_token"]


def send(base_url: str, token: str, to: str, subject: str) -> dict:
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as c:
        box = next(b["id"] for b in c.get("/api/v1/mailboxes").json() if b["kind"] == "PER")
        r = c.post("/api/v1/messages", json={"from_mailbox": box, "to": [to], "subject": subject, "body": "x"})
        assert r.status_code == 201, r.text
        return r.json()


@contextlib.contextmanager
def web_session(base_url: str, username: str, password: str, **headers: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=30, follow_redirects=False, headers=headers) as web:
        r = web.post("/connexion", data={"username": username, "password": password})
        assert r.status_code == 303, r.text
        yield web


def csrf_of(html: str) -> str:
    match = re.search(r'<meta name="csrf-token" content="([0-9a-f]+)">', html)
    assert match, "no CSRF token in the page"
    return match.group(1)


def cookie_socket(base_url: str, web: httpx.Client):
    return connect(ws_url(base_url), additional_headers={
        "Cookie": f"monsisra_session={web.cookies['monsisra_session']}", "Origin": base_url})


def bearer_socket(base_url: str, token: str):
    return connect(ws_url(base_url), additional_headers={"Authorization": f"Bearer {token}"})


def audit_count(server, action: str, username: str) -> int:
    async def count() -> int:
        async with server.core.read() as s:
            rows = (await s.execute(sa.select(AuditEvent.detail).where(AuditEvent.action == action))).scalars()
            return sum(1 for d in rows if d and d.get("username") == username)

    return server.call(count)


@pytest.fixture(scope="module")
def tight_server(server, database_url, tmp_path_factory, backend):
    """A second server on the same database, with small limits, trusting 127.0.0.1 as a proxy
    (so that tests can speak from several client addresses through X-Forwarded-For)."""
    settings = make_settings(database_url, tmp_path_factory.mktemp(f"tight-{backend}"), smtp_enabled=False,
                             run_workers=False, trusted_proxies="127.0.0.1", ws_max_per_account=3,
                             ws_recheck_seconds=0.5, account_max_failures=8, ip_max_failures=30)
    running = start_server(settings)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def short_ttl_server(server, database_url, tmp_path_factory, backend):
    settings = make_settings(database_url, tmp_path_factory.mktemp(f"ttl-{backend}"), smtp_enabled=False,
                             run_workers=False, token_ttl_seconds=3)
    running = start_server(settings)
    yield running
    running.stop()


# --- 7. sessions that really end --------------------------------------------------------------


def test_web_logout_closes_that_sessions_socket_only(server, make_user):
    user, address, _ = make_user("Déconnexion")
    sender = server.login("alice.martin")
    other_token = token_login(server.base_url, user, "secret-pass")
    with web_session(server.base_url, user, "secret-pass") as web, cookie_socket(server.base_url, web) as ws, \
            bearer_socket(server.base_url, other_token) as other:
        recv_event(ws, "hello")
        recv_event(other, "hello")
        csrf = csrf_of(web.get("/boite").text)
        assert web.post("/deconnexion", data={"csrf": csrf}).headers["location"] == "/connexion"
        subject = f"Après déconnexion {uuid.uuid4().hex[:6]}"
        send(server.base_url, sender.headers["Authorization"].split()[1], address, subject)
        code, reason = closed_without(ws, subject)
        assert code == 4401 and "déconnexion" in reason
        # The same account's other session is untouched and does get the message.
        assert recv_subject(other, subject)


def test_api_revoke_closes_the_tokens_socket(server, make_user):
    user, address, _ = make_user("Révocation")
    revoked, kept = token_login(server.base_url, user, "secret-pass"), token_login(server.base_url, user, "secret-pass")
    alice = server.login("alice.martin").headers["Authorization"].split()[1]
    with connect(ws_url(server.base_url) + f"?access_token={revoked}") as ws, \
            bearer_socket(server.base_url, kept) as other:
        recv_event(ws, "hello")
        recv_event(other, "hello")
        r = httpx.post(f"{server.base_url}/api/v1/auth/revoke", headers={"Authorization": f"Bearer {revoked}"})
        assert r.status_code == 204
        subject = f"Après révocation {uuid.uuid4().hex[:6]}"
        send(server.base_url, alice, address, subject)
        code, reason = closed_without(ws, subject)
        assert code == 4401 and "révoqué" in reason
        assert recv_subject(other, subject)
    assert httpx.get(f"{server.base_url}/api/v1/me", headers={"Authorization": f"Bearer {revoked}"}).status_code == 401


@pytest.mark.parametrize("ending", ["password", "deactivation"])
def test_password_change_and_deactivation_close_every_socket(server, make_user, ending):
    user, address, _ = make_user("Fin")
    first, second = token_login(server.base_url, user, "secret-pass"), token_login(server.base_url, user, "secret-pass")
    alice = server.login("alice.martin").headers["Authorization"].split()[1]
    with web_session(server.base_url, user, "secret-pass") as web, cookie_socket(server.base_url, web) as web_ws, \
            bearer_socket(server.base_url, first) as ws1, bearer_socket(server.base_url, second) as ws2:
        for ws in (web_ws, ws1, ws2):
            recv_event(ws, "hello")
        if ending == "password":
            server.call(accounts.set_password, server.core, user, "tout-nouveau")
            expected = "mot de passe"
        else:
            server.call(accounts.set_active, server.core, user, False)
            expected = "désactivé"
        subject = f"Après {ending} {uuid.uuid4().hex[:6]}"
        send(server.base_url, alice, address, subject)
        for ws in (web_ws, ws1, ws2):
            code, reason = closed_without(ws, subject)
            assert code == 4401 and expected in reason
        assert web.get("/boite").status_code == 303  # the page session ended with them
    for token in (first, second):
        r = httpx.get(f"{server.base_url}/api/v1/me", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 401


def test_socket_closes_when_its_token_expires(short_ttl_server, make_user):
    srv = short_ttl_server
    user, _address, _ = make_user("Expiration")
    token = token_login(srv.base_url, user, "secret-pass")  # lives token_ttl_seconds = 3 s
    with bearer_socket(srv.base_url, token) as ws:
        recv_event(ws, "hello")
        code, reason = closed_without(ws, "-", timeout=30)
    assert code == 4401 and "expirée" in reason
    assert httpx.get(f"{srv.base_url}/api/v1/me", headers={"Authorization": f"Bearer {token}"}).status_code == 401


def test_an_end_the_bus_never_carried_is_caught_by_the_periodic_check(tight_server, make_user, tmp_path):
    """Deactivated by another tool whose events reach no server (the command line, without
    Redis): the socket's own periodic look at its token closes it, and the account is refused."""
    user, _address, _ = make_user("Vérification")
    token = token_login(tight_server.base_url, user, "secret-pass")
    with bearer_socket(tight_server.base_url, token) as ws:
        recv_event(ws, "hello")
        env = {k: v for k, v in os.environ.items() if k != "MONSISRA_REDIS_URL"}
        env.update(MONSISRA_DATABASE_URL=tight_server.settings.database_url, MONSISRA_DATA_DIR=str(tmp_path))
        _cli(env, "account", "deactivate", user)
        code, reason = closed_without(ws, "-", timeout=30)
    assert code == 4401 and "session terminée" in reason
    r = httpx.post(f"{tight_server.base_url}/api/v1/auth/token", data={"username": user, "password": "secret-pass"})
    assert r.status_code == 401


# --- 17. live sockets per account, logout without the CSRF token -----------------------------


def test_live_sockets_per_account_are_capped(tight_server, make_user):
    user, _address, _ = make_user("Onglets")
    other, _, _ = make_user("Autre")
    token = token_login(tight_server.base_url, user, "secret-pass")
    other_token = token_login(tight_server.base_url, other, "secret-pass")
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(bearer_socket(tight_server.base_url, token)) for _ in range(3)]
        for ws in sockets:
            recv_event(ws, "hello")
        with bearer_socket(tight_server.base_url, token) as extra:
            code, reason = closed_without(extra, "-")
        assert code == 4429 and "trop de connexions" in reason and "3 au plus" in reason
        with bearer_socket(tight_server.base_url, other_token) as ws:  # the cap is per account
            recv_event(ws, "hello")
        sockets[0].close()
        # The closed socket frees its slot (the server notices the close a moment later).
        deadline = time.monotonic() + 15
        while True:
            with bearer_socket(tight_server.base_url, token) as again:
                try:
                    recv_event(again, "hello", timeout=5)
                    break
                except ConnectionClosed:
                    assert time.monotonic() < deadline, "the closed socket never freed its slot"
                    time.sleep(0.2)


@pytest.mark.parametrize("csrf", ["absent", "stale"])
def test_logout_without_the_csrf_token_still_ends_the_session(server, make_user, csrf):
    user, _address, _ = make_user("Page")
    with web_session(server.base_url, user, "secret-pass") as web:
        cookie = web.cookies["monsisra_session"]
        with cookie_socket(server.base_url, web) as ws:
            recv_event(ws, "hello")
            data = {} if csrf == "absent" else {"csrf": "0" * 40}
            r = web.post("/deconnexion", data=data)
            assert r.status_code == 303 and r.headers["location"] == "/connexion"
            code, _reason = closed_without(ws, "-")
            assert code == 4401
    with httpx.Client(base_url=server.base_url, cookies={"monsisra_session": cookie}, timeout=30) as replay:
        assert replay.get("/boite", follow_redirects=False).status_code == 303
        assert replay.get("/api/v1/me").status_code == 401


# --- 9. login throttling ------------------------------------------------------------------------


async def _guess(client: httpx.AsyncClient, username: str, address: str | None = None) -> httpx.Response:
    headers = {"X-Forwarded-For": address} if address else {}
    return await client.post("/api/v1/auth/token", data={"username": username, "password": "pas-le-bon"},
                             headers=headers)


def test_parallel_guesses_are_counted_before_any_is_checked(tight_server, make_user):
    srv = tight_server
    user, _address, _ = make_user("Cible")
    limit = srv.settings.login_max_failures

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=srv.base_url, timeout=120,
                                     limits=httpx.Limits(max_connections=200)) as client:
            return await asyncio.gather(*(_guess(client, user, "198.51.100.66") for _ in range(100)))

    responses = asyncio.run(burst())
    checked = [r for r in responses if r.status_code == 401]
    refused = [r for r in responses if r.status_code == 429]
    assert len(checked) + len(refused) == 100
    assert 1 <= len(checked) <= limit
    assert audit_count(srv, "login.failure", user) == len(checked)  # argon2 ran that often, no more
    problem = refused[0].json()
    assert problem["status"] == 429
    assert "trop de tentatives" in problem["detail"] and "réessayez dans" in problem["detail"]
    assert int(refused[0].headers["retry-after"]) > 0
    # Even the right password is not checked from there now.
    r = httpx.post(f"{srv.base_url}/api/v1/auth/token", data={"username": user, "password": "secret-pass"},
                   headers={"X-Forwarded-For": "198.51.100.66"})
    assert r.status_code == 429


def test_guesses_are_checked_off_the_event_loop(tight_server, make_user):
    """While a burst of 100 guesses is under way, another client is answered: several of her
    requests, one after the other, complete while a password of the burst is being checked."""
    srv = tight_server
    user, _address, _ = make_user("Patiente")
    reader, _, _ = make_user("Lectrice")
    token = token_login(srv.base_url, reader, "secret-pass", **{"X-Forwarded-For": "192.0.2.201"})
    guesser = "198.51.100.77"
    with httpx.Client(base_url=srv.base_url, timeout=60, headers={"X-Forwarded-For": guesser}) as c:
        for _ in range(srv.settings.login_max_failures - 1):
            assert c.post("/api/v1/auth/token", data={"username": user, "password": "non"}).status_code == 401

    async def strong_hash() -> None:
        # Now the account's hash takes argon2 several seconds to check (stronger parameters):
        # on the event loop, that check would stop every other request for as long.
        strong = PasswordHasher(time_cost=60).hash("secret-pass")
        async with srv.core.db.write() as s:
            await s.execute(sa.update(Account).where(Account.username == user).values(password_hash=strong))

    srv.call(strong_hash)
    order: list[str] = []

    async def scenario() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=srv.base_url, timeout=300,
                                     limits=httpx.Limits(max_connections=200)) as client:
            async def guess() -> httpx.Response:
                r = await _guess(client, user, guesser)
                order.append(f"guess {r.status_code}")
                return r

            # One guess of the burst is left under the limit: it is checked; the 99 others are refused.
            guesses = [asyncio.create_task(guess()) for _ in range(100)]
            while order.count("guess 429") < 99:
                pending = [g for g in guesses if not g.done()]
                assert pending, f"the burst ended with {order}"
                await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            while not all(g.done() for g in guesses):  # the checked guess is still running
                me = await client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
                assert me.status_code == 200 and me.json()["username"] == reader
                order.append("me")
            return await asyncio.gather(*guesses)

    responses = asyncio.run(scenario())
    assert sorted(r.status_code for r in responses) == [401] + [429] * 99
    answered_meanwhile = order[:order.index("guess 401")].count("me")
    # Checked on the event loop, at most the one request already sent would come back before the
    # guess's answer; several mean the loop kept serving (how many depends on the machine's load).
    assert answered_meanwhile >= 3, f"only {answered_meanwhile} requests answered during the password check"


def test_a_guesser_cannot_lock_the_owner_out(tight_server, make_user):
    srv = tight_server
    user, _address, _ = make_user("Propriétaire")
    owner_addr, attacker_addr = "192.0.2.10", "203.0.113.5"
    # The owner's browser logged in before: it holds a device cookie for this login.
    owner = httpx.Client(base_url=srv.base_url, timeout=30, follow_redirects=False)
    with owner:
        r = owner.post("/connexion", data={"username": user, "password": "secret-pass"},
                       headers={"X-Forwarded-For": owner_addr})
        assert r.status_code == 303 and "monsisra_device" in owner.cookies
        owner.post("/deconnexion")
        assert "monsisra_session" not in owner.cookies and "monsisra_device" in owner.cookies

        with httpx.Client(base_url=srv.base_url, timeout=30, headers={"X-Forwarded-For": attacker_addr}) as attacker:
            for _ in range(srv.settings.login_max_failures):
                r = attacker.post("/connexion", data={"username": user, "password": "devine"})
                assert r.status_code == 400 and "incorrect" in r.text
            r = attacker.post("/connexion", data={"username": user, "password": "devine"})
            assert r.status_code == 429 and "réessayez dans" in r.text and int(r.headers["retry-after"]) > 0
            r = attacker.post("/api/v1/auth/token", data={"username": user, "password": "devine"})
            assert r.status_code == 429 and "réessayez dans" in r.json()["detail"]
            # From the attacker's address the right password is refused too, without the device cookie.
            assert attacker.post("/connexion", data={"username": user, "password": "secret-pass"}).status_code == 429

        # The owner's browser logs in, from her address and even from the attacker's.
        for addr in (owner_addr, attacker_addr):
            r = owner.post("/connexion", data={"username": user, "password": "secret-pass"},
                           headers={"X-Forwarded-For": addr})
            assert r.status_code == 303, r.text
            owner.post("/deconnexion")
        # From another address, without the cookie, she logs in as well (the limit is per address).
        token_login(srv.base_url, user, "secret-pass", **{"X-Forwarded-For": "192.0.2.11"})

        # Guesses spread over many addresses reach the account-wide limit of browsers it does not know…
        refused = None
        for i in range(40):
            r = httpx.post(f"{srv.base_url}/connexion", data={"username": user, "password": "devine"},
                           headers={"X-Forwarded-For": f"198.18.{i // 200}.{i % 200 + 1}"})
            if r.status_code == 429:
                refused = i
                break
            assert r.status_code == 400
        assert refused is not None and refused <= srv.settings.account_max_failures
        fresh = httpx.post(f"{srv.base_url}/api/v1/auth/token", data={"username": user, "password": "secret-pass"},
                           headers={"X-Forwarded-For": "192.0.2.99"})
        assert fresh.status_code == 429
        # …but not the owner's own browser.
        r = owner.post("/connexion", data={"username": user, "password": "secret-pass"},
                       headers={"X-Forwarded-For": "192.0.2.12"})
        assert r.status_code == 303, r.text


def test_a_device_cookie_has_its_own_failure_limit(tight_server, make_user):
    user, _address, _ = make_user("Appareil")
    with httpx.Client(base_url=tight_server.base_url, timeout=30, follow_redirects=False,
                      headers={"X-Forwarded-For": "192.0.2.50"}) as browser:
        assert browser.post("/connexion", data={"username": user, "password": "secret-pass"}).status_code == 303
        browser.post("/deconnexion")
        for _ in range(tight_server.settings.login_max_failures):
            assert browser.post("/connexion", data={"username": user, "password": "oubli"}).status_code == 400
        assert browser.post("/connexion", data={"username": user, "password": "oubli"}).status_code == 429
        # A forged device cookie is no device cookie: the attempt counts as an unknown browser's.
        browser.cookies.set("monsisra_device", "forged.value.sig")
        r = browser.post("/connexion", data={"username": user, "password": "secret-pass"})
        assert r.status_code == 303


# --- 17. HTTPS, Secure cookie, HSTS, trusted proxies --------------------------------------------


def _secure_cookie(response: httpx.Response, name: str) -> bool | None:
    for value in response.headers.get_list("set-cookie"):
        if value.startswith(f"{name}="):
            return "secure" in [p.strip().lower() for p in value.split(";")]
    return None


def test_forwarded_proto_is_believed_only_from_trusted_proxies(server, tight_server, make_user):
    user, _address, _ = make_user("Mandataire")
    headers = {"X-Forwarded-Proto": "https"}
    r = httpx.post(f"{server.base_url}/connexion", data={"username": user, "password": "secret-pass"},
                   headers=headers)
    assert r.status_code == 303
    assert _secure_cookie(r, "monsisra_session") is False and "strict-transport-security" not in r.headers
    r = httpx.post(f"{tight_server.base_url}/connexion", data={"username": user, "password": "secret-pass"},
                   headers=headers)
    assert r.status_code == 303
    assert _secure_cookie(r, "monsisra_session") is True and _secure_cookie(r, "monsisra_device") is True
    assert r.headers["strict-transport-security"].startswith("max-age=")


# --- real `monsisra serve` processes: HTTPS and the logs ----------------------------------------

LOG_PASSWORD = "Mot-De-Passe-Secret-4242"
WRONG_PASSWORD = "Mauvais-Essai-9137"


def _env(url: str, data_dir: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "MONSISRA_DATABASE_URL": url, "MONSISRA_DATA_DIR": str(data_dir),
            "MONSISRA_SECRET_KEY": "serve-test-secret-" + "x" * 32, "MONSISRA_SMTP_ENABLED": "false",
            "MONSISRA_RUN_WORKERS": "false", "MONSISRA_SMTP_PORT": str(free_port()),
            "MONSISRA_HTTP_PORT": str(free_port()), "MONSISRA_HTTPS_PORT": str(free_port()), **extra}


def _cli(env: dict[str, str], *args: str) -> None:
    r = subprocess.run([*EXE, *args], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One real ``monsisra serve`` (SQLite), its stdout and stderr captured in a file."""
    tmp = tmp_path_factory.mktemp("served")
    with fresh_database("sqlite", tmp) as url:
        env = _env(url, tmp / "data")
        for name in ("lea.secret", "paul.secret"):
            _cli(env, "account", "create", name, "--first-name", name.split(".")[0].title(), "--last-name",
                 "Secret", "--password", LOG_PASSWORD)
        proc = ServeProcess(env, tmp / "serve.log")
        try:
            yield proc
        finally:
            proc.stop()


def _trust(served: ServeProcess) -> ssl.SSLContext:
    """Trust exactly the development certificate serve generated into its data dir."""
    ctx = ssl.create_default_context(cafile=str(Path(served.env["MONSISRA_DATA_DIR"]) / "tls" / "dev-cert.pem"))
    return ctx


def test_serve_speaks_https_with_a_secure_cookie_and_hsts(served):
    ctx = _trust(served)
    with httpx.Client(base_url=served.https, verify=ctx, timeout=30, follow_redirects=False) as web:
        page = web.get("/connexion")
        assert page.status_code == 200 and page.headers["strict-transport-security"].startswith("max-age=")
        r = web.post("/connexion", data={"username": "lea.secret", "password": LOG_PASSWORD})
        assert r.status_code == 303
        assert _secure_cookie(r, "monsisra_session") is True and _secure_cookie(r, "monsisra_device") is True
        assert web.get("/boite").status_code == 200
    token = httpx.post(f"{served.https}/api/v1/auth/token", data={"username": "lea.secret", "password": LOG_PASSWORD},
                       verify=ctx).json()["access_token"]
    with connect(ws_url(served.https), ssl=ctx, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        assert recv_event(ws, "hello")["type"] == "hello"
    # TLS 1.2 at least: the server refuses an older protocol.
    with socket.create_connection(("127.0.0.1", served.https_port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
    def client(max_version: ssl.TLSVersion) -> ssl.SSLContext:
        c = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        c.check_hostname, c.verify_mode = False, ssl.CERT_NONE
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            c.set_ciphers("DEFAULT:@SECLEVEL=0")
            c.minimum_version = ssl.TLSVersion.TLSv1
            c.maximum_version = max_version
        return c

    with socket.create_connection(("127.0.0.1", served.https_port), timeout=10) as raw, \
            client(ssl.TLSVersion.TLSv1_2).wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        assert tls.version() == "TLSv1.2"
    # The same client, held to TLS 1.1, offers it and the server ends the handshake.
    with pytest.raises(ssl.SSLError, match=r"(?i)protocol version|EOF"), \
            socket.create_connection(("127.0.0.1", served.https_port), timeout=10) as raw, \
            client(ssl.TLSVersion.TLSv1_1).wrap_socket(raw, server_hostname="127.0.0.1"):
        pass
    # Plain HTTP stays as it was (make run), and a client cannot pretend it came over HTTPS.
    r = httpx.post(f"{served.http}/connexion", data={"username": "lea.secret", "password": LOG_PASSWORD},
                   headers={"X-Forwarded-Proto": "https"})
    assert r.status_code == 303
    assert _secure_cookie(r, "monsisra_session") is False and "strict-transport-security" not in r.headers


def test_serve_does_not_compress_each_socket(served):
    """The event socket refuses permessage-deflate, which the client offers: with it, each of the
    500 sockets of a busy conversation compressed every event on its own (half the fan-out time)."""
    token = token_login(served.http, "lea.secret", LOG_PASSWORD)
    with connect(ws_url(served.http), compression="deflate",
                 additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        assert recv_event(ws, "hello")["type"] == "hello"
        assert "permessage-deflate" in ws.request.headers.get("Sec-WebSocket-Extensions", "")
        assert ws.response.headers.get("Sec-WebSocket-Extensions") is None


def test_no_token_or_password_in_the_logs_of_serve(served):
    base = served.http
    token = token_login(base, "paul.secret", LOG_PASSWORD)
    second = token_login(base, "paul.secret", LOG_PASSWORD)
    with connect(ws_url(base) + f"?access_token={token}") as ws:
        assert recv_event(ws, "hello")["type"] == "hello"
    # Percent-encoded names are decoded by the server, so they authenticate: masked as well.
    with connect(ws_url(base) + f"?access%5Ftoken={second}") as ws:
        assert recv_event(ws, "hello")["type"] == "hello"
    with connect(ws_url(base) + f"?%61ccess_token={second}&state=etat-{second[:8]}") as ws:
        assert recv_event(ws, "hello")["type"] == "hello"
    r = httpx.post(f"{base}/api/v1/auth/token", data={"username": "paul.secret", "password": WRONG_PASSWORD})
    assert r.status_code == 401
    r = httpx.post(f"{base}/connexion", data={"username": "paul.secret", "password": WRONG_PASSWORD})
    assert r.status_code == 400
    httpx.get(f"{base}/api/v1/me?access_token={token}&code=code-{second[:10]}",
              headers={"Authorization": f"Bearer {token}", "Cookie": f"monsisra_session={second}"})
    httpx.get(f"{base}/connexion?password={WRONG_PASSWORD}&otp=424242&refresh_token={second}")
    with httpx.Client(base_url=base, timeout=30) as web:
        web.post("/connexion", data={"username": "paul.secret", "password": LOG_PASSWORD})
        cookie = web.cookies["monsisra_session"]
        web.get(f"/boite?id_token={cookie}")
    marker = f"/fin-du-test-{uuid.uuid4().hex[:8]}"
    httpx.get(base + marker)
    deadline = time.monotonic() + 30
    while marker not in served.log.read_text(errors="replace"):
        assert time.monotonic() < deadline, "the request lines never reached the log"
        time.sleep(0.2)
    text = served.log.read_text(errors="replace")
    assert "/api/v1/events?access_token=***" in text  # the lines are there, masked
    for secret in (token, second, second[:8], second[:10], cookie, LOG_PASSWORD, WRONG_PASSWORD, "424242"):
        assert secret not in text, f"a secret reached the log: {secret[:6]}…"


@pytest.mark.skipif(not (POSTGRES_URL and REDIS_URL),
                    reason="needs MONSISRA_TEST_POSTGRES_URL and MONSISRA_TEST_REDIS_URL (CI sets both)")
def test_ending_a_session_on_one_process_closes_its_sockets_on_another(tmp_path):
    with fresh_database("postgres", tmp_path) as url:
        env = _env(url, tmp_path / "data", MONSISRA_REDIS_URL=REDIS_URL)
        for name in ("ana.redis", "ben.redis"):
            _cli(env, "account", "create", name, "--first-name", name.split(".")[0].title(), "--last-name",
                 "Redis", "--password", LOG_PASSWORD)
        a = ServeProcess(env, tmp_path / "a.log")
        b = None
        try:
            b = ServeProcess({**env, "MONSISRA_HTTP_PORT": str(free_port()), "MONSISRA_HTTPS_PORT": str(free_port()),
                              "MONSISRA_SMTP_PORT": str(free_port())}, tmp_path / "b.log")
            proc_a, proc_b = a.http, b.http
            sender = token_login(proc_a, "ana.redis", LOG_PASSWORD)
            token = token_login(proc_a, "ben.redis", LOG_PASSWORD)
            with web_session(proc_a, "ben.redis", LOG_PASSWORD) as web, \
                    httpx.Client(base_url=proc_b, cookies={"monsisra_session": web.cookies["monsisra_session"]},
                                 timeout=30, follow_redirects=False) as on_b:
                assert on_b.get("/boite").status_code == 200  # process B now remembers this session a moment
                with bearer_socket(proc_b, token) as ws, cookie_socket(proc_b, on_b) as web_ws:
                    recv_event(ws, "hello")
                    recv_event(web_ws, "hello")
                    first = f"Avant {uuid.uuid4().hex[:6]}"
                    send(proc_a, sender, f"ben.redis@{DOMAIN}", first)
                    assert recv_subject(ws, first)  # A → B through Redis
                    # Revoked on A: B closes the token's socket.
                    r = httpx.post(f"{proc_a}/api/v1/auth/revoke", headers={"Authorization": f"Bearer {token}"})
                    assert r.status_code == 204
                    subject = f"Après {uuid.uuid4().hex[:6]}"
                    send(proc_a, sender, f"ben.redis@{DOMAIN}", subject)
                    code, reason = closed_without(ws, subject)
                    assert code == 4401 and "révoqué" in reason
                    assert recv_subject(web_ws, subject)  # the web session lives on
                    # Logged out on A (stale page: no CSRF token): B closes the page's socket…
                    assert web.post("/deconnexion").status_code == 303
                    later = f"Plus tard {uuid.uuid4().hex[:6]}"
                    send(proc_a, sender, f"ben.redis@{DOMAIN}", later)
                    code, reason = closed_without(web_ws, later)
                    assert code == 4401 and "déconnexion" in reason
                # …and no longer lets the cookie act, although it remembered the session.
                assert on_b.get("/boite").status_code == 303
                assert on_b.get("/api/v1/me").status_code == 401
        finally:
            for p in (a, b):
                if p is not None:
                    p.stop()
