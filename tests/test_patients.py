"""Patients through the HTTP API on SQLite and PostgreSQL: INS rules (key, spaces, NIA), the
contract of ``POST/GET /api/v1/patients``, search of messages by INS and name, and who may see a
patient (only professionals linked to them)."""

from __future__ import annotations

import pytest

from monsisra.domain.ins import OID_NIA, InvalidINS, PatientIdentity, format_ins, identity_errors, ins_key, validate_ins
from tests.support import unique

DOMAIN = "monsisra.localhost"
DURAND = "180017510801182"  # a demo patient


def make_ins(first13: str) -> str:
    return first13 + f"{ins_key(first13):02d}"


def fresh_ins(sex: str = "2") -> str:
    """A new valid INS (random order number), so that reruns on one database do not collide."""
    digits = str(int(unique("")[:8], 16) % 1_000_000).zfill(6)
    return make_ins(f"{sex}850563{digits}")


def problem(r, status):
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["detail"] and "Traceback" not in r.text
    return body


def login(server, username, password="secret-pass"):
    return server.login(username, password)


# --- the rule, without I/O ----------------------------------------------------------------------

@pytest.mark.parametrize("typed", ["180017510801182", "1 80 01 75 108 011 82", " 1800175 10801182 ",
                                   "1.80.01.75.108.011.82"])
def test_ins_spaces_as_printed_are_accepted(typed):
    assert validate_ins(typed) == DURAND
    assert format_ins(DURAND) == "1 80 01 75 108 011 82"


@pytest.mark.parametrize(("typed", "words"), [
    ("180017510801183", "clé"), ("18001751080118", "15 caractères"), ("", "obligatoire"),
    ("X80017510801182", "chiffres"), ("180017510801182 9", "15 caractères")])
def test_ins_errors_say_what_is_wrong_in_french(typed, words):
    with pytest.raises(InvalidINS, match=words):
        validate_ins(typed)


def test_corsica_and_nia():
    corsica = make_ins("275082A004123")
    assert validate_ins(corsica) == corsica
    nia = make_ins("8800175108011")
    assert validate_ins(nia) == nia
    assert identity_errors(PatientIdentity(ins=nia, oid=OID_NIA)) == {}
    # A NIA named with the NIR's OID is refused with the reason.
    assert "NIA" in identity_errors(PatientIdentity(ins=nia))["ins"]


def test_identity_traits_checked_field_by_field():
    p = PatientIdentity(ins="1 80 01 75 108 011 82", family_name=" durand ", given_names="Pierre  Marie",
                        birth_date="1980-02-30", sex="x", birthplace="7A123")
    errors = identity_errors(p)
    assert set(errors) == {"birth_date", "sex", "birthplace"}
    assert p.ins == DURAND and p.family_name == "DURAND" and p.given_names == "Pierre Marie"


# --- the API ------------------------------------------------------------------------------------

def test_create_returns_same_patient_for_same_ins(server, make_user):
    user, _, _ = make_user("Paul")
    c = login(server, user)
    ins = fresh_ins()
    body = {"ins": format_ins(ins), "oid": "1.2.250.1.213.1.4.8", "family_name": "Lefèvre",
            "given_names": "Hélène Anne", "birth_date": "1985-05-06", "sex": "F", "birthplace": "63113"}
    r = c.post("/api/v1/patients", json=body)
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["id"] and created["ins"] == ins and created["family_name"] == "LEFÈVRE"
    assert created["care_team"] == {"me": False, "count": 0}
    again = c.post("/api/v1/patients", json=body | {"ins": ins})
    assert again.status_code == 200 and again.json()["id"] == created["id"]
    # Found by INS (with spaces) and by fragments of names, accents forgiven.
    found = c.get("/api/v1/patients", params={"ins": format_ins(ins)}).json()["items"]
    assert [p["id"] for p in found] == [created["id"]]
    assert created["id"] in [p["id"] for p in c.get("/api/v1/patients", params={"q": "helene lefev"}).json()["items"]]
    assert c.get(f"/api/v1/patients/{created['id']}").json()["birthplace"] == "63113"


def test_wrong_ins_is_a_french_422_naming_the_field_and_nothing_is_written(server, make_user):
    user, _, _ = make_user("Lise")
    c = login(server, user)
    body = problem(c.post("/api/v1/patients", json={"ins": "1 80 01 75 108 011 83", "family_name": "X"}), 422)
    assert "clé" in body["detail"] and "clé" in body["errors"]["ins"]
    body = problem(c.post("/api/v1/patients", json={"ins": fresh_ins(), "birth_date": "2999-01-01"}), 422)
    assert "birth_date" in body["errors"]
    problem(c.get("/api/v1/patients", params={"ins": "123"}), 422)
    problem(c.get("/api/v1/patients"), 422)
    assert c.get("/api/v1/patients", params={"q": "zzzzzz"}).json() == {"items": []}


def test_only_linked_professionals_see_a_patient(server, make_user):
    doctor, _, _ = make_user("Marc")
    nurse, nurse_addr, _ = make_user("Nina")
    outsider, _, _ = make_user("Oscar")
    d, n, o = login(server, doctor), login(server, nurse), login(server, outsider)
    ins = fresh_ins("1")
    pid = d.post("/api/v1/patients", json={"ins": ins, "family_name": "Garnier", "given_names": "Louis"}).json()["id"]
    # Neither the nurse nor the outsider has a link yet: 404, and searches find nothing.
    for c in (n, o):
        problem(c.get(f"/api/v1/patients/{pid}"), 404)
        assert c.get("/api/v1/patients", params={"ins": ins}).json()["items"] == []
        assert c.get("/api/v1/patients", params={"q": "garnier"}).json()["items"] == []
        problem(c.put(f"/api/v1/patients/{pid}/care-team/me"), 404)
    # A letter about the patient links the nurse (she received it), not the outsider.
    box = d.get("/api/v1/mailboxes").json()[0]["id"]
    r = d.post("/api/v1/messages", json={"from_mailbox": box, "to": [nurse_addr], "subject": "Pansement",
                                         "body": "Soins à domicile", "patient": {"ins": ins}})
    assert r.status_code == 201, r.text
    assert n.get(f"/api/v1/patients/{pid}").json()["ins"] == ins
    assert [p["id"] for p in n.get("/api/v1/patients", params={"q": "Garnier"}).json()["items"]] == [pid]
    problem(o.get(f"/api/v1/patients/{pid}"), 404)
    # The outsider who types the INS registers the patient: the identity, not the record.
    assert o.post("/api/v1/patients", json={"ins": ins}).json()["id"] == pid
    problem(o.get(f"/api/v1/patients/{pid}/record"), 403)


def test_messages_found_by_ins_and_patient_name(server, make_user):
    sender, _, _ = make_user("Sam")
    reader, reader_addr, reader_box = make_user("Rita")
    s, r = login(server, sender), login(server, reader)
    ins = fresh_ins()
    box = s.get("/api/v1/mailboxes").json()[0]["id"]
    sent = s.post("/api/v1/messages", json={
        "from_mailbox": box, "to": [reader_addr], "subject": "Bilan", "body": "Résultats joints",
        "patient": {"ins": ins, "family_name": "Müller", "given_names": "Élodie"}})
    assert sent.status_code == 201, sent.text
    for q in (ins, format_ins(ins), "muller", "elodie"):
        items = r.get(f"/api/v1/mailboxes/{reader_box}/messages", params={"view": "all", "q": q}).json()["items"]
        assert [i["id"] for i in items] == [sent.json()["id"]], q


def test_demo_patient_visible_to_demo_doctor(server):
    alice = server.login("alice.martin")
    [item] = alice.get("/api/v1/patients", params={"ins": format_ins(DURAND)}).json()["items"]
    assert item["family_name"] == "DURAND"
    assert alice.get(f"/api/v1/patients/{item['id']}").status_code == 200


def test_compose_page_links_a_patient_and_shows_the_ins_error_next_to_the_field(server, make_user):
    from tests.test_web import csrf_of, web_login

    sender, _, sender_box = make_user("Wanda")
    _, rcpt_address, _ = make_user("Xavier")
    ins = fresh_ins()
    with web_login(server, sender, "secret-pass") as web:
        page = web.get("/ecrire").text
        assert 'id="patient_ins"' in page
        token = csrf_of(page)
        form = {"csrf": token, "from_mailbox": sender_box, "to": rcpt_address, "subject": "Ordonnance",
                "body": "Ci-joint", "category": "letter", "patient_family_name": "Petitjean"}
        bad = web.post("/ecrire", data=form | {"patient_ins": ins[:-2] + f"{(int(ins[-2:]) + 1) % 97:02d}"})
        assert bad.status_code == 422
        assert 'id="patient_ins-error"' in bad.text and "clé de l&#39;INS" in bad.text
        assert 'value="Petitjean"' in bad.text
        sent = web.post("/ecrire", data=form | {"patient_ins": format_ins(ins)})
        assert sent.status_code == 303, sent.text
    client = server.login(sender, "secret-pass")
    [patient] = client.get("/api/v1/patients", params={"ins": ins}).json()["items"]
    assert patient["family_name"] == "PETITJEAN"
    # The patient page offers to write about them: the compose form comes filled in.
    with web_login(server, sender, "secret-pass") as web:
        assert f'value="{ins}"' in web.get("/ecrire", params={"patient": patient["id"]}).text
