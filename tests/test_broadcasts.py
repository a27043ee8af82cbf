"""Issue 16, item 6: DGS-Urgent broadcasts — by an administrator or the configured national
address, to everyone or by profession and department; they land in « DGS Urgent », show a
banner until read, and cannot be answered."""

from __future__ import annotations

import pytest

from monsisra.store.models import Message
from tests.reach_support import count_rows, make_pro, own_server
from tests.support import unique

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def srv(backend, tmp_path_factory):
    national = "alerte.dgs"
    with own_server(backend, tmp_path_factory.mktemp(f"dgs-{backend}"),
                    dgs_address=f"{national}@monsisra.localhost") as running:
        from monsisra.services import accounts

        running.call(accounts.create_account, running.core, accounts.NewAccount(
            username="dgs", password="secret-pass", first_name="Alerte", last_name="Dgs"))
        yield running


def _dgs_items(client, mailbox_id: int) -> list[dict]:
    r = client.get(f"/api/v1/mailboxes/{mailbox_id}/messages", params={"category": "dgs_urgent"})
    assert r.status_code == 200, r.text
    return r.json()["items"]


def test_admin_broadcasts_by_profession_and_department(srv):
    profession = unique("Podologue")
    u63, _, box63 = make_pro(srv, "Paul", profession=profession, postcode="63000")
    u15, _, box15 = make_pro(srv, "Jeanne", profession=profession, postcode="15000")
    u2a, _, box2a = make_pro(srv, "Ange", profession=profession, postcode="20000")
    other, _, box_other = make_pro(srv, "Marc", profession="Médecin", postcode="63000")
    with srv.login("admin") as admin:
        r = admin.post("/api/v1/admin/broadcasts", json={
            "subject": "Alerte : rappel de lot", "body": "Rappel du lot 1234 de seringues.\nNe plus utiliser.",
            "professions": [profession], "departments": ["63", "2A"]})
        assert r.status_code == 201, r.text
        sent = r.json()
    assert sent["recipients"] == 2
    with srv.login(u63, "secret-pass") as pro:
        items = _dgs_items(pro, box63)
        assert [i["subject"] for i in items] == ["Alerte : rappel de lot"]
        assert items[0]["category"] == "dgs_urgent" and items[0]["sender"]["name"] == "DGS Urgent"
        alerts = pro.get("/api/v1/me/alerts").json()
        assert [a["message_id"] for a in alerts] == [sent["id"]]
        # Cannot be answered: refused in the service, whatever the client.
        reply = pro.post("/api/v1/messages", json={"from_mailbox": box63, "to": ["alice.martin@monsisra.localhost"],
                                                    "subject": "Re: Alerte", "body": "bien reçu",
                                                    "in_reply_to": sent["id"]})
        assert reply.status_code == 403 and "DGS Urgent" in reply.json()["detail"]
        full = pro.get(f"/api/v1/mailboxes/{box63}/messages/{sent['id']}").json()
        assert full["no_reply"] is True and "seringues" in full["body"]
        # Read: the banner is gone.
        assert pro.get("/api/v1/me/alerts").json() == []
    with srv.login(u2a, "secret-pass") as pro:
        assert len(_dgs_items(pro, box2a)) == 1
    for username, box in ((u15, box15), (other, box_other)):
        with srv.login(username, "secret-pass") as pro:
            assert _dgs_items(pro, box) == []


def test_national_address_broadcasts_to_everyone(srv):
    late, _, late_box = make_pro(srv, "Zoé")
    with srv.login("dgs", "secret-pass") as dgs:
        boxes = dgs.get("/api/v1/mailboxes").json()
        # The national address is the dgs account's own mailbox here.
        assert boxes[0]["address"] == "alerte.dgs@monsisra.localhost"
        r = dgs.post("/api/v1/admin/broadcasts", json={"subject": "Canicule : niveau rouge",
                                                       "body": "Plan canicule activé."})
        assert r.status_code == 201, r.text
        sent = r.json()
        sent_items = dgs.get(f"/api/v1/mailboxes/{boxes[0]['id']}/messages", params={"view": "sent"}).json()["items"]
        assert sent["id"] in [i["id"] for i in sent_items]
    assert sent["recipients"] >= 10
    for username, password in (("alice.martin", "demo"), ("claire.roux", "demo"), (late, "secret-pass")):
        with srv.login(username, password) as pro:
            alerts = pro.get("/api/v1/me/alerts").json()
            assert sent["id"] in [a["message_id"] for a in alerts]
    with srv.login(late, "secret-pass") as pro:
        assert _dgs_items(pro, late_box)[0]["id"] == sent["id"]


def test_others_may_not_broadcast_and_bad_input_changes_nothing(srv):
    before = srv.call(count_rows, srv.core, Message, Message.category == "dgs_urgent")
    with srv.login("alice.martin") as alice:
        r = alice.post("/api/v1/admin/broadcasts", json={"subject": "Faux", "body": "Faux"})
        assert r.status_code == 403 and r.headers["content-type"].startswith("application/problem+json")
        # The demo's DGS-Urgent alert (sent before broadcasts existed) cannot be answered either.
        box = alice.get("/api/v1/mailboxes").json()[0]["id"]
        demo_alert = next(i for i in _dgs_items(alice, box) if "grippe" in i["subject"])
        reply = alice.post("/api/v1/messages", json={"from_mailbox": box, "to": ["bruno.petit@monsisra.localhost"],
                                                      "subject": "Re", "body": "x", "in_reply_to": demo_alert["id"]})
        assert reply.status_code == 403
    with srv.login("admin") as admin:
        for body in ({"subject": "", "body": "x"}, {"subject": "x", "body": "  "},
                     {"subject": "x", "body": "y", "departments": ["99"]},
                     {"subject": "x", "body": "y", "professions": [unique("Personne")]},
                     {"subject": "a\nb", "body": "y"}):
            r = admin.post("/api/v1/admin/broadcasts", json=body)
            assert r.status_code == 422, (body, r.text)
            assert r.json()["detail"]
    with srv.client() as anon:
        assert anon.post("/api/v1/admin/broadcasts", json={"subject": "x", "body": "y"}).status_code == 401
    assert srv.call(count_rows, srv.core, Message, Message.category == "dgs_urgent") == before


def test_admin_page_banner_until_read_and_no_reply_button(srv):
    from tests.reach_support import web_session

    profession = unique("Orthoptiste")
    user, _, box = make_pro(srv, "Rose", profession=profession, postcode="63000")
    with web_session(srv, "alice.martin", "demo") as (alice, _):
        assert alice.get("/admin/dgs-urgent").status_code == 403
    with web_session(srv, "admin", "demo") as (admin, csrf):
        page = admin.get("/admin/dgs-urgent")
        assert page.status_code == 200 and "Diffuser une alerte DGS Urgent" in page.text
        bad = admin.post("/admin/dgs-urgent", data={"csrf": csrf, "subject": "", "body": "x"})
        assert bad.status_code == 422 and "obligatoire" in bad.text
        r = admin.post("/admin/dgs-urgent", data={"csrf": csrf, "subject": "Pénurie d'amoxicilline",
                                                  "body": "Consignes de substitution.", "professions": profession,
                                                  "departments": "63"})
        assert r.status_code == 200 and "diffusée à 1 professionnel" in r.text
    with web_session(srv, user, "secret-pass") as (web, _):
        inbox = web.get("/boite")
        assert "Alerte DGS Urgent" in inbox.text and "Pénurie d&#39;amoxicilline" in inbox.text
        link = inbox.text.split('class="dgs-banner"')[1].split('href="')[1].split('"')[0].replace("&amp;", "&")
        opened = web.get(link)
        assert opened.status_code == 200 and "Consignes de substitution." in opened.text
        assert "/ecrire?repondre=" not in opened.text  # no reply button
        assert "dgs-banner" not in web.get("/boite").text  # read: the banner is gone
    with srv.login(user, "secret-pass") as api:
        assert api.get("/api/v1/me/alerts").json() == []
        assert _dgs_items(api, box)[0]["subject"] == "Pénurie d'amoxicilline"
