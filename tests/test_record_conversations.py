"""Conversations in the shared record, through HTTP on SQLite and PostgreSQL, with fresh accounts:
files posted in a patient's conversation are documents of the record (author, date, conversation,
audited download); a care-team member who is not a participant reads the conversation read-only
from the record (audited, no receipt, cannot write); an outsider gets the same 404 as for a
conversation that does not exist, and the refusal is audited."""

from __future__ import annotations

from monsisra.services.demo import minimal_pdf
from tests.test_care_team_record import account_id, audit_of, problem, setup_patient
from tests.test_web import web_login

MISSING = 2_147_483_000


def conversation_about(server, make_user, g, pid):
    """The GP opens a conversation about the patient with a colleague (not the nurse) and posts
    a PDF in it; returns (colleague client, conversation, posted file)."""
    colleague, colleague_addr, _ = make_user("Claire", profession="Médecin")
    c = server.login(colleague, "secret-pass")
    conv = g.post("/api/v1/conversations", json={"title": "Avis cicatrisation", "participants": [colleague_addr],
                                                 "patient_id": pid, "body": "Qu'en penses-tu ?"})
    assert conv.status_code == 201, conv.text
    up = g.post("/api/v1/attachments", files={"file": ("compte-rendu.pdf", minimal_pdf(["CR"]), "application/pdf")})
    posted = g.post(f"/api/v1/conversations/{conv.json()['id']}/messages",
                    json={"body": "Le compte rendu", "attachments": [up.json()["id"]]})
    assert posted.status_code == 201, posted.text
    return c, conv.json(), posted.json()["attachments"][0]


def test_conversation_files_are_record_documents(server, make_user):
    g, n, o, pid, _sent, _att = setup_patient(server, make_user)
    _c, conv, file = conversation_about(server, make_user, g, pid)
    n_id, o_id = account_id(n), account_id(o)
    n.put(f"/api/v1/patients/{pid}/care-team/me")
    items = n.get(f"/api/v1/patients/{pid}/record", params={"kind": "document"}).json()["items"]
    doc = next(i for i in items if i["id"] == file["id"])
    assert doc["title"] == "compte-rendu.pdf" and doc["conversation_id"] == conv["id"]
    assert doc["conversation_title"] == "Avis cicatrisation" and "Avis cicatrisation" in doc["summary"]
    assert "Gilles" in doc["author"]["name"] and doc["at"]
    assert doc["url"] == f"/api/v1/patients/{pid}/record/documents/{file['id']}"
    got = n.get(doc["url"])
    assert got.status_code == 200 and got.content.startswith(b"%PDF")
    assert [who for a, who in audit_of(server, pid) if a == "patient.record.document"] == [n_id]
    # The nurse is no participant: the generic attachment route still refuses her.
    problem(n.get(f"/api/v1/attachments/{file['id']}"), 404)
    # Outside the team: refused and audited, the bytes never served.
    before = [who for a, who in audit_of(server, pid) if a == "patient.record.refused"]
    problem(o.get(doc["url"]), 403)
    assert [who for a, who in audit_of(server, pid) if a == "patient.record.refused"] == [*before, o_id]
    # A file of another patient's conversation is not a document of this record.
    g2, _n2, _o2, pid2, _s2, _a2 = setup_patient(server, make_user)
    _c2, _conv2, other = conversation_about(server, make_user, g2, pid2)
    problem(n.get(f"/api/v1/patients/{pid}/record/documents/{other['id']}"), 404)


def test_care_team_reads_a_conversation_read_only_from_the_record(server, make_user):
    g, n, o, pid, _sent, _att = setup_patient(server, make_user)
    c, conv, file = conversation_about(server, make_user, g, pid)
    cid = conv["id"]
    n_id, o_id = account_id(n), account_id(o)
    n.put(f"/api/v1/patients/{pid}/care-team/me")
    g.put(f"/api/v1/patients/{pid}/care-team/me")

    # The record says who takes part: the GP opens the chat, the nurse the read-only view.
    mine = next(i for i in g.get(f"/api/v1/patients/{pid}/record").json()["items"] if i["kind"] == "conversation")
    theirs = next(i for i in n.get(f"/api/v1/patients/{pid}/record").json()["items"] if i["kind"] == "conversation")
    assert mine["participant"] is True and theirs["participant"] is False and theirs["conversation_id"] == cid

    # The chat itself stays the participants' (404); the record's view opens, read-only, audited.
    problem(n.get(f"/api/v1/conversations/{cid}"), 404)
    seen = n.get(f"/api/v1/patients/{pid}/record/conversations/{cid}")
    assert seen.status_code == 200, seen.text
    view = seen.json()
    assert view["read_only"] is True and view["me"]["consultation"] is True and view["me"]["can_write"] is False
    assert [m["body"] for m in view["messages"]["items"]] == ["Qu'en penses-tu ?", "Le compte rendu"]
    assert view["messages"]["items"][1]["attachments"][0]["id"] == file["id"]
    assert {p["address"] for p in view["participants"]} == {p["address"] for p in conv["participants"]}
    assert [who for a, who in audit_of(server, pid) if a == "patient.conversation.consult"] == [n_id]
    n.get(f"/api/v1/patients/{pid}/record/conversations/{cid}")
    assert [who for a, who in audit_of(server, pid) if a == "patient.conversation.consult"] == [n_id, n_id]

    # Read-only for real: no post, no read receipt, no typing; nothing changed for the participants.
    problem(n.post(f"/api/v1/conversations/{cid}/messages", json={"body": "intrusion"}), 404)
    problem(n.post(f"/api/v1/conversations/{cid}/read"), 404)
    problem(n.post(f"/api/v1/conversations/{cid}/typing"), 404)
    after = g.get(f"/api/v1/conversations/{cid}").json()
    assert [m["body"] for m in after["messages"]["items"]] == ["Qu'en penses-tu ?", "Le compte rendu"]
    assert {p["address"] for p in after["participants"]} == {p["address"] for p in conv["participants"]}
    assert not any(p["last_read_by"] and "Inès" in p["last_read_by"] for p in after["participants"])

    # Outsiders (no team, or a participant outside the team): the same 404 as a missing one.
    missing = problem(o.get(f"/api/v1/patients/{pid}/record/conversations/{MISSING}"), 404)["detail"]
    assert problem(o.get(f"/api/v1/patients/{pid}/record/conversations/{cid}"), 404)["detail"] == missing
    problem(c.get(f"/api/v1/patients/{pid}/record/conversations/{cid}"), 404)
    assert o_id in [who for a, who in audit_of(server, pid) if a == "patient.record.refused"]
    # A team member cannot reach another patient's conversation through this patient's record.
    g2, _n2, _o2, pid2, _s2, _a2 = setup_patient(server, make_user)
    _c2, conv2, _f2 = conversation_about(server, make_user, g2, pid2)
    problem(n.get(f"/api/v1/patients/{pid}/record/conversations/{conv2['id']}"), 404)
    # Withdrawn from the team, the view closes.
    n.delete(f"/api/v1/patients/{pid}/care-team/me")
    problem(n.get(f"/api/v1/patients/{pid}/record/conversations/{cid}"), 404)


def test_record_conversation_page_is_read_only(server, make_user):
    g, n, o, pid, _sent, _att = setup_patient(server, make_user)
    _c, conv, file = conversation_about(server, make_user, g, pid)
    n.put(f"/api/v1/patients/{pid}/care-team/me")
    nurse = n.get("/api/v1/me").json()["username"]
    outsider = o.get("/api/v1/me").json()["username"]
    url = f"/patients/{pid}/dossier/conversations/{conv['id']}"
    with web_login(server, nurse, "secret-pass") as web:
        record = web.get(f"/patients/{pid}/dossier")
        assert record.status_code == 200 and f'href="{url}"' in record.text
        assert f"/patients/{pid}/dossier/documents/{file['id']}" in record.text
        page = web.get(url)
        assert page.status_code == 200, page.text
        assert "Consultation depuis le dossier partagé" in page.text and "Le compte rendu" in page.text
        assert 'id="composer' not in page.text and "chat.js" not in page.text
        assert f"/patients/{pid}/dossier/documents/{file['id']}" in page.text
        assert web.get(f"/patients/{pid}/dossier/documents/{file['id']}").status_code == 200
        assert web.get(f"/conversations/{conv['id']}").status_code == 404
    with web_login(server, outsider, "secret-pass") as web:
        refused = web.get(url)
        assert refused.status_code == 404 and "Le compte rendu" not in refused.text
