"""Issue 15, item 6: delegation by the owner, through the API contract and the live socket.

A doctor delegates their PER mailbox to a secretary's own account (full or read-only), both sides
see it, the secretary works there under her name (audited), the doctor takes it back: her open
socket stops receiving that mailbox at once, and using the delegation again is a 404, audited.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest
import sqlalchemy as sa
from websockets.sync.client import connect

from monsisra.store.models import AuditEvent

pytestmark = pytest.mark.postgres


def ws(server, token: str):
    return connect(server.base_url.replace("http://", "ws://") + "/api/v1/events",
                   additional_headers={"Authorization": f"Bearer {token}"})


def next_event(sock, wanted, timeout: float = 15.0) -> dict:
    """The next event for which ``wanted(event)`` holds (others skipped), within a bounded wait."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError("no matching event in time")
        event = json.loads(sock.recv(timeout=remaining))
        if wanted(event):
            return event


def token_of(server, username: str, password: str = "secret-pass") -> str:
    with server.client() as c:
        r = c.post("/api/v1/auth/token", data={"username": username, "password": password})
    assert r.status_code == 200, r.text
    return r.json()["access_token"]


def send(client, from_mailbox: int, to: str, subject: str, **extra):
    return client.post("/api/v1/messages", json={"from_mailbox": from_mailbox, "to": [to], "subject": subject,
                                                 "body": "Bonjour", **extra})


def audit_rows(server, action: str, mailbox_id: int) -> list:
    async def go():
        async with server.core.read() as s:
            return (await s.execute(sa.select(AuditEvent.account_id, AuditEvent.detail, AuditEvent.seq)
                                    .where(AuditEvent.action == action, AuditEvent.mailbox_id == mailbox_id))).all()

    return server.call(go)


@pytest.fixture
def pair(server, make_user):
    """A doctor (with RPPS) and a secretary (without): usernames, mailbox ids, clients."""
    # An RPPS of its own: a fixed one would be found by other tests' logins by national id.
    rpps = "819" + str(uuid.uuid4().int)[:9]
    doctor, doctor_addr, doctor_box = make_user("Hugo", national_id=rpps)
    secretary, secretary_addr, secretary_box = make_user("Inès")
    doc = server.client(token_of(server, doctor))
    sec = server.client(token_of(server, secretary))
    yield {"doctor": doctor, "doctor_addr": doctor_addr, "doctor_box": doctor_box, "secretary": secretary,
           "secretary_box": secretary_box, "secretary_addr": secretary_addr, "doc": doc, "sec": sec}
    doc.close()
    sec.close()


def test_owner_delegates_both_sides_see_it_and_the_secretary_works_there(server, pair):
    doc, sec, box = pair["doc"], pair["sec"], pair["doctor_box"]
    assert doc.get(f"/api/v1/mailboxes/{box}/delegations").json() == {"items": []}
    r = doc.post(f"/api/v1/mailboxes/{box}/delegations", json={"account": pair["secretary"]})
    assert r.status_code == 201, r.text
    assert r.json()["account"] == pair["secretary"] and r.json()["rights"] == ["read", "draft", "send", "flags"]
    # Again: nothing new (200), same rights.
    assert doc.post(f"/api/v1/mailboxes/{box}/delegations", json={"account": pair["secretary"]}).status_code == 200
    listed = doc.get(f"/api/v1/mailboxes/{box}/delegations").json()["items"]
    assert [d["account"] for d in listed] == [pair["secretary"]]
    # The other side: she holds it, lands in it by default (she has no RPPS), and may use it.
    mine = sec.get("/api/v1/me/delegations").json()
    assert [r["mailbox"]["id"] for r in mine["received"]] == [box] and mine["received"][0]["landing"]
    assert mine["landing_mailbox_id"] == box
    boxes = {b["id"]: b for b in sec.get("/api/v1/mailboxes").json()}
    assert boxes[box]["access"] == "delegate" and boxes[box]["rights"] == ["read", "draft", "send", "flags"]
    assert doc.get("/api/v1/me/delegations").json()["given"][0]["delegates"][0]["account"] == pair["secretary"]
    # She sends on the doctor's behalf: from the doctor's address, her name on record.
    claire = f"claire.roux@{server.settings.domain}"
    sent = send(sec, box, claire, "Préparé par le secrétariat")
    assert sent.status_code == 201, sent.text
    assert sent.json()["sender"]["address"] == pair["doctor_addr"] and sent.json()["on_behalf_of"] == pair["secretary"]
    # She reads a message of the doctor's mailbox: recorded in his access log, by her.
    incoming = send(server.login("claire.roux"), server.login("claire.roux").get("/api/v1/mailboxes").json()[0]["id"],
                    pair["doctor_addr"], "Résultat pour le Dr")
    assert incoming.status_code == 201
    read = sec.get(f"/api/v1/mailboxes/{box}/messages/{incoming.json()['id']}")
    assert read.status_code == 200 and read.json()["state"]["read"] is True
    log = doc.get("/api/v1/me/access-log", params={"others": "true"}).json()["items"]
    actions = [(e["action"], e["actor"]["username"] if e["actor"] else None) for e in log]
    assert ("message.read", pair["secretary"]) in actions and ("message.send", pair["secretary"]) in actions
    read_entry = next(e for e in log if e["action"] == "message.read")
    assert read_entry["mailbox"] == pair["doctor_addr"] and read_entry["detail"]["access"] == "delegate"


def test_read_only_delegate_reads_but_cannot_send_flag_or_mark_read(server, pair):
    doc, sec, box = pair["doc"], pair["sec"], pair["doctor_box"]
    r = doc.post(f"/api/v1/mailboxes/{box}/delegations", json={"account": pair["secretary"], "rights": ["read"]})
    assert r.status_code == 201 and r.json()["rights"] == ["read"] and r.json()["rights_label"] == "lecture seule"
    claire = server.login("claire.roux")
    msg = send(claire, claire.get("/api/v1/mailboxes").json()[0]["id"], pair["doctor_addr"], "À lire seulement").json()
    got = sec.get(f"/api/v1/mailboxes/{box}/messages/{msg['id']}")
    assert got.status_code == 200 and got.json()["state"]["read"] is False  # still new for the doctor
    refused = send(sec, box, f"claire.roux@{server.settings.domain}", "Interdit")
    assert refused.status_code == 403 and "envoyer" in refused.json()["detail"]
    draft = send(sec, box, f"claire.roux@{server.settings.domain}", "Brouillon interdit", draft=True)
    assert draft.status_code == 403 and "brouillon" in draft.json()["detail"]
    flag = sec.patch(f"/api/v1/mailboxes/{box}/messages/{msg['id']}", json={"favorite": True})
    assert flag.status_code == 403 and "classer" in flag.json()["detail"]
    assert doc.get(f"/api/v1/mailboxes/{box}/messages/{msg['id']}").json()["state"]["favorite"] is False
    # Preparing without sending: drafts yes, send no.
    doc.post(f"/api/v1/mailboxes/{box}/delegations", json={"account": pair["secretary"],
                                                           "rights": ["draft", "flags"]})
    assert send(sec, box, f"claire.roux@{server.settings.domain}", "Brouillon", draft=True).status_code == 201
    assert send(sec, box, f"claire.roux@{server.settings.domain}", "Toujours pas").status_code == 403
    assert audit_rows(server, "delegation.update", box)


def test_revoking_stops_the_open_socket_at_once_and_later_use_is_404_audited(server, pair):
    doc, sec, box = pair["doc"], pair["sec"], pair["doctor_box"]
    assert doc.post(f"/api/v1/mailboxes/{box}/delegations", json={"account": pair["secretary"]}).status_code == 201
    claire = server.login("claire.roux")
    claire_box = claire.get("/api/v1/mailboxes").json()[0]["id"]
    with ws(server, sec.headers["Authorization"].split()[1]) as sock:
        next_event(sock, lambda e: e["type"] == "hello")
        send(claire, claire_box, pair["doctor_addr"], "Avant le retrait")
        assert next_event(sock, lambda e: e.get("subject") == "Avant le retrait")["mailbox_id"] == box
        assert doc.delete(f"/api/v1/mailboxes/{box}/delegations/{pair['secretary']}").status_code == 204
        revoked = next_event(sock, lambda e: e["type"] == "mailbox.revoked")
        assert revoked["mailbox_id"] == box and revoked["address"] == pair["doctor_addr"]
        # After it: nothing of the doctor's mailbox, while her own keeps coming.
        send(claire, claire_box, pair["doctor_addr"], "Après le retrait")
        send(claire, claire_box, pair["secretary_addr"], "Pour la secrétaire")
        seen = next_event(sock, lambda e: e["type"] == "message.new")
        assert seen["subject"] == "Pour la secrétaire" and seen["mailbox_id"] == pair["secretary_box"]
    # Both sides see it gone; her later attempts answer 404 and are on record.
    assert doc.get(f"/api/v1/mailboxes/{box}/delegations").json() == {"items": []}
    assert sec.get("/api/v1/me/delegations").json()["received"] == []
    assert sec.get(f"/api/v1/mailboxes/{box}/messages").status_code == 404
    assert send(sec, box, f"claire.roux@{server.settings.domain}", "Trop tard").status_code == 404
    refused = audit_rows(server, "access.refused", box)
    assert len(refused) >= 2 and all(r.seq is not None for r in refused)
    assert audit_rows(server, "delegation.revoke", box)
    # A stranger who never had access gets the same 404, and nothing is recorded for him.
    stranger = server.login("bruno.petit")
    assert stranger.get(f"/api/v1/mailboxes/{box}/messages").status_code == 404
    assert len(audit_rows(server, "access.refused", box)) == len(refused)


def test_delegate_may_give_it_up_but_not_manage_it(server, pair):
    doc, sec, box = pair["doc"], pair["sec"], pair["doctor_box"]
    doc.post(f"/api/v1/mailboxes/{box}/delegations", json={"account": pair["secretary"]})
    # A delegate cannot see or change the list, nor delegate further.
    assert sec.get(f"/api/v1/mailboxes/{box}/delegations").status_code == 403
    r = sec.post(f"/api/v1/mailboxes/{box}/delegations", json={"account": "claire.roux"})
    assert r.status_code == 403 and "titulaire" in r.json()["detail"]
    # Someone else's mailbox: 404, never a hint that it exists.
    assert server.login("claire.roux").get(f"/api/v1/mailboxes/{box}/delegations").status_code == 404
    assert sec.delete(f"/api/v1/mailboxes/{box}/delegations/{pair['secretary']}").status_code == 204
    assert box not in {b["id"] for b in sec.get("/api/v1/mailboxes").json()}


@pytest.mark.parametrize(("body", "status", "words"), [
    ({"account": "personne.inconnue"}, 422, "aucun compte actif"),
    ({"account": ""}, 422, "identifiant"),
    ({"account": "claire.roux", "rights": ["read", "tout"]}, 422, "droits inconnus"),
    ({"account": "x" * 300}, 422, None),
])
def test_bad_delegations_are_refused_and_change_nothing(server, pair, body, status, words):
    doc, box = pair["doc"], pair["doctor_box"]
    r = doc.post(f"/api/v1/mailboxes/{box}/delegations", json=body)
    assert r.status_code == status, r.text
    if words:
        assert words in r.json()["detail"]
    assert doc.get(f"/api/v1/mailboxes/{box}/delegations").json() == {"items": []}


def test_owner_cannot_delegate_to_self_or_a_service_mailbox(server, pair):
    doc, box = pair["doc"], pair["doctor_box"]
    r = doc.post(f"/api/v1/mailboxes/{box}/delegations", json={"account": pair["doctor"]})
    assert r.status_code == 422 and "titulaire" in r.json()["detail"]
    # By the address of a colleague's own mailbox: the colleague's account.
    r = doc.post(f"/api/v1/mailboxes/{box}/delegations", json={"account": f"claire.roux@{server.settings.domain}"})
    assert r.status_code == 201 and r.json()["account"] == "claire.roux"
    assert doc.delete(f"/api/v1/mailboxes/{box}/delegations/claire.roux").status_code == 204
    assert doc.delete(f"/api/v1/mailboxes/{box}/delegations/claire.roux").status_code == 404
    hemostase = server.login("hemostase.admin")
    service = next(b for b in hemostase.get("/api/v1/mailboxes").json() if b["kind"] == "ORG")
    r = hemostase.post(f"/api/v1/mailboxes/{service['id']}/delegations", json={"account": pair["secretary"]})
    assert r.status_code == 403
