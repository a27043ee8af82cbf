"""Issue 16, item 4: notifications outside the tab. New messages for someone with no live socket
are announced — without subject or patient data, batched, at most once per 15 minutes per
channel, outside quiet hours — by e-mail (read at an aiosmtpd sink), SMS (a local HTTP gateway
sink) and Web Push (a local push service; the payload is decrypted here with the subscription's
private key, RFC 8291)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from zoneinfo import ZoneInfo

import http_ece
import pytest
import sqlalchemy as sa
from aiosmtpd.controller import Controller
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from websockets.sync.client import connect

from monsisra.domain.clock import utcnow
from monsisra.services import notifications
from monsisra.services.core import Core
from monsisra.store.reach import NotifyState, PushSubscription
from tests.reach_support import count_rows, make_pro, own_server
from tests.support import _run_alone, free_port, fresh_database, make_settings

pytestmark = pytest.mark.postgres
SMS_TOKEN = "sms-secret-token"


class HttpSink:
    """A local HTTP server keeping every POST (the SMS gateway and the push service)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.cond = threading.Condition()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                with sink.cond:
                    sink.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                    sink.cond.notify_all()
                self.send_response(410 if self.path.endswith("/gone") else 201)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def take(self) -> list[tuple[str, dict[str, str], bytes]]:
        with self.cond:
            out, self.requests = self.requests, []
        return out


class MailSink:
    def __init__(self) -> None:
        self.messages: list[tuple[list[str], bytes]] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.messages.append((list(envelope.rcpt_tos), envelope.content))
        return "250 OK"

    def take(self) -> list[tuple[list[str], bytes]]:
        with self.lock:
            out, self.messages = self.messages, []
        return out


@pytest.fixture(scope="module")
def sinks():
    mail = MailSink()
    controller = Controller(mail, hostname="127.0.0.1", port=free_port())
    controller.start()
    http = HttpSink()
    yield mail, controller.port, http
    controller.stop()
    http.server.shutdown()


@pytest.fixture(scope="module")
def srv(backend, tmp_path_factory, sinks):
    _, smtp_port, http = sinks
    with own_server(backend, tmp_path_factory.mktemp(f"notify-{backend}"), demo=False,
                    smtp_relay=f"127.0.0.1:{smtp_port}", sms_gateway_url=f"http://127.0.0.1:{http.port}/sms",
                    sms_gateway_token=SMS_TOKEN) as running:
        yield running


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _browser_keys() -> tuple[ec.EllipticCurvePrivateKey, str, bytes, str]:
    """What a browser makes when it subscribes: a P-256 key pair and a 16-byte auth secret."""
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    auth = os.urandom(16)
    return key, _b64(public), auth, _b64(auth)


def _pass(srv, at=None) -> dict[str, int]:
    return srv.call(notifications.run_pass, srv.core, at)


def _send(client, box: int, to: list[str], subject: str) -> None:
    r = client.post("/api/v1/messages", json={"from_mailbox": box, "to": to, "subject": subject,
                                              "body": "Patient DUPONT : résultats joints."})
    assert r.status_code == 201, r.text


def test_away_person_hears_by_mail_sms_and_push_batched_and_quiet(srv, sinks):
    mail, _, http = sinks
    away, away_addr, _ = make_pro(srv, "Anne", notification_email="anne.perso@example.org",
                                  notification_phone="06 12 34 56 78")
    here, here_addr, _ = make_pro(srv, "Henri", notification_email="henri.perso@example.org")
    sender, _, sender_box = make_pro(srv, "Serge")
    key, p256dh, auth, auth_b64 = _browser_keys()
    endpoint = f"http://127.0.0.1:{http.port}/push/anne-1"
    with srv.login(away, "secret-pass") as a:
        assert a.get("/api/v1/me/notifications").json()["sms"] is False
        r = a.patch("/api/v1/me/notifications", json={"sms": True})
        assert r.status_code == 200 and r.json()["sms"] is True and r.json()["phone"] == "0612345678"
        public_key = a.get("/api/v1/push/public-key").json()["public_key"]
        assert len(base64.urlsafe_b64decode(public_key + "==")) == 65
        r = a.post("/api/v1/me/push-subscriptions", json={"endpoint": endpoint,
                                                          "keys": {"p256dh": p256dh, "auth": auth_b64}})
        assert r.status_code == 201, r.text
        gone = _browser_keys()
        a.post("/api/v1/me/push-subscriptions", json={"endpoint": f"http://127.0.0.1:{http.port}/push/gone",
                                                      "keys": {"p256dh": gone[1], "auth": gone[3]}})
    _pass(srv)  # the first pass starts from what is there
    mail.take()
    http.take()

    with srv.login(here, "secret-pass") as h, srv.login(sender, "secret-pass") as s:
        token = h.headers["authorization"].split()[1]
        ws_url = srv.base_url.replace("http", "ws", 1) + "/api/v1/events"
        with connect(ws_url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
            assert json.loads(ws.recv(timeout=20))["type"] == "hello"
            _send(s, sender_box, [away_addr, here_addr], "Résultats de M. DUPONT")
            _send(s, sender_box, [away_addr], "Compte rendu opératoire")
            sent = _pass(srv)
    assert sent == {"email": 1, "sms": 1, "push": 1}
    text = "Vous avez 2 nouveaux messages sur MonSisra"
    [(rcpts, raw)] = mail.take()  # nobody wrote to Henri, who was connected
    assert rcpts == ["anne.perso@example.org"]
    assert f"Subject: {text}".encode() in raw
    for secret in (b"DUPONT", b"Compte rendu", "résultats".encode()):
        assert secret not in raw
    requests = {path: (headers, body) for path, headers, body in http.take()}
    headers, body = requests["/sms"]
    assert headers["authorization"] == f"Bearer {SMS_TOKEN}"
    assert json.loads(body) == {"to": "0612345678", "text": text}
    headers, body = requests["/push/anne-1"]
    assert headers["content-encoding"] == "aes128gcm" and headers["authorization"].startswith("vapid t=")
    assert f"k={public_key}" in headers["authorization"]
    payload = json.loads(http_ece.decrypt(body, private_key=key, auth_secret=auth, version="aes128gcm"))
    assert payload == {"title": "MonSisra", "body": text, "url": "/boite", "count": 2}
    # The push service said the other subscription is gone (410): it is dropped.
    assert "/push/gone" in requests
    assert srv.call(count_rows, srv.core, PushSubscription, PushSubscription.endpoint.like("%/gone")) == 0

    # One more message within 15 minutes: it waits for the next allowed notification.
    now = utcnow()
    with srv.login(sender, "secret-pass") as s:
        _send(s, sender_box, [away_addr], "Troisième")
    assert _pass(srv, now) == {"email": 0, "sms": 0, "push": 0}
    assert mail.take() == []
    assert _pass(srv, now + timedelta(minutes=16)) == {"email": 1, "sms": 1, "push": 1}
    [(_, raw)] = mail.take()
    assert b"Subject: Vous avez 1 nouveau message sur MonSisra" in raw
    http.take()

    # Quiet hours around the present moment (Paris time): nothing until they end.
    with srv.login(away, "secret-pass") as a:
        paris = (now + timedelta(minutes=40)).astimezone(ZoneInfo("Europe/Paris"))
        start = (paris - timedelta(hours=1)).strftime("%H:%M")
        end = (paris + timedelta(hours=1)).strftime("%H:%M")
        assert a.patch("/api/v1/me/notifications", json={"quiet_start": start, "quiet_end": end,
                                                          "push": False}).status_code == 200
        with srv.login(sender, "secret-pass") as s:
            _send(s, sender_box, [away_addr], "Quatrième")
        assert _pass(srv, now + timedelta(minutes=40)) == {"email": 0, "sms": 0, "push": 0}
        assert a.patch("/api/v1/me/notifications", json={"quiet_start": None, "quiet_end": None}).status_code == 200
    assert _pass(srv, now + timedelta(minutes=41)) == {"email": 1, "sms": 1, "push": 0}
    assert [r for r, _ in mail.take()] == [["anne.perso@example.org"]]
    assert [p for p, _, _ in http.take()] == ["/sms"]


def test_preferences_and_subscriptions_refuse_bad_input(srv):
    user, _, _ = make_pro(srv, "Berthe")
    with srv.login(user, "secret-pass") as c:
        for body in ({"quiet_start": "25:00", "quiet_end": "07:00"}, {"quiet_start": "22:00"},
                     {"quiet_start": "07:00", "quiet_end": "07:00"}):
            r = c.patch("/api/v1/me/notifications", json=body)
            assert r.status_code == 422 and r.json()["detail"], body
        assert c.get("/api/v1/me/notifications").json()["quiet_start"] is None
        _, p256dh, _, auth = _browser_keys()
        for body in ({"endpoint": "javascript:alert(1)", "keys": {"p256dh": p256dh, "auth": auth}},
                     {"endpoint": "https://push.example.org/x", "keys": {"p256dh": "court", "auth": auth}},
                     {"endpoint": "https://push.example.org/x", "keys": {"p256dh": p256dh, "auth": "!!"}}):
            assert c.post("/api/v1/me/push-subscriptions", json=body).status_code == 422
    with srv.client() as anon:
        assert anon.patch("/api/v1/me/notifications", json={"sms": True}).status_code == 401
        assert anon.post("/api/v1/me/push-subscriptions", json={}).status_code in (401, 422)


def test_notifications_settings_page(srv):
    from tests.reach_support import web_session

    user, _, _ = make_pro(srv, "Gaëlle", notification_email="gaelle@example.org")
    with web_session(srv, user, "secret-pass") as (web, csrf):
        page = web.get("/parametres/notifications")
        assert page.status_code == 200 and "gaelle@example.org" in page.text and 'id="push-enable"' in page.text
        r = web.post("/parametres/notifications", data={"csrf": csrf, "email": "1", "sms": "1",
                                                        "quiet_start": "22:00", "quiet_end": "07:00"})
        assert r.status_code == 303
        bad = web.post("/parametres/notifications", data={"csrf": csrf, "quiet_start": "22:00"})
        assert bad.status_code == 422 and "heures calmes" in bad.text
        assert web.post("/parametres/notifications", data={"quiet_start": "01:00", "quiet_end": "02:00"}
                        ).status_code == 403  # no CSRF token
    with srv.login(user, "secret-pass") as api:
        prefs = api.get("/api/v1/me/notifications").json()
        assert (prefs["email"], prefs["sms"], prefs["push"]) == (True, True, False)
        assert (prefs["quiet_start"], prefs["quiet_end"]) == ("22:00", "07:00")


def test_processes_starting_together_make_one_cursor(backend, tmp_path):
    """Several processes' first pass on a new database all find no cursor: one row is made, and
    none of them fails on the duplicate key (four servers started at once behind a balancer)."""
    with fresh_database(backend, tmp_path / "db") as url:
        async def go() -> tuple[list, int]:
            cores = [Core(make_settings(url, tmp_path / f"data{i}", smtp_enabled=False, run_workers=False))
                     for i in range(4)]
            try:
                now = utcnow()
                outcomes = await asyncio.gather(*(notifications._plan(c, now) for c in cores),
                                                return_exceptions=True)
                async with cores[0].read() as s:
                    rows = await s.scalar(sa.select(sa.func.count()).select_from(NotifyState)
                                          .where(NotifyState.account_id == 0))
                return outcomes, rows
            finally:
                for c in cores:
                    await c.close()

        outcomes, rows = _run_alone(go())
    assert outcomes == [[], [], [], []]
    assert rows == 1
