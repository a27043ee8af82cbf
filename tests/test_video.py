"""Video calls through the HTTP API and the live socket, on SQLite and PostgreSQL: starting a
visio in a conversation rings the others, join rules (404 to anyone not invited), TURN REST
credentials (HMAC-SHA1, expiry), signalling relayed only between a call's joined members and
validated, the call recorded in the conversation, and teleconsultation links (single use, expiry)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from websockets.sync.client import connect

from monsisra.config import Settings
from monsisra.services.video import turn
from tests.support import POSTGRES_URL, REDIS_URL, free_port, fresh_database, unique
from tests.test_realtime import (
    _serve,
    _wait_up,
    next_event,
    token_of,
    ws_url,
)

DOMAIN = "monsisra.localhost"

SDP = ("v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n"
       "m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=rtpmap:96 VP8/90000\r\n")


@pytest.fixture
def trio(server, make_user):
    out = []
    for first, last in (("Anne", unique("Dupont")), ("Bernard", unique("Leroy")), ("Chloé", unique("Morel"))):
        username, address, _ = make_user(first, last, civility="Dr", national_id="8" + "1" * 11)
        out.append((server.login(username, "secret-pass"), address))
    return out


def _conversation(client, others):
    r = client.post("/api/v1/conversations", json={"title": "Plaie du pied", "participants": others, "body": "Bonjour"})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _problem(r, status):
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    return r.json()["detail"]


def _ws(server, client):
    return connect(ws_url(server.base_url), additional_headers={"Authorization": f"Bearer {token_of(client)}"})


def test_start_rings_join_rules_and_record(server, trio):
    (a, _), (b, b_addr), (c, _) = trio
    conv = _conversation(a, [b_addr])
    with _ws(server, b) as ws:
        next_event(ws, "hello")
        r = a.post(f"/api/v1/conversations/{conv}/calls")
        assert r.status_code == 201, r.text
        call = r.json()
        assert {"id", "ice_servers"} <= call.keys() and isinstance(call["ice_servers"], list)
        ring = next_event(ws, "call.ring")
        assert ring["call_id"] == call["id"] and ring["caller"].startswith("Dr Anne")
    # Outsiders: 404 for the conversation's calls and for the call itself, nothing revealed.
    assert "introuvable" in _problem(c.post(f"/api/v1/conversations/{conv}/calls"), 404)
    assert "introuvable" in _problem(c.post(f"/api/v1/calls/{call['id']}/join"), 404)
    assert "introuvable" in _problem(c.get(f"/api/v1/calls/{call['id']}"), 404)
    _problem(c.post("/api/v1/calls/999999/join"), 404)
    # A second « Lancer une visio » while it goes on gives the same call.
    assert a.post(f"/api/v1/conversations/{conv}/calls").json()["id"] == call["id"]
    ja = a.post(f"/api/v1/calls/{call['id']}/join").json()
    jb = b.post(f"/api/v1/calls/{call['id']}/join").json()
    assert ja["members"] == [] and [m["peer"] for m in jb["members"]] == [ja["peer"]]
    assert ja["peer"] != jb["peer"] and len(ja["peer"]) >= 24
    assert b.post(f"/api/v1/calls/{call['id']}/leave").json() == {"id": call["id"], "ended": False}
    assert a.post(f"/api/v1/calls/{call['id']}/leave").json() == {"id": call["id"], "ended": True}
    assert "terminée" in _problem(b.post(f"/api/v1/calls/{call['id']}/join"), 409)
    bodies = [m["body"] for m in a.get(f"/api/v1/conversations/{conv}").json()["messages"]["items"]]
    assert any("a lancé une visio" in x for x in bodies)
    ended = next(x for x in bodies if x.startswith("Visio terminée"))
    assert "durée" in ended and "Dr Anne" in ended and "Dr Bernard" in ended


def test_decline_tells_the_joined(server, trio):
    (a, _), (b, b_addr), _ = trio
    call = a.post(f"/api/v1/conversations/{_conversation(a, [b_addr])}/calls").json()
    a.post(f"/api/v1/calls/{call['id']}/join")
    with _ws(server, a) as ws:
        next_event(ws, "hello")
        assert b.post(f"/api/v1/calls/{call['id']}/decline").status_code == 204
        assert next_event(ws, "call.declined")["name"].startswith("Dr Bernard")
    assert a.post(f"/api/v1/calls/{call['id']}/end").json()["ended"] is True


def test_turn_credentials_hmac_and_expiry(server, trio):
    settings = Settings(turn_url="turn:turn.example:3478?transport=udp", turn_secret="s3cret", turn_ttl_seconds=600)
    before = time.time()
    servers = turn.ice_servers(settings, 42)
    assert servers[0] == {"urls": ["stun:turn.example:3478"]}
    entry = servers[1]
    expiry, call_id = entry["username"].split(":")
    assert call_id == "42" and before + 600 <= int(expiry) + 1 <= time.time() + 601
    expected = base64.b64encode(hmac.new(b"s3cret", entry["username"].encode(), hashlib.sha1).digest()).decode()
    assert entry["credential"] == expected
    # Two calls never share credentials; nothing is configured without a server.
    assert turn.ice_servers(settings, 43)[1]["username"].endswith(":43")
    # Through the API: the server's secret, a per-call username expiring within the TTL.
    (a, _), (_, b_addr), _ = trio
    call = a.post(f"/api/v1/conversations/{_conversation(a, [b_addr])}/calls").json()
    with_auth = [s for s in call["ice_servers"] if "username" in s]
    if with_auth:
        exp, cid = with_auth[0]["username"].split(":")
        assert cid == str(call["id"]) and time.time() < int(exp) <= time.time() + server.settings.turn_ttl_seconds + 1
        key = turn.secret(server.settings).encode()
        assert with_auth[0]["credential"] == base64.b64encode(
            hmac.new(key, with_auth[0]["username"].encode(), hashlib.sha1).digest()).decode()


def test_signalling_relayed_only_between_joined_members(server, trio):
    (a, _), (b, b_addr), (c, _) = trio
    call = a.post(f"/api/v1/conversations/{_conversation(a, [b_addr])}/calls").json()
    other = c.post(f"/api/v1/conversations/{_conversation(c, [b_addr])}/calls").json()
    pa = a.post(f"/api/v1/calls/{call['id']}/join").json()["peer"]
    # b not joined yet: nobody to send to, and b may not signal.
    _problem(a.post(f"/api/v1/calls/{call['id']}/signal", json={"to": "x" * 30, "kind": "offer", "sdp": SDP}), 404)
    _problem(b.post(f"/api/v1/calls/{call['id']}/signal", json={"to": pa, "kind": "offer", "sdp": SDP}), 404)
    pb = b.post(f"/api/v1/calls/{call['id']}/join").json()["peer"]
    with _ws(server, b) as wsb, _ws(server, a) as wsa:
        next_event(wsb, "hello")
        next_event(wsa, "hello")
        r = a.post(f"/api/v1/calls/{call['id']}/signal", json={"to": pb, "kind": "offer", "sdp": SDP})
        assert r.status_code == 202, r.text
        got = next_event(wsb, "call.signal")
        assert got == {"type": "call.signal", "call_id": call["id"], "from": pa, "to": pb, "kind": "offer", "sdp": SDP}
        # Over the live socket: an answer and a candidate reach a; a malformed one comes back refused.
        wsb.send(json.dumps({"call_id": call["id"], "to": pa, "kind": "answer", "sdp": SDP}))
        assert next_event(wsa, "call.signal")["kind"] == "answer"
        cand = {"candidate": "candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host", "sdpMid": "0",
                "sdpMLineIndex": 0}
        wsb.send(json.dumps({"call_id": call["id"], "to": pa, "kind": "candidate", "candidate": cand}))
        assert next_event(wsa, "call.signal")["candidate"] == cand
        # Microphone / camera state (the others show « micro coupé », « caméra coupée »).
        wsb.send(json.dumps({"call_id": call["id"], "to": pa, "kind": "state", "audio": False, "video": True}))
        got = next_event(wsa, "call.signal")
        assert (got["kind"], got["audio"], got["video"], got["from"]) == ("state", False, True, pb)
        wsb.send(json.dumps({"call_id": call["id"], "to": pa, "kind": "offer", "sdp": "v=0\r\nBAD"}))
        err = next_event(wsb, "call.error")
        assert err["status"] == 422 and "SDP" in err["detail"]
        wsb.send("{not json")
        assert "illisible" in next_event(wsb, "call.error")["detail"]
        # A message for another call (b is invited there but did not join): refused, not relayed.
        pc = c.post(f"/api/v1/calls/{other['id']}/join").json()["peer"]
        wsb.send(json.dumps({"call_id": other["id"], "to": pc, "kind": "offer", "sdp": SDP}))
        assert next_event(wsb, "call.error")["status"] == 404
    # Malformed SDP, candidates, kinds: 422 in French, nothing relayed.
    for bad in ({"to": pb, "kind": "offer", "sdp": "hello"}, {"to": pb, "kind": "offer", "sdp": SDP + "x\r\n"},
                {"to": pb, "kind": "offer", "sdp": "v=0\r\nm=video\r\n" + "a=x\u0001\r\n"},
                {"to": pb, "kind": "candidate", "candidate": {"candidate": "evil\r\nline"}},
                {"to": pb, "kind": "hangup"}, {"kind": "offer", "sdp": SDP},
                {"to": pb, "kind": "state", "audio": "off", "video": True}, {"to": pb, "kind": "state"}):
        _problem(a.post(f"/api/v1/calls/{call['id']}/signal", json=bad), 422)
    # c (not in this conversation) cannot signal into a's call, even with a valid peer.
    _problem(c.post(f"/api/v1/calls/{call['id']}/signal", json={"to": pb, "kind": "offer", "sdp": SDP}), 404)
    # A member who left is no longer an addressee.
    b.post(f"/api/v1/calls/{call['id']}/leave")
    _problem(a.post(f"/api/v1/calls/{call['id']}/signal", json={"to": pb, "kind": "offer", "sdp": SDP}), 404)


def test_at_most_six_in_a_call(server, make_user):
    users = []
    for _ in range(7):
        username, address, _box = make_user("P", unique("Six"))
        users.append((server.login(username, "secret-pass"), address))
    conv = _conversation(users[0][0], [addr for _, addr in users[1:]])
    call = users[0][0].post(f"/api/v1/conversations/{conv}/calls").json()
    for client, _ in users[:6]:
        assert client.post(f"/api/v1/calls/{call['id']}/join").status_code == 200
    assert "6 personnes" in _problem(users[6][0].post(f"/api/v1/calls/{call['id']}/join"), 409)
    users[0][0].post(f"/api/v1/calls/{call['id']}/end")


def _book(client, **patient):
    at = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
    return client.post("/api/v1/teleconsultations", json={
        "patient": {"family_name": "Durand", "given_names": "Paul", **patient}, "at": at})


def test_teleconsultation_link_single_use_waiting_room_and_expiry(server, trio):
    (a, _), (b, _), _ = trio
    assert "mal formé" in _problem(_book(a, email="pas-une-adresse"), 422)
    assert "mal formé" in _problem(_book(a, phone="12"), 422)
    r = _book(a, phone="06 12 34 56 78")
    assert r.status_code == 201, r.text
    tc = r.json()
    assert {"id", "patient_link"} <= tc.keys() and tc["patient_link"] in tc["sms_text"]
    secret = tc["patient_link"].rsplit("/", 1)[1]
    assert len(secret) >= 40
    patient = httpx.Client(base_url=server.base_url, timeout=30)
    page = patient.get(f"/teleconsultation/{secret}")
    assert page.status_code == 200 and "salle d'attente" in page.text.lower()
    # Single use: another browser (no cookie) is refused; the first one may come back.
    other = httpx.Client(base_url=server.base_url, timeout=30)
    refused = other.get(f"/teleconsultation/{secret}")
    assert refused.status_code == 403 and "autre appareil" in refused.text
    assert patient.get(f"/teleconsultation/{secret}").status_code == 200
    assert other.post(f"/api/v1/patient/teleconsultation/{secret}/wait").status_code == 403
    assert httpx.get(f"{server.base_url}/teleconsultation/{'x' * 43}").status_code == 404
    # Waiting room: the professional sees the patient live, admits; b (not the booker) cannot.
    with _ws(server, a) as ws:
        next_event(ws, "hello")
        waiting = patient.post(f"/api/v1/patient/teleconsultation/{secret}/wait")
        assert waiting.status_code == 200 and waiting.json()["state"] == "waiting"
        assert next_event(ws, "teleconsultation.waiting")["teleconsultation"]["id"] == tc["id"]
    listed = a.get("/api/v1/teleconsultations").json()["items"]
    assert listed[0]["id"] == tc["id"] and listed[0]["waiting"] is True
    assert b.get("/api/v1/teleconsultations").json()["items"] == []
    _problem(b.post(f"/api/v1/teleconsultations/{tc['id']}/admit"), 404)
    admitted = a.post(f"/api/v1/teleconsultations/{tc['id']}/admit").json()
    _problem(b.post(f"/api/v1/calls/{admitted['call_id']}/join"), 404)
    pro = a.post(f"/api/v1/calls/{admitted['call_id']}/join").json()
    assert [m["patient"] for m in pro["members"]] == [True]
    state = patient.post(f"/api/v1/patient/teleconsultation/{secret}/wait").json()
    assert state["call"]["peer"] == pro["members"][0]["peer"]
    r = patient.post(f"/api/v1/patient/teleconsultation/{secret}/signal",
                     json={"call_id": admitted["call_id"], "to": pro["peer"], "kind": "answer", "sdp": SDP})
    assert r.status_code == 202, r.text
    # The consultation ends: the link is dead, even in the bound browser.
    a.post(f"/api/v1/calls/{admitted['call_id']}/end")
    gone = patient.get(f"/teleconsultation/{secret}")
    assert gone.status_code == 404 and "expiré" in gone.text
    assert a.get("/api/v1/teleconsultations").json()["items"] == []


@pytest.mark.skipif(not (POSTGRES_URL and REDIS_URL),
                    reason="needs MONSISRA_TEST_POSTGRES_URL and MONSISRA_TEST_REDIS_URL (CI sets both)")
def test_signalling_across_two_processes_through_redis(tmp_path):
    """alice on process A rings and signals bruno, whose socket is held by process B."""
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
            base_a, base_b = f"http://127.0.0.1:{port_a}", f"http://127.0.0.1:{port_b}"

            def login(base, user):
                token = httpx.post(f"{base}/api/v1/auth/token", data={"username": user, "password": "demo"})
                return httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token.json()['access_token']}"})

            alice, bruno = login(base_a, "alice.martin"), login(base_b, "bruno.petit")
            conv = _conversation(alice, [f"bruno.petit@{DOMAIN}"])
            with connect(ws_url(base_b), additional_headers={"Authorization": f"Bearer {token_of(bruno)}"}) as wsb, \
                    connect(ws_url(base_a), additional_headers={"Authorization": f"Bearer {token_of(alice)}"}) as wsa:
                next_event(wsb, "hello")
                next_event(wsa, "hello")
                call = alice.post(f"/api/v1/conversations/{conv}/calls").json()
                assert next_event(wsb, "call.ring", timeout=15)["call_id"] == call["id"]
                pa = alice.post(f"/api/v1/calls/{call['id']}/join").json()["peer"]
                pb = bruno.post(f"/api/v1/calls/{call['id']}/join").json()["peer"]
                wsa.send(json.dumps({"call_id": call["id"], "to": pb, "kind": "offer", "sdp": SDP}))
                got = next_event(wsb, "call.signal", timeout=15)
                assert got["from"] == pa and got["sdp"] == SDP
                wsb.send(json.dumps({"call_id": call["id"], "to": pa, "kind": "answer", "sdp": SDP}))
                assert next_event(wsa, "call.signal", timeout=15)["kind"] == "answer"
        finally:
            for p in (a, b):
                p.terminate()
            for p in (a, b):
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()


def test_call_on_the_patient_record(server, make_user):
    from tests.test_care_team_record import setup_patient

    g, n, o, pid, _, _ = setup_patient(server, make_user)
    assert g.put(f"/api/v1/patients/{pid}/care-team/me").status_code == 200
    n_addr = next(b["address"] for b in n.get("/api/v1/mailboxes").json() if b["kind"] == "PER")
    r = g.post("/api/v1/conversations", json={"title": "Plaie", "participants": [n_addr], "patient_id": pid})
    assert r.status_code == 201, r.text
    call = g.post(f"/api/v1/conversations/{r.json()['id']}/calls").json()
    g.post(f"/api/v1/calls/{call['id']}/join")
    n.post(f"/api/v1/calls/{call['id']}/join")
    g.post(f"/api/v1/calls/{call['id']}/end")
    items = g.get(f"/api/v1/patients/{pid}/record").json()["items"]
    entry = next(i for i in items if i["kind"] == "call")
    assert entry["id"] == call["id"] and entry["title"].startswith("Visio") and len(entry["participants"]) == 2
    assert "Durée" in entry["summary"]
    # A teleconsultation is booked for a patient of one's care team only.
    at = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
    body = {"patient": {"family_name": "Moreau", "given_names": "Jean"}, "at": at, "patient_id": pid}
    assert g.post("/api/v1/teleconsultations", json=body).status_code == 201
    _problem(o.post("/api/v1/teleconsultations", json=body), 404)
