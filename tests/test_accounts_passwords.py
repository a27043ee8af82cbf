"""Issue 15, item 5 (passwords) and item 7 (sessions): change with the current password, « Mot de
passe oublié ? » by a link read at a real SMTP sink (aiosmtpd started here) and followed, and the
sessions page's API (list, revoke, live sockets closed).
"""

from __future__ import annotations

import email
import email.policy
import json
import re
import threading
import time
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import sqlalchemy as sa
from aiosmtpd.controller import Controller
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from monsisra.services import accounts
from monsisra.services import demo as demo_service
from monsisra.store.accounts import PasswordReset
from monsisra.store.models import AuditEvent
from tests.support import free_port, make_settings, start_server, unique

pytestmark = pytest.mark.postgres
NEW = "cheval-agrafe-batterie-correcte"


class Sink:
    """An SMTP server on 127.0.0.1 that keeps what it receives."""

    def __init__(self) -> None:
        self.messages: list[email.message.EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self.cond = threading.Condition()

    async def handle_DATA(self, server, session, envelope):
        with self.cond:
            self.messages.append(email.message_from_bytes(envelope.content, policy=email.policy.default))
            self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
            self.cond.notify_all()
        return "250 OK"

    def wait_for(self, rcpt: str, after: int, timeout: float = 20.0) -> email.message.EmailMessage:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for i in range(after, len(self.messages)):
                    if rcpt in self.envelopes[i][1]:
                        return self.messages[i]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no mail for {rcpt} within {timeout}s")
                self.cond.wait(remaining)

    def count(self) -> int:
        with self.cond:
            return len(self.messages)


@pytest.fixture(scope="module")
def sink():
    handler = Sink()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield handler, controller.port
    controller.stop()


@pytest.fixture(scope="module")
def srv(database_url, tmp_path_factory, backend, sink):
    """A server whose notification relay is the sink (its own, on the session's database)."""
    _, port = sink
    settings = make_settings(database_url, tmp_path_factory.mktemp(f"pw-{backend}"), smtp_enabled=False,
                             run_workers=False, smtp_relay=f"127.0.0.1:{port}")
    running = start_server(settings)
    running.call(demo_service.load, running.core)
    yield running
    running.stop()


def new_user(srv, email_address: str | None = None) -> str:
    username = unique("pw")
    srv.call(accounts.create_account, srv.core, accounts.NewAccount(
        username=username, password="secret-pass", first_name="Lou", last_name=username, email=email_address))
    return username


def token(srv, username: str, password: str = "secret-pass") -> str:
    r = httpx.post(f"{srv.base_url}/api/v1/auth/token", data={"username": username, "password": password})
    assert r.status_code == 200, r.text
    return r.json()["access_token"]


def socket(srv, bearer: str):
    return connect(srv.base_url.replace("http://", "ws://") + "/api/v1/events",
                   additional_headers={"Authorization": f"Bearer {bearer}"})


def closed(sock, timeout: float = 15.0) -> tuple[int, str]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            sock.recv(timeout=max(deadline - time.monotonic(), 0.01))
        except ConnectionClosed as exc:
            assert exc.rcvd is not None
            return exc.rcvd.code, exc.rcvd.reason
        except TimeoutError:
            raise AssertionError("socket still open") from None


def actions(srv, account_username: str) -> list[str]:
    async def go():
        async with srv.core.read() as s:
            from monsisra.store.models import Account

            account_id = await s.scalar(sa.select(Account.id).where(Account.username == account_username))
            return list(await s.scalars(sa.select(AuditEvent.action).where(AuditEvent.account_id == account_id)
                                        .order_by(AuditEvent.id)))

    return srv.call(go)


def test_change_password_needs_the_current_one_and_ends_the_other_sessions(srv):
    user = new_user(srv)
    mine, other = token(srv, user), token(srv, user)
    with srv.client(mine) as me, socket(srv, other) as other_socket, socket(srv, mine) as my_socket:
        json.loads(other_socket.recv(timeout=10))
        json.loads(my_socket.recv(timeout=10))
        r = me.post("/api/v1/me/password", json={"current": "pas-le-bon", "new": NEW})
        assert r.status_code == 422 and r.json()["detail"] == "mot de passe actuel incorrect"
        r = me.post("/api/v1/me/password", json={"current": "secret-pass", "new": "motdepasse2024"})
        assert r.status_code == 422 and "trop facile à deviner" in r.json()["detail"]
        assert "12 caractères" in r.json()["detail"]
        r = me.post("/api/v1/me/password", json={"current": "secret-pass", "new": f"{user}-lou-2024!"})
        assert r.status_code == 422 and "identifiant" in r.json()["detail"]
        r = me.post("/api/v1/me/password", json={"current": "secret-pass", "new": "court"})
        assert r.status_code == 422 and "trop court" in r.json()["detail"]
        assert token(srv, user)  # nothing changed so far
        r = me.post("/api/v1/me/password", json={"current": "secret-pass", "new": NEW})
        assert r.status_code == 200 and r.json()["sessions_ended"] == 2
        code, reason = closed(other_socket)
        assert code == 4401 and "mot de passe" in reason
        # This session goes on, its socket too.
        assert me.get("/api/v1/me").status_code == 200
        my_socket.send("ping")
    assert httpx.post(f"{srv.base_url}/api/v1/auth/token",
                      data={"username": user, "password": "secret-pass"}).status_code == 401
    assert token(srv, user, NEW)
    assert {"password.change.failure", "password.change"} <= set(actions(srv, user))


def test_guesses_of_the_current_password_are_throttled(srv):
    user = new_user(srv)
    with srv.client(token(srv, user)) as me:
        codes = [me.post("/api/v1/me/password", json={"current": f"faux{i}", "new": NEW}).status_code
                 for i in range(srv.settings.login_max_failures + 1)]
    assert codes[:-1] == [422] * srv.settings.login_max_failures and codes[-1] == 429


def reset_link(message: email.message.EmailMessage) -> str:
    body = message.get_body(("plain",)).get_content()
    found = re.search(r"(http://\S+/mot-de-passe/nouveau\?token=\S+)", body)
    assert found, body
    return found.group(1)


def test_forgotten_password_by_a_single_use_link_followed_from_the_mail(srv, sink):
    handler, _ = sink
    address = f"{unique('lou')}@exemple.fr"
    user = new_user(srv, address)
    victim_session = token(srv, user)
    before = handler.count()
    with httpx.Client(base_url=srv.base_url, follow_redirects=False, timeout=30) as web:
        page = web.post("/mot-de-passe-oublie", data={"login": user})
        assert page.status_code == 200 and "Si un compte correspond" in page.text
        mail = handler.wait_for(address, before)
        assert mail["Subject"] == "MonSisra : choisir un nouveau mot de passe"
        assert mail["From"].addresses[0].addr_spec == "ne-pas-repondre@monsisra.localhost"
        link = reset_link(mail)
        assert urlsplit(link).netloc == urlsplit(srv.base_url).netloc
        # Following it: the token leaves the address for a cookie scoped to the page.
        r = web.get(link)
        assert r.status_code == 303 and r.headers["location"] == "/mot-de-passe/nouveau"
        assert "token" not in r.headers["location"]
        form = web.get("/mot-de-passe/nouveau")
        assert form.status_code == 200 and user in form.text and "12 caractères" in form.text
        weak = web.post("/mot-de-passe/nouveau", data={"new": "azertyuiop12", "confirm": "azertyuiop12"})
        assert weak.status_code == 422 and "facile à deviner" in weak.text
        mismatch = web.post("/mot-de-passe/nouveau", data={"new": NEW, "confirm": NEW + "x"})
        assert mismatch.status_code == 422 and "pas identiques" in mismatch.text
        done = web.post("/mot-de-passe/nouveau", data={"new": NEW, "confirm": NEW})
        assert done.status_code == 303 and done.headers["location"] == "/connexion"
        # Used: refused the second time, through the cookie or the mail's address.
        again = web.get(link)
        assert again.status_code == 410 and "plus valable" in again.text
    with httpx.Client(base_url=srv.base_url, timeout=30) as api:
        token_value = parse_qs(urlsplit(link).query)["token"][0]
        r = api.post("/api/v1/auth/password-reset/confirm", json={"token": token_value, "new": NEW + "2"})
        assert r.status_code == 422 and "plus valable" in r.json()["detail"]
    # Every session ended; the new password works, the old one does not.
    assert httpx.get(f"{srv.base_url}/api/v1/me", headers={"Authorization": f"Bearer {victim_session}"}
                     ).status_code == 401
    assert token(srv, user, NEW)
    seen = actions(srv, user)
    assert {"password.reset.request", "password.reset", "password.reset.refused"} <= set(seen)


def test_a_late_or_forged_link_is_refused(srv, sink):
    handler, _ = sink
    address = f"{unique('tard')}@exemple.fr"
    user = new_user(srv, address)
    before = handler.count()
    r = httpx.post(f"{srv.base_url}/api/v1/auth/password-reset", json={"login": address})
    assert r.status_code == 202
    link = reset_link(handler.wait_for(address, before))
    value = parse_qs(urlsplit(link).query)["token"][0]
    forged = value[:-3] + ("aaa" if not value.endswith("aaa") else "bbb")
    r = httpx.post(f"{srv.base_url}/api/v1/auth/password-reset/confirm", json={"token": forged, "new": NEW})
    assert r.status_code == 422

    async def expire():
        from monsisra.domain.clock import utcnow

        async with srv.core.write() as tx:
            await tx.session.execute(sa.update(PasswordReset).values(expires_at=utcnow()).where(
                PasswordReset.token_hash.is_not(None), PasswordReset.used_at.is_(None)))

    srv.call(expire)
    r = httpx.get(link, follow_redirects=False)
    assert r.status_code == 410 and "plus valable" in r.text
    r = httpx.post(f"{srv.base_url}/api/v1/auth/password-reset/confirm", json={"token": value, "new": NEW})
    assert r.status_code == 422
    assert token(srv, user)  # the old password still works


def test_the_answer_never_reveals_whether_an_account_exists(srv):
    user = new_user(srv)  # no e-mail anywhere: nothing can be sent
    answers = [httpx.post(f"{srv.base_url}/api/v1/auth/password-reset", json={"login": login})
               for login in (user, "personne.inconnue", "inconnu@exemple.fr")]
    assert {a.status_code for a in answers} == {202}
    assert len({a.text for a in answers}) == 1
    r = httpx.post(f"{srv.base_url}/api/v1/auth/password-reset", json={"login": ""})
    assert r.status_code == 422


def test_sessions_are_listed_and_any_of_them_revoked(srv):
    user = new_user(srv)
    first = token(srv, user)
    second = httpx.post(f"{srv.base_url}/api/v1/auth/token", data={"username": user, "password": "secret-pass"},
                        headers={"User-Agent": "LogicielCabinet/2.1"}).json()["access_token"]
    with httpx.Client(base_url=srv.base_url, follow_redirects=False, timeout=30,
                      headers={"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/120.0"}) as web:
        assert web.post("/connexion", data={"username": user, "password": "secret-pass"}).status_code == 303
        with srv.client(first) as me, socket(srv, second) as live:
            json.loads(live.recv(timeout=10))
            items = me.get("/api/v1/me/sessions").json()["items"]
            kinds = sorted(i["kind"] for i in items)
            assert kinds == ["api", "api", "device", "socket", "web"], items
            current = [i for i in items if i["current"]]
            assert len(current) == 1 and current[0]["kind"] == "api"
            cabinet = next(i for i in items if i["user_agent"] == "LogicielCabinet/2.1")
            assert cabinet["sockets"] == 1 and cabinet["client"] == "127.0.0.1" and cabinet["expires_at"]
            sock = next(i for i in items if i["kind"] == "socket")
            assert sock["session"] == cabinet["id"]
            assert not any(first in json.dumps(i) or second in json.dumps(i) for i in items)
            # Revoking the cabinet's session closes its live socket at once.
            assert me.delete(f"/api/v1/me/sessions/{cabinet['id']}").status_code == 204
            code, reason = closed(live)
            assert code == 4401 and "révoquée" in reason
            assert httpx.get(f"{srv.base_url}/api/v1/me", headers={"Authorization": f"Bearer {second}"}
                             ).status_code == 401
            web_session = next(i for i in items if i["kind"] == "web")
            assert me.delete(f"/api/v1/me/sessions/{web_session['id']}").status_code == 204
            assert web.get("/boite").status_code == 303  # back to the login page
            device = next(i for i in me.get("/api/v1/me/sessions").json()["items"] if i["kind"] == "device")
            assert me.delete(f"/api/v1/me/sessions/{device['id']}").status_code == 204
            assert [i["kind"] for i in me.get("/api/v1/me/sessions").json()["items"]] == ["api"]
            # Someone else's, or nothing: 404.
            for bad in (device["id"], "token-999999", "socket-0", "autre-1", "token-" + "9" * 30):
                assert me.delete(f"/api/v1/me/sessions/{bad}").status_code == 404
    assert {"session.revoke", "device.revoke"} <= set(actions(srv, user))
