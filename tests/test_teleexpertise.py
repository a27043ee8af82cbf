"""Tele-expertise through the HTTP API on SQLite and PostgreSQL, with accounts made for the test
(not the demo's): the full flow with an expert service (assign, elements asked and provided,
answer, report, summary), billing lines (RQD / TE2, never twice), the CSV export by the CLI in a
subprocess, statistics, and every bad input of issue 14 refused in French with nothing changed."""

from __future__ import annotations

import concurrent.futures
import csv
import io
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from monsisra.domain.ins import ins_key
from monsisra.domain.model import Access
from monsisra.domain.teleexpertise import luhn_key
from monsisra.services import mailboxes
from monsisra.store.models import Attachment
from tests.support import unique

REQ_NUMBER = "15123456" + str(luhn_key("15123456"))
EXP_NUMBER = "63123456" + str(luhn_key("63123456"))


def fresh_ins(first: str = "1") -> str:
    first13 = f"{first}680563{int(unique('')[:8], 16) % 1_000_000:06d}"
    return first13 + f"{ins_key(first13):02d}"


def problem(r, status):
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["detail"] and "Traceback" not in r.text
    return r.json()


def expert_service(server, make_user, members: int = 2):
    """An expert service mailbox with fresh doctor members; returns (address, box id, [clients])."""
    local = unique("avis")
    box = server.call(mailboxes.create_service_mailbox, server.core, local=local, display_name=f"Avis test {local}",
                      organisation="CHU test", is_expert=True, description="Avis d'hémostase sur dossier.")
    clients = []
    for i in range(members):
        username, _, _ = make_user(f"Expert{i}", last=unique("EXP"), profession="Médecin", profession_code="10",
                                   national_id=f"8{int(unique('')[1:], 16) % 10**11:011d}")
        account = server.login(username, "secret-pass")
        server.call(mailboxes.grant, server.core, box.id, account.get("/api/v1/me").json()["id"], Access.MEMBER)
        clients.append(account)
    return box.address, box.id, clients


def requester(server, make_user, profession: str = "Médecin", code: str | None = "10"):
    username, _, box = make_user("Requérante", last=unique("REQ"), profession=profession, profession_code=code)
    return server.login(username, "secret-pass"), box


def payload(expert: str, ins: str, **over):
    body = {"expert": expert, "patient": {"ins": ins, "family_name": "Faure", "given_names": "Lucie",
                                          "birth_date": "1984-03-02", "sex": "F"},
            "consent": {"given": True, "by": "patient", "at": datetime.now(UTC).isoformat()},
            "question": "TCA allongé isolé avant chirurgie : bilan complémentaire ?", "attachments": [],
            "billing_number": REQ_NUMBER}
    body.update(over)
    return body


def upload(client, name: str, data: bytes) -> str:
    r = client.post("/api/v1/attachments", files={"file": (name, data, "application/pdf")})
    assert r.status_code in (200, 201), r.text
    return r.json()["id"]


def test_full_flow_report_summary_billing_and_stats(server, make_user):
    address, box_id, (m1, m2) = expert_service(server, make_user)
    r, r_box = requester(server, make_user)
    pdf = upload(r, "bilan.pdf", b"%PDF-1.4 bilan de coagulation\n")
    created = r.post("/api/v1/teleexpertises", json=payload(address, fresh_ins(), attachments=[pdf]))
    assert created.status_code == 201, created.text
    te = created.json()
    assert te["state"] == "submitted" and te["awaited"] == "expert" and te["expert"]["address"] == address
    assert te["steps"][0]["attachments"] == [pdf]

    # The expert side lists it; outsiders see nothing.
    [got] = [i for i in m1.get("/api/v1/teleexpertises", params={"role": "expert", "state": "submitted"})
             .json()["items"] if i["id"] == te["id"]]
    assert "assign" in got["actions"] and got["patient"]["family_name"]
    outsider, _ = requester(server, make_user)
    problem(outsider.get(f"/api/v1/teleexpertises/{te['id']}"), 404)
    problem(outsider.post(f"/api/v1/teleexpertises/{te['id']}/answer", json={"body": "x"}), 404)
    # The request's PDF is readable by the expert service (the letter carried it).
    assert m1.get(f"/api/v1/attachments/{pdf}").status_code == 200

    assigned = m2.post(f"/api/v1/teleexpertises/{te['id']}/assign")
    assert assigned.status_code == 200, assigned.text
    assert "Expert1" in assigned.json()["assigned_to"]["name"]
    body = problem(m1.post(f"/api/v1/teleexpertises/{te['id']}/assign"), 409)
    assert "déjà prise en charge par" in body["detail"]
    assert "Expert1" in r.get(f"/api/v1/teleexpertises/{te['id']}").json()["assigned_to"]["name"]

    asked = m2.post(f"/api/v1/teleexpertises/{te['id']}/request-elements",
                    json={"body": "Merci de joindre le dosage du facteur VIII."})
    assert asked.status_code == 200 and asked.json()["state"] == "elements_requested"
    assert asked.json()["awaited"] == "requester"
    # Answering while elements are awaited: not allowed by the state.
    problem(m2.post(f"/api/v1/teleexpertises/{te['id']}/answer", json={"body": "x", "billing_number": EXP_NUMBER}),
            409)
    fviii = upload(r, "facteur8.pdf", b"%PDF-1.4 FVIII 45 %\n")
    provided = r.post(f"/api/v1/teleexpertises/{te['id']}/provide-elements",
                      json={"body": "Voici le dosage.", "attachments": [fviii]})
    assert provided.status_code == 200 and provided.json()["state"] == "submitted"
    assert m2.get(f"/api/v1/attachments/{fviii}").status_code == 200

    # The requester is not the expert; a non-assigned member waits for the assignee.
    assert problem(r.post(f"/api/v1/teleexpertises/{te['id']}/answer", json={"body": "x"}), 403)["detail"]
    problem(m1.post(f"/api/v1/teleexpertises/{te['id']}/answer", json={"body": "x", "billing_number": EXP_NUMBER}),
            409)
    answered = m2.post(f"/api/v1/teleexpertises/{te['id']}/answer",
                       json={"body": "Hémophilie A mineure probable : avis hématologique avant le geste.",
                             "billing_number": EXP_NUMBER})
    assert answered.status_code == 200, answered.text
    a = answered.json()
    assert a["state"] == "answered" and a["report_message_id"] and a["report_attachment_id"]
    assert [s["action"] for s in a["steps"]] == ["submit", "assign", "request_elements", "provide_elements", "answer"]
    # The report is in the requester's mailbox, a PDF.
    msg = r.get(f"/api/v1/mailboxes/{r_box}/messages/{a['report_message_id']}").json()
    assert msg["subject"] == "Compte rendu de téléexpertise" and msg["category"] == "teleexpertise"
    rep = r.get(f"/api/v1/attachments/{a['report_attachment_id']}")
    assert rep.status_code == 200 and rep.content.startswith(b"%PDF")

    # Billing: RQD for the requester, TE2 for the member who answered, not for the service.
    month = datetime.now(UTC).strftime("%Y-%m")
    mine = [i for i in r.get("/api/v1/billing", params={"month": month}).json()["items"]
            if i["teleexpertise_id"] == te["id"]]
    assert [(i["code"], i["amount_eur"], i["billing_number"]) for i in mine] == [("RQD", 10.0, REQ_NUMBER)]
    assert mine[0]["patient_nir"] == te["patient"]["ins"]
    theirs = [i for i in m2.get("/api/v1/billing", params={"month": month}).json()["items"]
              if i["teleexpertise_id"] == te["id"]]
    assert [(i["code"], i["amount_eur"], i["billing_number"]) for i in theirs] == [("TE2", 20.0, EXP_NUMBER)]
    assert not [i for i in m1.get("/api/v1/billing", params={"month": month}).json()["items"]
                if i["teleexpertise_id"] == te["id"]]
    # Answering again: refused by the state, and the act is never billed twice.
    problem(m2.post(f"/api/v1/teleexpertises/{te['id']}/answer", json={"body": "bis", "billing_number": EXP_NUMBER}),
            409)
    assert len([i for i in m2.get("/api/v1/billing", params={"month": month}).json()["items"]
                if i["teleexpertise_id"] == te["id"]]) == 1
    problem(r.get("/api/v1/billing", params={"month": "2026-13"}), 422)

    closed = r.post(f"/api/v1/teleexpertises/{te['id']}/close")
    assert closed.status_code == 200 and closed.json()["state"] == "closed" and closed.json()["summary_message_id"]
    problem(r.post(f"/api/v1/teleexpertises/{te['id']}/close"), 409)
    problem(r.post(f"/api/v1/teleexpertises/{te['id']}/cancel"), 409)
    summary = m1.get(f"/api/v1/mailboxes/{box_id}/messages/{closed.json()['summary_message_id']}").json()
    assert summary["subject"] == "Synthèse de la téléexpertise"

    stats = m1.get("/api/v1/teleexpertises/stats", params={"mailbox_id": box_id}).json()["items"]
    assert stats[0]["month"] == month and stats[0]["received"] == 1 and stats[0]["answered"] == 1
    assert stats[0]["median_answer_hours"] is not None

    # The operator's CSV export, by the CLI in a subprocess.
    out = subprocess.run([sys.executable, "-m", "monsisra.cli", "billing", "export", "--month", month],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "MONSISRA_DATABASE_URL": server.settings.database_url,
                              "MONSISRA_DATA_DIR": str(server.settings.data_dir)})
    assert out.returncode == 0, out.stderr
    rows = [row for row in csv.DictReader(io.StringIO(out.stdout)) if row["teleexpertise_id"] == str(te["id"])]
    assert sorted((row["code"], row["amount_eur"]) for row in rows) == [("RQD", "10.00"), ("TE2", "20.00")]
    bad = subprocess.run([sys.executable, "-m", "monsisra.cli", "billing", "export", "--month", "mars"],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "MONSISRA_DATABASE_URL": server.settings.database_url,
                              "MONSISRA_DATA_DIR": str(server.settings.data_dir)})
    assert bad.returncode != 0 and "AAAA-MM" in bad.stderr + bad.stdout


def test_decline_and_cancel(server, make_user):
    address, _, (m1,) = expert_service(server, make_user, members=1)
    r, _ = requester(server, make_user)
    te = r.post("/api/v1/teleexpertises", json=payload(address, fresh_ins())).json()
    problem(m1.post(f"/api/v1/teleexpertises/{te['id']}/decline", json={"reason": ""}), 422)
    problem(m1.post(f"/api/v1/teleexpertises/{te['id']}/cancel"), 403)
    declined = m1.post(f"/api/v1/teleexpertises/{te['id']}/decline", json={"reason": "Hors de notre champ."})
    assert declined.json()["state"] == "declined" and declined.json()["decline_reason"] == "Hors de notre champ."
    problem(r.post(f"/api/v1/teleexpertises/{te['id']}/cancel"), 409)
    te2 = r.post("/api/v1/teleexpertises", json=payload(address, fresh_ins())).json()
    cancelled = r.post(f"/api/v1/teleexpertises/{te2['id']}/cancel")
    assert cancelled.json()["state"] == "cancelled"
    problem(m1.post(f"/api/v1/teleexpertises/{te2['id']}/answer", json={"body": "x", "billing_number": EXP_NUMBER}),
            409)
    listed = r.get("/api/v1/teleexpertises", params={"role": "requester"}).json()["items"]
    states = {i["id"]: i["state"] for i in listed}
    assert states[te["id"]] == "declined" and states[te2["id"]] == "cancelled"


def test_bad_inputs_refused_in_french_and_nothing_changed(server, make_user):
    address, _, (m1,) = expert_service(server, make_user, members=1)
    r, _ = requester(server, make_user)
    ins = fresh_ins()

    def count():
        return len(m1.get("/api/v1/teleexpertises", params={"role": "expert"}).json()["items"])

    before = count()
    assert "consentement" in problem(r.post("/api/v1/teleexpertises", json=payload(address, ins, consent=None)),
                                     422)["detail"]
    assert "consentement" in problem(r.post("/api/v1/teleexpertises", json=payload(
        address, ins, consent={"given": False, "by": "patient", "at": "2026-01-01T10:00:00+00:00"})), 422)["detail"]
    problem(r.post("/api/v1/teleexpertises", json=payload(address, ins, consent={"given": True, "at": "hier"})), 422)
    assert "INS" in problem(r.post("/api/v1/teleexpertises", json=payload(address, ins, patient=None)), 422)["detail"]
    problem(r.post("/api/v1/teleexpertises", json=payload(address, ins[:-2] + "00")), 422)
    nia_patient = {"ins": fresh_ins("7"), "oid": "1.2.250.1.213.1.4.9", "family_name": "Faure"}
    nia = problem(r.post("/api/v1/teleexpertises", json=payload(address, ins, patient=nia_patient)), 422)
    assert "NIR" in nia["detail"] and "NIA" in nia["detail"]
    assert "numéro AM" in problem(r.post("/api/v1/teleexpertises", json=payload(address, ins, billing_number="")),
                                  422)["detail"]
    assert "Luhn" in problem(r.post("/api/v1/teleexpertises", json=payload(
        address, ins, billing_number=REQ_NUMBER[:-1] + str((int(REQ_NUMBER[-1]) + 1) % 10))), 422)["detail"]
    problem(r.post("/api/v1/teleexpertises", json=payload(address, ins, question="  ")), 422)
    # Not an expert; a profession that may not request.
    problem(r.post("/api/v1/teleexpertises", json=payload("nobody@monsisra.localhost", ins)), 422)
    pharmacist, _ = requester(server, make_user, profession="Pharmacien", code="21")
    assert "ne peut pas demander" in problem(pharmacist.post("/api/v1/teleexpertises", json=payload(address, ins)),
                                             403)["detail"]
    assert count() == before

    # Four per patient and requester in 12 months; the fifth is a French 409.
    for _ in range(4):
        assert r.post("/api/v1/teleexpertises", json=payload(address, ins)).status_code == 201
    fifth = problem(r.post("/api/v1/teleexpertises", json=payload(address, ins)), 409)
    assert "12 derniers mois" in fifth["detail"]
    assert count() == before + 4
    # Another requester for the same patient is not concerned.
    other, _ = requester(server, make_user, profession="Infirmier", code=None)
    assert other.post("/api/v1/teleexpertises", json=payload(address, ins)).status_code == 201

    # An answer from someone neither the expert nor a member of the service.
    te = r.get("/api/v1/teleexpertises").json()["items"][0]
    stranger_doc, _ = requester(server, make_user)
    problem(stranger_doc.post(f"/api/v1/teleexpertises/{te['id']}/answer",
                              json={"body": "x", "billing_number": EXP_NUMBER}), 404)
    problem(r.post(f"/api/v1/teleexpertises/{te['id']}/answer", json={"body": "x", "billing_number": EXP_NUMBER}), 403)
    # The expert's own numéro AM is checked too; nothing billed.
    problem(m1.post(f"/api/v1/teleexpertises/{te['id']}/answer", json={"body": "x", "billing_number": "123"}), 422)
    assert r.get(f"/api/v1/teleexpertises/{te['id']}").json()["state"] == "submitted"
    problem(r.get("/api/v1/teleexpertises", params={"role": "autre"}), 422)


def test_requests_sent_together_never_make_a_fifth(server, make_user):
    """Four requests for one patient in 12 months, even when the last ones are sent at once."""
    address, _, _ = expert_service(server, make_user, members=1)
    r, _ = requester(server, make_user)
    ins = fresh_ins()
    assert r.post("/api/v1/teleexpertises", json=payload(address, ins)).status_code == 201
    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        codes = list(pool.map(lambda _: r.post("/api/v1/teleexpertises", json=payload(address, ins)).status_code,
                              range(5)))
    assert sorted(codes) == [201, 201, 201, 409, 409], codes
    assert len(r.get("/api/v1/teleexpertises", params={"role": "requester"}).json()["items"]) == 4


def _letters(client, box_id: int, view: str = "inbox") -> list[str]:
    items = client.get(f"/api/v1/mailboxes/{box_id}/messages", params={"view": view, "limit": 200}).json()["items"]
    return [m["subject"] for m in items if m["subject"].startswith("Téléexpertise")]


def _blob_files(server) -> set:
    root = server.core.settings.blob_dir
    return {p for p in root.glob("??/??/*") if p.is_file()}


async def _named_digests(core, digests: set[str]) -> set[str]:
    async with core.read() as s:
        return set(await s.scalars(sa.select(Attachment.sha256).where(Attachment.sha256.in_(digests))))


def test_concurrent_steps_exactly_one_wins_and_only_its_letter_exists(server, make_user):
    """Steps raced through HTTP: one state change wins, and only the winner's letter was delivered
    (the letter commits with the state change, never before it)."""
    address, _, members = expert_service(server, make_user, members=3)
    r, r_box = requester(server, make_user)
    files_before = _blob_files(server)
    for _ in range(3):
        te = r.post("/api/v1/teleexpertises", json=payload(address, fresh_ins())).json()
        before = len(_letters(r, r_box))
        # Each of these leaves a state from which none of the others is allowed.
        calls = [(members[0], "answer", {"body": "Avis : bilan normal.", "billing_number": EXP_NUMBER}),
                 (members[1], "decline", {"reason": "Hors de notre champ."}),
                 (members[2], "decline", {"reason": "Pas de place cette semaine."}),
                 (r, "cancel", None)]
        url = f"/api/v1/teleexpertises/{te['id']}"
        with concurrent.futures.ThreadPoolExecutor(len(calls)) as pool:
            codes = list(pool.map(lambda c, url=url: c[0].post(f"{url}/{c[1]}", json=c[2]).status_code, calls))
        assert sorted(codes) == [200, 409, 409, 409], codes
        winner = calls[codes.index(200)][1]
        got = r.get(f"/api/v1/teleexpertises/{te['id']}").json()
        assert [s["action"] for s in got["steps"]] == ["submit", winner.replace("-", "_")]
        after = _letters(r, r_box)
        expected = {"answer": ["Téléexpertise : réponse de l'expert"], "decline": ["Téléexpertise refusée"],
                    "cancel": []}[winner]
        assert len(after) - before == len(expected) and after[:len(expected)] == expected, (winner, after)
    # A losing answer had its report PDF rendered before the race: it is gone again, and every file
    # the rounds left is an attachment's.
    new_files = {p.name for p in _blob_files(server) - files_before}
    assert server.call(_named_digests, server.core, new_files) == new_files

    # Two members take the same request at once: exactly one is shown as taking it.
    te = r.post("/api/v1/teleexpertises", json=payload(address, fresh_ins())).json()
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        codes = list(pool.map(lambda c: c.post(f"/api/v1/teleexpertises/{te['id']}/assign").status_code, members))
    assert sorted(codes) == [200, 409, 409]
    got = r.get(f"/api/v1/teleexpertises/{te['id']}").json()
    assert [s["action"] for s in got["steps"]] == ["submit", "assign"]
    assert got["assigned_to"]["account_id"] == members[codes.index(200)].get("/api/v1/me").json()["id"]


class _MailSink:
    def __init__(self) -> None:
        self.messages: list[tuple[list[str], bytes]] = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append((list(envelope.rcpt_tos), envelope.content))
        return "250 OK"


def test_overdue_request_is_reminded_once_and_shown_late_on_both_sides(backend, tmp_path_factory):
    """The expected answer time has passed (set in the test's own row, no waiting): the sweep
    reminds once — a step, a letter in the service's mailbox, an e-mail notification to its
    member who is away — and both sides see « En retard »; a second sweep does nothing."""
    from aiosmtpd.controller import Controller

    from monsisra.services import maintenance, notifications
    from monsisra.store.teleexpertise import Teleexpertise
    from tests.reach_support import make_pro, own_server, web_session
    from tests.support import free_port

    sink = _MailSink()
    controller = Controller(sink, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        with own_server(backend, tmp_path_factory.mktemp(f"te-remind-{backend}"), demo=False,
                        smtp_relay=f"127.0.0.1:{controller.port}") as srv:
            box = srv.call(mailboxes.create_service_mailbox, srv.core, local=unique("avis"),
                           display_name="Avis test retard", organisation="CHU test", is_expert=True)
            member, _, _ = make_pro(srv, "Expert", profession="Médecin", profession_code="10",
                                    notification_email="expert.perso@example.org")
            m = srv.login(member, "secret-pass")
            srv.call(mailboxes.grant, srv.core, box.id, m.get("/api/v1/me").json()["id"], Access.MEMBER)
            req_user, _, r_box = make_pro(srv, "Requérant", profession="Médecin", profession_code="10")
            r = srv.login(req_user, "secret-pass")
            srv.call(notifications.run_pass, srv.core)  # the first pass only starts the cursor
            te = r.post("/api/v1/teleexpertises", json=payload(box.address, fresh_ins())).json()
            assert te["overdue"] is False
            srv.call(notifications.run_pass, srv.core)  # the request itself is announced
            sink.messages.clear()

            async def past_due() -> None:
                async with srv.core.write() as tx:
                    row = await tx.session.get(Teleexpertise, te["id"])
                    row.due_at = row.created_at - timedelta(hours=1)

            srv.call(past_due)
            assert srv.call(maintenance.sweep, srv.core) == {"teleexpertise_reminders": 1}
            assert srv.call(maintenance.sweep, srv.core) == {"teleexpertise_reminders": 0}

            for side in (m, r):
                got = side.get(f"/api/v1/teleexpertises/{te['id']}").json()
                assert got["overdue"] is True and got["overdue_label"] == "En retard" and got["reminded_at"]
                assert [s["action"] for s in got["steps"]] == ["submit", "remind"]
            subject = f"Relance : téléexpertise n° {te['id']} en retard"
            inbox = m.get(f"/api/v1/mailboxes/{box.id}/messages", params={"limit": 200}).json()["items"]
            assert [i["subject"] for i in inbox].count(subject) == 1
            sent = r.get(f"/api/v1/mailboxes/{r_box}/messages", params={"view": "sent"}).json()["items"]
            assert [i["subject"] for i in sent].count(subject) == 1
            # The member is away: the notification worker tells them (no subject, no patient data).
            later = datetime.now(UTC) + timedelta(minutes=16)
            assert srv.call(notifications.run_pass, srv.core, later)["email"] == 1
            [(rcpts, raw)] = sink.messages
            assert rcpts == ["expert.perso@example.org"] and b"1 nouveau message" in raw and b"Faure" not in raw
            # Both lists show it late.
            for user, view in ((member, "?vue=recues"), (req_user, "")):
                with web_session(srv, user, "secret-pass") as (web, _):
                    page = web.get("/teleexpertises" + view).text
                    row_html = page.split(f'data-teleexpertise="{te["id"]}"', 1)[1].split("</tr>", 1)[0]
                    assert "En retard" in row_html
            # Elements provided restart the expected answer time: no longer late.
            m.post(f"/api/v1/teleexpertises/{te['id']}/request-elements", json={"body": "Le bilan, svp."})
            back = r.post(f"/api/v1/teleexpertises/{te['id']}/provide-elements", json={"body": "Voici."}).json()
            assert back["overdue"] is False and back["reminded_at"] is None
            assert srv.call(maintenance.sweep, srv.core) == {"teleexpertise_reminders": 0}
            m.close()
            r.close()
    finally:
        controller.stop()


def test_experts_near_me_nearest_first_by_real_distance(server, make_user):
    """Experts of the test's own in three communes at known distances from the requester's
    practice (Clermont-Ferrand) and one with no place: nearest first, the placeless last; the
    distance is the great-circle one on the communes' coordinates."""
    from monsisra.services import communes

    specialty = unique("hemato")  # one word: only this test's experts match it
    index = communes.package_index()
    home = index.by_code["63113"]
    made = {}
    # Created farthest first, so that neither creation nor name order gives the expected order.
    for code, last in (("03310", "Aubert"), ("", "Bonnet"), ("63178", "Chabrol"), ("63300", "Dumas")):
        username, address, _ = make_user("Expert", last=f"{last}{unique('')}", profession="Médecin",
                                         profession_code="10")
        client = server.login(username, "secret-pass")
        card = {"expert": {"description": "Avis sur dossier.", "specialties": [specialty], "answer_days": 5}}
        if code:
            card["commune_code"] = code
        assert client.patch("/api/v1/directory/me", json=card).status_code == 200
        made[address] = code
    r_user, _, _ = make_user("Requérante", last=unique("REQ"), profession="Médecin", profession_code="10")
    r = server.login(r_user, "secret-pass")
    assert r.patch("/api/v1/directory/me", json={"commune_code": home.code}).status_code == 200

    got = r.get("/api/v1/teleexpertises/experts", params={"q": specialty})
    assert got.status_code == 200, got.text
    body = got.json()
    assert body["reference"]["code"] == "63113"
    mine = [i for i in body["items"] if i["address"] in made]
    assert [made[i["address"]] for i in mine] == ["63300", "63178", "03310", ""]
    for item in mine[:3]:
        place = index.by_code[made[item["address"]]]
        expected = communes.distance_km(home.latitude, home.longitude, place.latitude, place.longitude)
        assert abs(item["distance_km"] - expected) <= 0.1, (item, expected)
    assert mine[3]["distance_km"] is None
    assert [round(i["distance_km"]) for i in mine[:3]] == [13, 29, 47]

    # The compose picker's « experts » filter asks the directory for the same order (near=moi).
    picked = r.get("/api/v1/directory/search", params={"q": specialty, "kind": "experts", "near": "moi"}).json()
    people = [i for i in picked["professionals"]["items"] if i["address"] in made]
    assert [made[i["address"]] for i in people] == ["63300", "63178", "03310", ""]
    assert [round(i["distance_km"]) for i in people[:3]] == [13, 29, 47]
    assert picked["query"]["reference"]["code"] == "63113"

    # The page says from where, and lists them in that order.
    from tests.reach_support import web_session

    with web_session(server, r_user, "secret-pass") as (web, _):
        page = web.get("/teleexpertises/experts", params={"q": specialty})
    assert page.status_code == 200 and "Clermont-Ferrand" in page.text
    positions = [page.text.index(f'data-address="{a}"') for a in [i["address"] for i in mine]]
    assert positions == sorted(positions)

    # Someone without a practice commune gets the experts without a distance order, and is told so.
    nowhere, _ = requester(server, make_user)
    plain = nowhere.get("/api/v1/teleexpertises/experts", params={"q": specialty}).json()
    assert plain["reference"] is None and {i["address"] for i in plain["items"]} >= set(made)
    problem(r.get("/api/v1/teleexpertises/experts", params={"limit": 0}), 422)


def test_service_managers_declare_their_service_expert(server, make_user):
    """A service's managers declare it expert (the personal card's fields); a plain member gets
    403 and an outsider 404, with nothing changed; the declaration reaches the directory, the
    expertise card and the expected answer time of new requests; withdrawing it stops requests."""
    from monsisra.services import mailboxes as mb_service
    from tests.reach_support import web_session

    local = unique("svc")
    box = server.call(mb_service.create_service_mailbox, server.core, local=local,
                      display_name=f"Avis test {local}", organisation="CHU test")
    people = []
    for first in ("Gestionnaire", "Membre"):
        username, _, _ = make_user(first, last=unique("SVC"), profession="Médecin", profession_code="10")
        client = server.login(username, "secret-pass")
        server.call(mb_service.grant, server.core, box.id, client.get("/api/v1/me").json()["id"], Access.MEMBER)
        people.append((username, client))
    (manager_user, manager), (plain_user, plain) = people
    # The administrator makes the first member a manager (/admin/boites); a member cannot.
    with web_session(server, plain_user, "secret-pass") as (web, csrf):
        assert web.post(f"/admin/boites/{box.id}/gestionnaire",
                        data={"csrf": csrf, "username": plain_user, "manager": "1"}).status_code == 403
    with web_session(server, "admin", "demo") as (web, csrf):
        done = web.post(f"/admin/boites/{box.id}/gestionnaire",
                        data={"csrf": csrf, "username": manager_user, "manager": "1"})
        assert done.status_code == 303
        row = web.get(f"/admin/boites/{box.id}").text.split(f'data-username="{manager_user}"', 1)[1]
        assert "gestionnaire de la boîte" in row.split("</tr>", 1)[0]
    outsider, _ = requester(server, make_user)
    specialty = unique("thrombo")
    decl = {"description": "Avis sur les thromboses récidivantes.", "specialties": [specialty],
            "documents": "Bilan de thrombophilie.", "urgent_contact": "04 73 00 00 00", "answer_days": 3}
    url = f"/api/v1/mailboxes/{box.id}/expert"

    card = plain.get(url).json()
    assert card["can_manage"] is False and card["expert"] is None
    assert [m["manager"] for m in card["members"] if m["name"].startswith("Gestionnaire")] == [True]
    assert "gestionnaires" in problem(plain.put(url, json={"expert": decl}), 403)["detail"]
    problem(outsider.put(url, json={"expert": decl}), 404)
    problem(outsider.get(url), 404)
    assert "90 jours" in problem(manager.put(url, json={"expert": {**decl, "answer_days": 200}}), 422)["detail"]
    problem(manager.put(url, json={"expert": {**decl, "description": "  "}}), 422)
    assert plain.get(url).json()["expert"] is None
    problem(outsider.post("/api/v1/teleexpertises", json=payload(box.address, fresh_ins())), 422)

    done = manager.put(url, json={"expert": decl})
    assert done.status_code == 200, done.text
    assert done.json()["can_manage"] is True and done.json()["expert"]["specialties"] == [specialty]
    assert plain.get(url).json()["expert"]["answer_days"] == 3
    found = outsider.get("/api/v1/teleexpertises/experts", params={"q": specialty}).json()["items"]
    assert [i["address"] for i in found] == [box.address]
    te = outsider.post("/api/v1/teleexpertises", json=payload(box.address, fresh_ins()))
    assert te.status_code == 201, te.text
    te = te.json()
    delay = datetime.fromisoformat(te["due_at"]) - datetime.fromisoformat(te["created_at"])
    assert timedelta(days=3) - timedelta(minutes=1) <= delay <= timedelta(days=3)

    # The page: the form for the manager only; a plain member reads the declaration.
    with web_session(server, plain_user, "secret-pass") as (web, csrf):
        page = web.get(f"/boites/{box.id}/fiche").text
        assert "service-expert-form" not in page and "Seuls les gestionnaires" in page
        refused = web.post(f"/boites/{box.id}/fiche", data={"csrf": csrf})
        assert refused.status_code == 403 and "gestionnaires" in refused.text
    assert plain.get(url).json()["expert"] is not None
    with web_session(server, manager_user, "secret-pass") as (web, csrf):
        page = web.get(f"/boites/{box.id}/fiche").text
        assert 'id="service-expert-form"' in page and specialty in page
        shown = web.get("/teleexpertises/expert", params={"adresse": box.address}).text
        assert "Bilan de thrombophilie." in shown and "04 73 00 00 00" in shown
        assert f'href="/boites/{box.id}/fiche"' in web.get("/teleexpertises").text
        bad = web.post(f"/boites/{box.id}/fiche", data={"csrf": csrf, "expert_on": "1", "expert_description": "x",
                                                        "expert_answer_days": "0"})
        assert bad.status_code == 422 and "90 jours" in bad.text
        saved = web.post(f"/boites/{box.id}/fiche", data={
            "csrf": csrf, "expert_on": "1", "expert_description": "Avis thromboses.",
            "expert_specialties": f"{specialty}\nHématologie", "expert_documents": "", "expert_urgent_contact": "",
            "expert_answer_days": "5"})
        assert saved.status_code == 303
        assert plain.get(url).json()["expert"]["specialties"] == [specialty, "Hématologie"]
        # Switched off: withdrawn; new requests are refused.
        assert web.post(f"/boites/{box.id}/fiche", data={"csrf": csrf}).status_code == 303
    assert plain.get(url).json()["expert"] is None
    assert "expert déclaré" in problem(outsider.post("/api/v1/teleexpertises",
                                                     json=payload(box.address, fresh_ins())), 422)["detail"]
