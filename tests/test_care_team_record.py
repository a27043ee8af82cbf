"""Care team and shared record through the HTTP API, with fresh accounts (not the demo's), on
SQLite and PostgreSQL: declaring and withdrawing oneself, the team list, the record closed (403)
outside the team, and every access — granted or refused — in the audit log."""

from __future__ import annotations

import sqlalchemy as sa

from monsisra.domain.ins import ins_key
from monsisra.services.demo import minimal_pdf
from monsisra.store.models import AuditEvent
from tests.support import unique


def fresh_ins() -> str:
    first13 = f"1790263{int(unique('')[:8], 16) % 1_000_000:06d}"
    return first13 + f"{ins_key(first13):02d}"


def problem(r, status):
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["detail"] and "Traceback" not in r.text
    return r.json()


def audit_of(server, patient_id: int) -> list[tuple[str, int | None]]:
    async def rows(core):
        async with core.read() as s:
            return (await s.execute(sa.select(AuditEvent.action, AuditEvent.account_id)
                                    .where(AuditEvent.patient_id == patient_id).order_by(AuditEvent.id))).all()

    return [tuple(r) for r in server.call(rows, server.core)]


def account_id(client) -> int:
    return client.get("/api/v1/me").json()["id"]


def setup_patient(server, make_user):
    """A GP writes to a nurse about a new patient, with a PDF; an outsider exists too."""
    gp, _, gp_box = make_user("Gilles", profession="Médecin", specialty="Médecine générale")
    nurse, nurse_addr, _ = make_user("Inès", profession="Infirmier")
    outsider, _, _ = make_user("Oscar", profession="Médecin")
    g, n, o = (server.login(u, "secret-pass") for u in (gp, nurse, outsider))
    up = g.post("/api/v1/attachments", files={"file": ("bilan.pdf", minimal_pdf(["Bilan"]), "application/pdf")})
    assert up.status_code == 201, up.text
    ins = fresh_ins()
    sent = g.post("/api/v1/messages", json={
        "from_mailbox": gp_box, "to": [nurse_addr], "subject": "Soins de plaie", "body": "Pansement tous les 2 jours",
        "attachments": [up.json()["id"]], "patient": {"ins": ins, "family_name": "Moreau", "given_names": "Jean"}})
    assert sent.status_code == 201, sent.text
    return g, n, o, sent.json()["patient"]["id"], sent.json(), up.json()["id"]


def test_care_team_declare_list_withdraw(server, make_user):
    g, n, o, pid, _sent, _att = setup_patient(server, make_user)
    team = g.get(f"/api/v1/patients/{pid}/care-team").json()
    assert team == {"patient_id": pid, "me": False, "items": []}
    joined = g.put(f"/api/v1/patients/{pid}/care-team/me")
    assert joined.status_code == 200, joined.text
    assert g.put(f"/api/v1/patients/{pid}/care-team/me").json()["me"] is True  # idempotent
    n.put(f"/api/v1/patients/{pid}/care-team/me")
    team = n.get(f"/api/v1/patients/{pid}/care-team").json()
    assert team["me"] is True and len(team["items"]) == 2
    first = team["items"][0]
    assert first["profession"] == "Médecin" and first["specialty"] == "Médecine générale"
    assert first["address"].endswith("@monsisra.localhost") and "Gilles" in first["name"]
    assert g.get(f"/api/v1/patients/{pid}").json()["care_team"] == {"me": True, "count": 2}
    # The outsider has no link: the patient does not exist for them, the team cannot be joined.
    problem(o.get(f"/api/v1/patients/{pid}/care-team"), 404)
    problem(o.put(f"/api/v1/patients/{pid}/care-team/me"), 404)
    left = n.delete(f"/api/v1/patients/{pid}/care-team/me")
    assert left.status_code == 200 and left.json()["me"] is False and len(left.json()["items"]) == 1
    assert n.delete(f"/api/v1/patients/{pid}/care-team/me").status_code == 200  # idempotent
    actions = [a for a, _ in audit_of(server, pid)]
    assert actions.count("patient.care_team.join") == 2 and actions.count("patient.care_team.leave") == 1


def test_record_only_for_care_team_and_every_access_audited(server, make_user):
    g, n, o, pid, sent, att = setup_patient(server, make_user)
    g_id, n_id, o_id = account_id(g), account_id(n), account_id(o)
    # Linked but not in the team (the nurse), and not linked at all (the outsider): 403, audited.
    body = problem(n.get(f"/api/v1/patients/{pid}/record"), 403)
    assert "équipe" in body["detail"]
    problem(o.get(f"/api/v1/patients/{pid}/record"), 403)
    problem(o.get(f"/api/v1/patients/{pid}/record/documents/{att}"), 403)
    refused = [who for a, who in audit_of(server, pid) if a == "patient.record.refused"]
    assert refused == [n_id, o_id, o_id]

    g.put(f"/api/v1/patients/{pid}/care-team/me")
    record = g.get(f"/api/v1/patients/{pid}/record")
    assert record.status_code == 200, record.text
    data = record.json()
    assert data["patient"]["id"] == pid
    kinds = {i["kind"] for i in data["items"]}
    assert {"letter", "document"} <= kinds
    letter = next(i for i in data["items"] if i["kind"] == "letter")
    assert letter["message_id"] == sent["id"] and letter["title"] == "Soins de plaie"
    assert letter["mailbox_id"]  # the sender may open it in their own mailbox
    assert [i["kind"] for i in g.get(f"/api/v1/patients/{pid}/record", params={"kind": "document"}).json()["items"]] \
        == ["document"]
    doc = g.get(f"/api/v1/patients/{pid}/record/documents/{att}")
    assert doc.status_code == 200 and doc.content.startswith(b"%PDF")
    assert [who for a, who in audit_of(server, pid) if a == "patient.record.read"] == [g_id, g_id]
    assert [who for a, who in audit_of(server, pid) if a == "patient.record.document"] == [g_id]

    # Withdrawn, the record closes again.
    g.delete(f"/api/v1/patients/{pid}/care-team/me")
    problem(g.get(f"/api/v1/patients/{pid}/record"), 403)
    assert [who for a, who in audit_of(server, pid) if a == "patient.record.refused"][-1] == g_id
    # An unknown patient: 404.
    problem(g.get("/api/v1/patients/2147483000/record"), 404)
