"""Support requests (« Demandes d'appui ») through the HTTP API on SQLite and PostgreSQL, with a
resource team and accounts made for the test: new → taken (one member, shown to everyone; taking
twice is a French 409) → closed (closing twice: 409), a letter in the team's mailbox, a
conversation attached, both sides' lists, and outsiders kept out."""

from __future__ import annotations

import concurrent.futures

from monsisra.domain.ins import ins_key
from monsisra.domain.model import Access
from monsisra.services import conversations, mailboxes
from monsisra.services.core import Actor
from tests.support import unique


def fresh_ins() -> str:
    first13 = f"2680563{int(unique('')[:8], 16) % 1_000_000:06d}"
    return first13 + f"{ins_key(first13):02d}"


def problem(r, status):
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["detail"] and "Traceback" not in r.text
    return r.json()


def resource_team(server, make_user, members: int = 2):
    """A coordination structure's mailbox (DAC-like) with fresh members; returns (address, box id, [clients])."""
    local = unique("dac")
    box = server.call(mailboxes.create_service_mailbox, server.core, local=local, display_name=f"DAC test {local}",
                      organisation="Dispositif d'appui à la coordination", is_resource_team=True)
    clients = []
    for i in range(members):
        username, _, _ = make_user(f"Coord{i}", last=unique("COORD"))
        account = server.login(username, "secret-pass")
        server.call(mailboxes.grant, server.core, box.id, account.get("/api/v1/me").json()["id"], Access.MEMBER)
        clients.append(account)
    return box.address, box.id, clients


def test_request_taken_once_then_closed_seen_on_both_sides(server, make_user):
    team_addr, team_box, (m1, m2) = resource_team(server, make_user)
    requester, _, req_box = make_user("Renée", profession="Médecin")
    outsider, _, _ = make_user("Oscar")
    r, o = server.login(requester, "secret-pass"), server.login(outsider, "secret-pass")
    ins = fresh_ins()
    created = r.post("/api/v1/support-requests", json={
        "to": team_addr, "reason": "Patiente isolée, chutes répétées : évaluation à domicile ?", "urgency": "urgent",
        "patient": {"ins": ins, "family_name": "Roche", "given_names": "Odette", "birth_date": "1938-05-12",
                    "sex": "F"}})
    assert created.status_code == 201, created.text
    req = created.json()
    assert req["state"] == "new" and req["urgency"] == "urgent" and req["conversation_id"]
    assert req["from"]["mailbox_id"] == req_box and req["to"]["address"] == team_addr
    assert req["patient"]["ins"] == ins and req["taken_by"] is None

    # Both sides list it; the team gets it as a letter of category « support ».
    [sent] = [i for i in r.get("/api/v1/support-requests", params={"role": "sent"}).json()["items"]
              if i["id"] == req["id"]]
    assert sent["state"] == "new" and not sent["may_take"]
    [got] = [i for i in m1.get("/api/v1/support-requests", params={"role": "received", "state": "new"}).json()["items"]
             if i["id"] == req["id"]]
    assert got["may_take"] and got["reason"].startswith("Patiente isolée")
    letters = m1.get(f"/api/v1/mailboxes/{team_box}/messages", params={"category": "support"}).json()["items"]
    letter = next(i for i in letters if i["id"] == req["message_id"])
    assert letter["context"] == {"type": "support_request", "id": req["id"]} and letter["subject"].startswith("URGENT")
    # The conversation attached gathers the requester and the team, about the patient.
    m1_actor = Actor(account_id=m1.get("/api/v1/me").json()["id"], username="m1")
    conv = server.call(conversations.get, server.core, m1_actor, req["conversation_id"])
    assert {p["address"] for p in conv["participants"]} >= {team_addr}
    # The member of the team now sees the patient (a link), not yet the record.
    assert m1.get(f"/api/v1/patients/{req['patient']['id']}").status_code == 200

    # Outsiders: nothing.
    problem(o.get(f"/api/v1/support-requests/{req['id']}"), 404)
    problem(o.post(f"/api/v1/support-requests/{req['id']}/take"), 404)
    assert all(i["id"] != req["id"] for i in o.get("/api/v1/support-requests").json()["items"])
    # The requester does not take their own request.
    problem(r.post(f"/api/v1/support-requests/{req['id']}/take"), 403)

    taken = m2.post(f"/api/v1/support-requests/{req['id']}/take")
    assert taken.status_code == 200, taken.text
    assert taken.json()["state"] == "taken" and "Coord1" in taken.json()["taken_by"]["name"]
    body = problem(m1.post(f"/api/v1/support-requests/{req['id']}/take"), 409)
    assert "déjà prise en charge par" in body["detail"] and "Coord1" in body["detail"]
    # Shown to all: the other member and the requester read who took it.
    for c, role in ((m1, "received"), (r, "sent")):
        [item] = [i for i in c.get("/api/v1/support-requests", params={"role": role}).json()["items"]
                  if i["id"] == req["id"]]
        assert item["state"] == "taken" and "Coord1" in item["taken_by"]["name"]

    closed = r.post(f"/api/v1/support-requests/{req['id']}/close")
    assert closed.status_code == 200 and closed.json()["state"] == "closed"
    assert closed.json()["closed_by"]["name"]
    problem(m1.post(f"/api/v1/support-requests/{req['id']}/close"), 409)
    problem(m1.post(f"/api/v1/support-requests/{req['id']}/take"), 409)
    assert m1.get(f"/api/v1/support-requests/{req['id']}").json()["state"] == "closed"
    assert [i["id"] for i in m1.get("/api/v1/support-requests", params={"role": "received", "state": "closed"})
            .json()["items"]].count(req["id"]) == 1


def test_two_members_take_at_once_exactly_one_wins(server, make_user):
    team_addr, _, members = resource_team(server, make_user, members=4)
    requester, _, _ = make_user("Rémi")
    r = server.login(requester, "secret-pass")
    req = r.post("/api/v1/support-requests", json={"to": team_addr, "reason": "Coordination de sortie"}).json()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        codes = sorted(pool.map(lambda c: c.post(f"/api/v1/support-requests/{req['id']}/take").status_code, members))
    assert codes == [200, 409, 409, 409]


def test_bad_requests_are_refused_in_french_and_change_nothing(server, make_user):
    team_addr, _, (m1,) = resource_team(server, make_user, members=1)
    requester, _, _ = make_user("Rose")
    r = server.login(requester, "secret-pass")
    before = len(m1.get("/api/v1/support-requests").json()["items"])
    body = problem(r.post("/api/v1/support-requests", json={"to": "bruno.petit@monsisra.localhost",
                                                            "reason": "x"}), 422)
    assert "équipe ressource" in body["detail"] and "to" in body["errors"]
    problem(r.post("/api/v1/support-requests", json={"to": team_addr, "reason": "   "}), 422)
    problem(r.post("/api/v1/support-requests", json={"to": team_addr, "reason": "x", "urgency": "vite"}), 422)
    body = problem(r.post("/api/v1/support-requests", json={"to": team_addr, "reason": "x",
                                                            "patient": {"ins": "180017510801183"}}), 422)
    assert "clé" in body["detail"]
    problem(r.post("/api/v1/support-requests", json={"to": team_addr, "reason": "x", "attachments": ["nope"]}), 404)
    problem(r.get("/api/v1/support-requests", params={"role": "all"}), 422)
    assert len(m1.get("/api/v1/support-requests").json()["items"]) == before
    assert r.get("/api/v1/support-requests", params={"role": "sent"}).json()["items"] == []


def test_demo_request_to_dac63_taken_by_its_coordinator(server):
    alice, dac = server.login("alice.martin"), server.login("dac63.admin")
    req = alice.post("/api/v1/support-requests", json={
        "to": "dac63@monsisra.localhost", "reason": "Maintien à domicile de M. DURAND",
        "patient": {"ins": "180017510801182"}}).json()
    assert req["state"] == "new" and req["patient"]["family_name"] == "DURAND"
    taken = dac.post(f"/api/v1/support-requests/{req['id']}/take").json()
    assert taken["state"] == "taken" and taken["taken_by"]["account_id"] == dac.get("/api/v1/me").json()["id"]
