"""Live events over the WebSocket, in one process and across two processes through Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
import pytest
from websockets.sync.client import connect

from tests.support import POSTGRES_URL, REDIS_URL, free_port, fresh_database

DOMAIN = "monsisra.localhost"


def ws_url(base: str) -> str:
    return base.replace("http://", "ws://") + "/api/v1/events"


def next_event(ws, wanted: str, timeout: float = 10.0) -> dict:
    """The next event of type ``wanted`` (others are skipped), within a bounded wait."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no {wanted!r} event within {timeout}s")
        event = json.loads(ws.recv(timeout=remaining))
        if event["type"] == wanted:
            return event


def token_of(client: httpx.Client) -> str:
    return client.headers["Authorization"].split()[1]


def test_events_new_message_counts_and_receipt(server):
    alice, bruno = server.login("alice.martin"), server.login("bruno.petit")
    bruno_box = next(b["id"] for b in bruno.get("/api/v1/mailboxes").json() if b["kind"] == "PER")
    alice_box = next(b["id"] for b in alice.get("/api/v1/mailboxes").json() if b["kind"] == "PER")
    with connect(ws_url(server.base_url), additional_headers={"Authorization": f"Bearer {token_of(bruno)}"}) as bws, \
            connect(ws_url(server.base_url) + f"?access_token={token_of(alice)}") as aws:
        assert next_event(bws, "hello")["type"] == "hello"
        assert next_event(aws, "hello")["type"] == "hello"
        sent = alice.post("/api/v1/messages", json={"from_mailbox": alice_box, "to": [f"bruno.petit@{DOMAIN}"],
                                                     "subject": "En direct", "body": "x"}).json()
        event = next_event(bws, "message.new")
        assert event["message_id"] == sent["id"] and event["mailbox_id"] == bruno_box
        assert event["subject"] == "En direct"
        assert bruno_box in next_event(bws, "counts")["mailbox_ids"]
        bruno.get(f"/api/v1/mailboxes/{bruno_box}/messages/{sent['id']}")
        receipt = next_event(aws, "message.read")
        assert receipt["message_id"] == sent["id"] and receipt["reader_name"] == "Bruno Petit"


def test_events_are_private(server):
    """claire's socket hears nothing of a message between alice and bruno."""
    alice, claire = server.login("alice.martin"), server.login("claire.roux")
    alice_box = next(b["id"] for b in alice.get("/api/v1/mailboxes").json() if b["kind"] == "PER")
    claire_box = next(b["id"] for b in claire.get("/api/v1/mailboxes").json() if b["kind"] == "PER")
    with connect(ws_url(server.base_url), additional_headers={"Authorization": f"Bearer {token_of(claire)}"}) as cws:
        next_event(cws, "hello")
        alice.post("/api/v1/messages", json={"from_mailbox": alice_box, "to": [f"bruno.petit@{DOMAIN}"],
                                              "subject": "Privé", "body": "x"})
        # A marker sent to claire afterwards arrives first: nothing about the private one came before it.
        marker = alice.post("/api/v1/messages", json={"from_mailbox": alice_box,
                                                       "to": [f"claire.roux@{DOMAIN}"], "subject": "Marqueur"}).json()
        event = json.loads(cws.recv(timeout=10))
        assert event["type"] == "message.new" and event["message_id"] == marker["id"]
        assert event["mailbox_id"] == claire_box


def test_events_refuse_anonymous(server):
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    with pytest.raises((ConnectionClosed, InvalidStatus)), connect(ws_url(server.base_url)) as ws:
        ws.recv(timeout=5)


def _serve(env: dict[str, str], port: int) -> subprocess.Popen:
    args = ["serve", "--port", str(port), "--https-port", str(free_port()), "--no-migrate"]
    return subprocess.Popen([sys.executable, "-m", "monsisra.cli", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


def _wait_up(port: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/openapi.json", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise AssertionError("server did not start")


@pytest.mark.skipif(not (POSTGRES_URL and REDIS_URL),
                    reason="needs MONSISRA_TEST_POSTGRES_URL and MONSISRA_TEST_REDIS_URL (CI sets both)")
def test_two_processes_share_events_through_redis(tmp_path):
    """A message sent through process A reaches a socket connected to process B."""
    with fresh_database("postgres", tmp_path) as url:
        env = {**os.environ, "MONSISRA_DATABASE_URL": url, "MONSISRA_DATA_DIR": str(tmp_path / "data"),
               "MONSISRA_REDIS_URL": REDIS_URL, "MONSISRA_SECRET_KEY": "k" * 40, "MONSISRA_SMTP_ENABLED": "false",
               "MONSISRA_RUN_WORKERS": "false", "MONSISRA_SMTP_PORT": str(free_port())}
        subprocess.run([sys.executable, "-m", "monsisra.cli", "demo"], env=env, check=True,
                       capture_output=True, timeout=300)
        port_a, port_b = free_port(), free_port()
        a, b = _serve(env, port_a), _serve(env, port_b)
        try:
            _wait_up(port_a, a)
            _wait_up(port_b, b)

            def login(port, user):
                r = httpx.post(f"http://127.0.0.1:{port}/api/v1/auth/token",
                               data={"username": user, "password": "demo"})
                return r.json()["access_token"]

            alice_token, bruno_token = login(port_a, "alice.martin"), login(port_b, "bruno.petit")
            with connect(f"ws://127.0.0.1:{port_b}/api/v1/events",
                         additional_headers={"Authorization": f"Bearer {bruno_token}"}) as ws:
                next_event(ws, "hello")
                headers = {"Authorization": f"Bearer {alice_token}"}
                box = httpx.get(f"http://127.0.0.1:{port_a}/api/v1/mailboxes", headers=headers).json()[0]["id"]
                sent = httpx.post(f"http://127.0.0.1:{port_a}/api/v1/messages", headers=headers, json={
                    "from_mailbox": box, "to": [f"bruno.petit@{DOMAIN}"], "subject": "Via A", "body": "x"}).json()
                event = next_event(ws, "message.new", timeout=15)
                assert event["message_id"] == sent["id"] and event["subject"] == "Via A"
        finally:
            for p in (a, b):
                p.terminate()
            for p in (a, b):
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
