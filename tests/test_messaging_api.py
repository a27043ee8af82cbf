"""Core messaging through the real HTTP boundary, on SQLite and PostgreSQL."""

from __future__ import annotations

import concurrent.futures
import re

import pytest
import sqlalchemy as sa

from monsisra.services.demo import minimal_pdf
from monsisra.store.models import Attachment, Delivery, Message, Recipient
from tests.support import FIXTURES

DOMAIN = "monsisra.localhost"


def mailbox_id(client, kind="PER"):
    boxes = client.get("/api/v1/mailboxes").json()
    return next(b["id"] for b in boxes if b["kind"] == kind)


def upload(client, name="compte-rendu.pdf", data=None, content_type="application/pdf"):
    r = client.post("/api/v1/attachments", files={"file": (name, data or minimal_pdf(["Compte rendu"]),
                                                           content_type)})
    assert r.status_code == 201, r.text
    return r.json()


def send(client, **body):
    body.setdefault("from_mailbox", mailbox_id(client))
    return client.post("/api/v1/messages", json=body)


def all_pages(client, box, **params):
    """Ids of every page of a listing, following next_cursor (at most 50 pages)."""
    seen, cursor = [], None
    for _ in range(50):
        page = client.get(f"/api/v1/mailboxes/{box}/messages",
                          params={**params, **({"cursor": cursor} if cursor else {})}).json()
        seen += [i["id"] for i in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            return seen
    raise AssertionError("paging did not end")


def problem_ok(r, status):
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["status"] == status and body["title"] and body["detail"]
    assert "Traceback" not in r.text
    return body


def test_done_when_scenario(server):
    """The issue's acceptance path: letter with a PDF from alice to bruno, read, receipt, isolation."""
    alice, bruno = server.login("alice.martin"), server.login("bruno.petit")
    alice_box, bruno_box = mailbox_id(alice), mailbox_id(bruno)
    pdf = minimal_pdf(["Compte rendu de consultation", "Patient vu ce jour."])
    att = upload(alice, "Compte rendu échographie.pdf", pdf, content_type="text/plain")
    assert att["content_type"] == "application/pdf"  # sniffed, not trusted
    r = send(alice, to=[f"bruno.petit@{DOMAIN}"], subject="Adressage — échographie cardiaque",
             body="Cher confrère, je vous adresse ma patiente.", category="letter", attachments=[att["id"]])
    assert r.status_code == 201, r.text
    sent = r.json()
    assert sent["attachments"][0]["filename"] == "Compte rendu échographie.pdf"

    inbox = bruno.get(f"/api/v1/mailboxes/{bruno_box}/messages", params={"view": "inbox"}).json()
    item = next(i for i in inbox["items"] if i["id"] == sent["id"])
    assert item["state"]["read"] is False and "body" not in item and item["preview"].startswith("Cher")
    letters = bruno.get(f"/api/v1/mailboxes/{bruno_box}/messages", params={"view": "all", "category": "letter"})
    assert sent["id"] in [i["id"] for i in letters.json()["items"]]
    unread = bruno.get(f"/api/v1/mailboxes/{bruno_box}/messages", params={"view": "unread"}).json()
    assert sent["id"] in [i["id"] for i in unread["items"]]

    full = bruno.get(f"/api/v1/mailboxes/{bruno_box}/messages/{sent['id']}").json()
    assert full["body"].startswith("Cher confrère") and full["state"]["read"] is True
    assert full["sender"]["address"] == f"alice.martin@{DOMAIN}"
    download = bruno.get(f"/api/v1/attachments/{att['id']}")
    assert download.status_code == 200 and download.content == pdf
    assert download.headers["content-type"] == "application/pdf"
    assert "attachment;" in download.headers["content-disposition"]
    assert "filename*=UTF-8''Compte%20rendu%20%C3%A9chographie.pdf" in download.headers["content-disposition"]
    assert download.headers["x-content-type-options"] == "nosniff"

    receipts = alice.get(f"/api/v1/messages/{sent['id']}/receipts").json()["items"]
    assert receipts[0]["address"] == f"bruno.petit@{DOMAIN}"
    assert receipts[0]["read_at"] and receipts[0]["initials"] == "BP" and "PETIT" in receipts[0]["name"]

    # bruno cannot see alice's mailbox, nor her message list, nor receipts of her messages.
    problem_ok(bruno.get(f"/api/v1/mailboxes/{alice_box}/messages"), 404)
    problem_ok(bruno.get(f"/api/v1/mailboxes/{alice_box}/counts"), 404)
    problem_ok(bruno.get(f"/api/v1/mailboxes/{alice_box}/messages/{sent['id']}"), 404)
    problem_ok(bruno.get(f"/api/v1/messages/{sent['id']}/receipts"), 404)
    problem_ok(bruno.patch(f"/api/v1/mailboxes/{alice_box}/messages/{sent['id']}", json={"archived": True}), 404)
    assert alice_box not in [b["id"] for b in bruno.get("/api/v1/mailboxes").json()]


def test_auth_errors_and_token_revocation(server, make_user):
    username, _, _ = make_user("Jeanne", "Essai")
    with server.client() as anon:
        problem_ok(anon.get("/api/v1/me"), 401)
        problem_ok(anon.post("/api/v1/auth/token", data={"username": username, "password": "wrong"}), 401)
        r = anon.post("/api/v1/auth/token", data={"username": username, "password": "secret-pass"})
        assert r.status_code == 200 and r.json()["token_type"] == "bearer"
        token = r.json()["access_token"]
    with server.client(token) as c:
        me = c.get("/api/v1/me").json()
        assert me["username"] == username and me["mailboxes"][0]["address"] == f"jeanne.essai@{DOMAIN}"
        assert c.post("/api/v1/auth/revoke").status_code == 204
        problem_ok(c.get("/api/v1/me"), 401)
    with server.client("not-a-token") as c:
        problem_ok(c.get("/api/v1/mailboxes"), 401)


def test_login_throttling_per_account(server, make_user):
    username, _, _ = make_user("Bloc", "Age")
    limit = server.settings.login_max_failures
    with server.client() as anon:
        for _ in range(limit):
            problem_ok(anon.post("/api/v1/auth/token", data={"username": username, "password": "bad"}), 401)
        body = problem_ok(anon.post("/api/v1/auth/token", data={"username": username, "password": "secret-pass"}),
                          429)
        assert "réessayez" in body["detail"]


def test_address_generation_and_collisions(server, make_user):
    first = make_user("Émile", "Zola-Test")
    second = make_user("Émile", "Zola-Test")
    assert first[1] == f"emile.zola-test@{DOMAIN}"
    assert second[1] == f"emile.zola-test2@{DOMAIN}"


def test_mailboxes_list_memberships_and_delegations(server):
    sophie = server.login("sophie.blanc")
    boxes = {b["address"]: b for b in sophie.get("/api/v1/mailboxes").json()}
    assert boxes[f"alice.martin@{DOMAIN}"]["access"] == "delegate"
    assert boxes[f"sophie.blanc@{DOMAIN}"]["access"] == "owner"
    hemo = server.login("hemostase.admin")
    boxes = {b["address"]: b for b in hemo.get("/api/v1/mailboxes").json()}
    org = boxes[f"avis-hemostase.chu-clermont@{DOMAIN}"]
    assert org["kind"] == "ORG" and org["access"] == "member"


def test_delegate_sends_on_behalf_and_reads(server, make_user):
    sophie = server.login("sophie.blanc")
    alice_box = next(b["id"] for b in sophie.get("/api/v1/mailboxes").json()
                     if b["address"] == f"alice.martin@{DOMAIN}")
    _, addr, _ = make_user("Paul", "Destinataire")
    r = send(sophie, from_mailbox=alice_box, to=[addr], subject="Pour le Dr Martin", body="Courrier préparé")
    assert r.status_code == 201, r.text
    assert r.json()["sender"]["address"] == f"alice.martin@{DOMAIN}"
    assert r.json()["on_behalf_of"] == "sophie.blanc"
    assert sophie.get(f"/api/v1/mailboxes/{alice_box}/counts").status_code == 200


def test_bad_recipients_listed_and_nothing_sent(server, make_user):
    alice = server.login("alice.martin")
    box = mailbox_id(alice)
    before = alice.get(f"/api/v1/mailboxes/{box}/counts").json()["views"]["sent"]["total"]
    r = send(alice, to=[f"bruno.petit@{DOMAIN}", "pas-une-adresse", f"inconnu@{DOMAIN}"],
             cc=["180017510801183@patient.mssante.fr"], subject="x", body="y")
    body = problem_ok(r, 422)
    bad = {b["address"]: b["reason"] for b in body["invalid_addresses"]}
    assert set(bad) == {"pas-une-adresse", f"inconnu@{DOMAIN}", "180017510801183@patient.mssante.fr"}
    assert "INS" in bad["180017510801183@patient.mssante.fr"]
    after = alice.get(f"/api/v1/mailboxes/{box}/counts").json()["views"]["sent"]["total"]
    assert after == before
    problem_ok(send(alice, to=[], subject="x", body="y"), 422)
    problem_ok(send(alice, to=[f"bruno.petit@{DOMAIN}"], subject="a\r\nBcc: x@y.fr", body="y"), 422)
    problem_ok(send(alice, to=[f"bruno.petit@{DOMAIN}"], category="nope"), 422)


def test_sending_from_someone_elses_mailbox_is_404(server):
    alice, bruno = server.login("alice.martin"), server.login("bruno.petit")
    problem_ok(send(bruno, from_mailbox=mailbox_id(alice), to=[f"claire.roux@{DOMAIN}"], subject="x"), 404)


def test_attachment_limits_and_ownership(server):
    alice, bruno = server.login("alice.martin"), server.login("bruno.petit")
    limit = server.settings.max_message_bytes
    blob_dir = server.settings.blob_dir
    files_before = sorted(p.name for p in blob_dir.rglob("*") if p.is_file())
    r = alice.post("/api/v1/attachments", files={"file": ("gros.bin", b"\0" * (limit + 1), "application/pdf")})
    problem_ok(r, 413)
    assert sorted(p.name for p in blob_dir.rglob("*") if p.is_file()) == files_before
    att = upload(alice, "a.pdf")
    # Someone else's upload, or an unknown id, cannot be attached or downloaded.
    problem_ok(bruno.get(f"/api/v1/attachments/{att['id']}"), 404)
    problem_ok(send(bruno, to=[f"alice.martin@{DOMAIN}"], subject="x", attachments=[att["id"]]), 404)
    problem_ok(send(alice, to=[f"bruno.petit@{DOMAIN}"], subject="x", attachments=["0" * 32]), 404)
    problem_ok(bruno.get("/api/v1/attachments/" + "0" * 32), 404)


def test_total_attachment_size_limited(server):
    alice = server.login("alice.martin")
    limit = server.settings.max_message_bytes
    half = b"%PDF-1.4\n" + b"a" * (limit // 2 + 10)
    a1 = upload(alice, "1.pdf", half)
    a2 = upload(alice, "2.pdf", half + b"b")
    problem_ok(send(alice, to=[f"bruno.petit@{DOMAIN}"], subject="x", attachments=[a1["id"], a2["id"]]), 413)


def test_hostile_html_is_stored_sanitised(server):
    alice, bruno = server.login("alice.martin"), server.login("bruno.petit")
    import email
    from email import policy

    parsed = email.message_from_bytes((FIXTURES / "bad_html_script.eml").read_bytes(), policy=policy.default)
    html = parsed.get_body(preferencelist=("html",)).get_content()
    assert "<script" in html.lower()
    html += '<img src="https://tracker.example/p.gif"><a href="javascript:alert(1)" onmouseover="x()">x</a>'
    r = send(alice, to=[f"bruno.petit@{DOMAIN}"], subject="HTML", body="texte", html=html)
    assert r.status_code == 201
    stored = bruno.get(f"/api/v1/mailboxes/{mailbox_id(bruno)}/messages/{r.json()['id']}").json()["html"]
    for forbidden in ("<script", "onerror", "onload", "onmouseover", "javascript:", "<img", "tracker.example"):
        assert forbidden not in stored.lower()


def test_views_flags_counts_and_paging(server, make_user):
    _, addr, _ = make_user("Vue", "Compteur")
    alice = server.login("alice.martin")
    ids = []
    for i, category in enumerate(["letter", "result", "result", "event", "conversation"] * 3):
        r = send(alice, to=[addr], subject=f"Message {i}", body=f"corps {i}", category=category)
        assert r.status_code == 201
        ids.append(r.json()["id"])
    # Log in as the fresh user through its password.
    with server.client() as anon:
        token = anon.post("/api/v1/auth/token", data={"username": _username_of(server, addr),
                                                       "password": "secret-pass"}).json()["access_token"]
    c = server.client(token)
    box = mailbox_id(c)
    counts = c.get(f"/api/v1/mailboxes/{box}/counts").json()
    assert counts["views"]["inbox"] == {"unread": 15, "total": 15}
    assert counts["categories"]["result"] == {"unread": 6, "total": 6}
    # Paging: 15 messages, pages of 4, newest first, no overlap, no gap.
    assert all_pages(c, box, view="inbox", limit=4) == list(reversed(ids))
    problem_ok(c.get(f"/api/v1/mailboxes/{box}/messages", params={"cursor": "@@@"}), 422)
    problem_ok(c.get(f"/api/v1/mailboxes/{box}/messages", params={"view": "bogus"}), 422)
    # Flags move messages between views and keep counts exact.
    assert c.patch(f"/api/v1/mailboxes/{box}/messages/{ids[0]}", json={"archived": True}).json()["archived"]
    c.patch(f"/api/v1/mailboxes/{box}/messages/{ids[1]}", json={"favorite": True, "read": True})
    c.patch(f"/api/v1/mailboxes/{box}/messages/{ids[2]}", json={"todo": True})
    c.patch(f"/api/v1/mailboxes/{box}/messages/{ids[3]}", json={"deleted": True})
    counts = c.get(f"/api/v1/mailboxes/{box}/counts").json()["views"]
    assert counts["inbox"] == {"unread": 12, "total": 13}
    assert counts["all"] == {"unread": 13, "total": 14}
    assert counts["archived"]["total"] == 1 and counts["favorites"]["total"] == 1 and counts["todo"]["total"] == 1
    listed = lambda view: [i["id"] for i in c.get(f"/api/v1/mailboxes/{box}/messages",  # noqa: E731
                                                    params={"view": view}).json()["items"]]
    assert ids[0] in listed("archived") and ids[0] in listed("all") and ids[0] not in listed("inbox")
    assert listed("favorites") == [ids[1]] and listed("todo") == [ids[2]]
    assert ids[3] not in listed("all")
    problem_ok(c.get(f"/api/v1/mailboxes/{box}/messages/{ids[3]}"), 404)
    # Inbox preferences: results no longer shown in the inbox but still in their category.
    c.patch("/api/v1/me", json={"inbox_categories": ["letter", "event", "conversation"]})
    inbox = listed("inbox")
    assert all(i not in inbox for i in ids[1:3]) and ids[4] in inbox
    counts = c.get(f"/api/v1/mailboxes/{box}/counts").json()
    assert counts["views"]["inbox"]["total"] == 7 and counts["categories"]["result"]["total"] == 6
    problem_ok(c.patch("/api/v1/me", json={"inbox_categories": ["nope"]}), 422)


def _username_of(server, address):
    from monsisra.store.models import Account, Mailbox

    async def q(core):
        async with core.read() as s:
            return await s.scalar(sa.select(Account.username).join(Mailbox, Mailbox.owner_account_id == Account.id)
                                  .where(Mailbox.address == address))

    return server.call(q, server.core)


def login_as_address(server, address):
    with server.client() as anon:
        token = anon.post("/api/v1/auth/token", data={"username": _username_of(server, address),
                                                       "password": "secret-pass"}).json()["access_token"]
    return server.client(token)


def test_search_accent_and_case_insensitive(server, make_user):
    _, addr, _ = make_user("Recherche", "Patiente")
    alice = server.login("alice.martin")
    att = upload(alice, "Échographie-Thyroïde.pdf")
    r1 = send(alice, to=[addr], subject="Bilan thyroïdien", body="TSH élevée, contrôle à prévoir.",
              attachments=[att["id"]])
    r2 = send(alice, to=[addr], subject="Autre sujet", body="Rien à signaler")
    c = login_as_address(server, addr)
    box = mailbox_id(c)

    def search(q, view="all"):
        return [i["id"] for i in c.get(f"/api/v1/mailboxes/{box}/messages", params={"q": q, "view": view})
                .json()["items"]]

    m1, m2 = r1.json()["id"], r2.json()["id"]
    assert search("THYROIDIEN") == [m1]
    assert search("elevee") == [m1]
    assert search("controle tsh") == [m1]  # any order, both terms
    assert search("thyro") == [m1]  # prefix
    assert search("echographie") == [m1]  # attachment name
    assert search("martin") == [m2, m1]  # sender name
    assert search("rien signaler") == [m2]
    assert search("introuvablexyz") == []
    assert search("!!!") == []


def test_drafts_and_replies_thread(server, make_user):
    alice = server.login("alice.martin")
    box = mailbox_id(alice)
    draft = send(alice, to=[f"bruno.petit@{DOMAIN}"], subject="Brouillon", body="v1", draft=True).json()
    assert draft["draft"] is True
    drafts = alice.get(f"/api/v1/mailboxes/{box}/messages", params={"view": "drafts"}).json()["items"]
    assert draft["id"] in [d["id"] for d in drafts]
    draft2 = send(alice, to=[f"bruno.petit@{DOMAIN}"], subject="Brouillon", body="v2", draft=True,
                  draft_id=draft["id"]).json()
    ids = [d["id"] for d in alice.get(f"/api/v1/mailboxes/{box}/messages", params={"view": "drafts"})
           .json()["items"]]
    assert draft2["id"] in ids and draft["id"] not in ids
    bruno = server.login("bruno.petit")
    bruno_box = mailbox_id(bruno)
    unread_before = bruno.get(f"/api/v1/mailboxes/{bruno_box}/counts").json()["views"]["unread"]["unread"]
    sent = send(alice, to=[f"bruno.petit@{DOMAIN}"], subject="Envoyé", body="final", draft_id=draft2["id"]).json()
    ids = [d["id"] for d in alice.get(f"/api/v1/mailboxes/{box}/messages", params={"view": "drafts"})
           .json()["items"]]
    assert draft2["id"] not in ids
    assert bruno.get(f"/api/v1/mailboxes/{bruno_box}/counts").json()["views"]["unread"]["unread"] == unread_before + 1
    reply = send(bruno, to=[f"alice.martin@{DOMAIN}"], subject="Re: Envoyé", body="merci",
                 in_reply_to=sent["id"]).json()
    assert reply["thread"] == {"id": sent["thread"]["id"], "in_reply_to": sent["id"]}
    thread = alice.get(f"/api/v1/mailboxes/{box}/threads/{sent['thread']['id']}").json()["items"]
    assert [m["id"] for m in thread] == [sent["id"], reply["id"]]
    # Replying to a message one cannot read is refused.
    claire = server.login("claire.roux")
    problem_ok(send(claire, to=[f"alice.martin@{DOMAIN}"], subject="x", in_reply_to=sent["id"]), 404)


def test_org_receipt_names_who_read(server):
    alice, hemo = server.login("alice.martin"), server.login("hemostase.admin")
    org = f"avis-hemostase.chu-clermont@{DOMAIN}"
    sent = send(alice, to=[org], subject="Avis relais AVK", body="Question", category="teleexpertise").json()
    org_box = next(b["id"] for b in hemo.get("/api/v1/mailboxes").json() if b["address"] == org)
    assert alice.get(f"/api/v1/messages/{sent['id']}/receipts").json()["items"][0]["read_at"] is None
    hemo.get(f"/api/v1/mailboxes/{org_box}/messages/{sent['id']}")
    receipt = alice.get(f"/api/v1/messages/{sent['id']}/receipts").json()["items"][0]
    assert receipt["read_at"] and receipt["read_by"] == "Hélène MOREL"


def test_patient_link_validated_and_audited(server):
    alice, bruno = server.login("alice.martin"), server.login("bruno.petit")
    problem_ok(send(alice, to=[f"bruno.petit@{DOMAIN}"], subject="x", patient={"ins": "180017510801183"}), 422)
    r = send(alice, to=[f"bruno.petit@{DOMAIN}"], subject="Patient", body="x",
             patient={"ins": "247101513112191", "family_name": "Test", "given_names": "Anne"})
    assert r.status_code == 201
    assert r.json()["patient"]["ins"] == "247101513112191"
    bruno.get(f"/api/v1/mailboxes/{mailbox_id(bruno)}/messages/{r.json()['id']}")
    from monsisra.store.models import AuditEvent

    async def audit_rows(core):
        async with core.read() as s:
            return (await s.execute(sa.select(AuditEvent.action, AuditEvent.object_id)
                                    .where(AuditEvent.object_id == str(r.json()["id"])))).all()

    actions = {a for a, _ in server.call(audit_rows, server.core)}
    assert {"patient.message", "patient.read"} <= actions


def test_failed_send_leaves_nothing(server, monkeypatch):
    """A crash in the middle of a send (after rows are written) rolls everything back."""
    from monsisra.services import messages

    alice = server.login("alice.martin")

    async def totals(core):
        async with core.read() as s:
            return tuple([await s.scalar(sa.select(sa.func.count()).select_from(t))
                          for t in (Message, Recipient, Delivery)])

    before = server.call(totals, server.core)
    real = messages.mailboxes.accounts_of_sync

    def boom(*args, **kwargs):
        # Called after the message, recipients and deliveries rows are written.
        raise RuntimeError("simulated crash during delivery")

    monkeypatch.setattr(messages.mailboxes, "accounts_of_sync", boom)
    try:
        r = send(alice, to=[f"bruno.petit@{DOMAIN}", f"claire.roux@{DOMAIN}"], subject="crash", body="x")
    finally:
        monkeypatch.setattr(messages.mailboxes, "accounts_of_sync", real)
    body = problem_ok(r, 500)
    assert "simulated" not in body["detail"]
    assert server.call(totals, server.core) == before


def test_concurrent_sends_and_reads_keep_counts_exact(server, make_user):
    _, addr, _ = make_user("Concurrence", "Exacte")
    senders = [server.login(u) for u in ("alice.martin", "bruno.petit", "claire.roux")]
    n_each = 10

    def burst(c):
        return [send(c, to=[addr], subject="Concurrent", body="x").json()["id"] for _ in range(n_each)]

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(burst, c) for c in senders]
        ids = [i for f in futures for i in f.result()]
    c = login_as_address(server, addr)
    box = mailbox_id(c)
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda i: c.get(f"/api/v1/mailboxes/{box}/messages/{i}").status_code, ids[::2]))
    counts = c.get(f"/api/v1/mailboxes/{box}/counts").json()["views"]
    assert counts["inbox"]["total"] == 3 * n_each
    assert counts["unread"]["total"] == 3 * n_each - len(ids[::2])

    async def uids(core):
        async with core.read() as s:
            return list(await s.scalars(sa.select(Delivery.uid).where(Delivery.mailbox_id == box)
                                        .order_by(Delivery.id)))

    got = server.call(uids, server.core)
    assert got == sorted(got) and len(set(got)) == len(got)  # strictly increasing IMAP uids


def test_openapi_and_unknown_route_are_problem_json(server):
    with server.client() as anon:
        spec = anon.get("/openapi.json").json()
        assert "/api/v1/messages" in spec["paths"] and "/api/v1/auth/token" in spec["paths"]
        problem_ok(anon.get("/api/v1/nope"), 404)


def test_message_ids_are_rfc5322(server):
    alice = server.login("alice.martin")
    r = send(alice, to=[f"bruno.petit@{DOMAIN}"], subject="id", body="x")
    assert re.fullmatch(r"<[0-9a-f]{32}@monsisra\.localhost>", r.json()["message_id"])


@pytest.mark.parametrize("name", ["../../../etc/passwd", "..\\..\\boot.ini", "a/b/c.pdf"])
def test_uploaded_filenames_never_reach_disk(server, name):
    alice = server.login("alice.martin")
    att = upload(alice, name)
    assert "/" not in att["filename"] and "\\" not in att["filename"]

    async def path_of(core):
        async with core.read() as s:
            a = await s.get(Attachment, att["id"])
            return core.blobs.path(a.sha256)

    path = server.call(path_of, server.core)
    assert path.name == att["sha256"] and path.is_relative_to(server.settings.blob_dir)


def test_purge_removes_old_orphan_uploads_only(server):
    from datetime import timedelta

    from monsisra.domain.clock import utcnow
    from monsisra.services.maintenance import purge

    alice = server.login("alice.martin")
    orphan = upload(alice, "oublie.pdf", minimal_pdf(["orphelin unique"]))
    used = upload(alice, "utilise.pdf", minimal_pdf(["utilisé unique"]))
    assert send(alice, to=[f"bruno.petit@{DOMAIN}"], subject="pj", attachments=[used["id"]]).status_code == 201

    async def age(core):
        async with core.write() as tx:
            await tx.session.execute(sa.update(Attachment).where(Attachment.id.in_([orphan["id"], used["id"]]))
                                     .values(created_at=utcnow() - timedelta(days=2)))
            return core.blobs.path(orphan["sha256"]), core.blobs.path(used["sha256"])

    orphan_path, used_path = server.call(age, server.core)
    report = server.call(purge, server.core)
    assert report.uploads >= 1
    assert not orphan_path.exists() and used_path.exists()
    problem_ok(alice.get(f"/api/v1/attachments/{orphan['id']}"), 404)
    assert alice.get(f"/api/v1/attachments/{used['id']}").status_code == 200


def test_huge_body_refused_before_it_is_read(server):
    """A body far over the limit gets 413 from the declared length, chunked ones while streaming."""
    alice = server.login("alice.martin")
    limit = server.settings.max_message_bytes

    def chunks():
        yield (b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.bin"\r\n'
               b"Content-Type: application/octet-stream\r\n\r\n")
        block = b"\0" * (1 << 20)
        for _ in range(limit // len(block) + 4):
            yield block

    r = alice.post("/api/v1/attachments", content=chunks(),
                   headers={"content-type": "multipart/form-data; boundary=xyz"})
    problem_ok(r, 413)
    # Declared length over the limit: refused from the headers alone, before any body byte.
    import socket

    port = int(server.base_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /api/v1/attachments HTTP/1.1\r\nHost: x\r\n"
                     + f"Authorization: {alice.headers['Authorization']}\r\n".encode()
                     + f"Content-Length: {limit * 4}\r\n".encode()
                     + b"Content-Type: multipart/form-data; boundary=xyz\r\n\r\n")
        reply = sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 413")


def test_search_is_scoped_to_the_mailbox_and_pages(server, make_user):
    """Words found elsewhere in the store never leak in; search results page by cursor."""
    _, addr_a, _ = make_user("Cherche", "Un")
    _, addr_b, _ = make_user("Cherche", "Deux")
    alice = server.login("alice.martin")
    word = "scintigraphie" + addr_a.split("@")[0].replace(".", "").replace("-", "")[-6:]
    mine = [send(alice, to=[addr_a], subject=f"{word} {i}", body="x").json()["id"] for i in range(5)]
    send(alice, to=[addr_b], subject=f"{word} ailleurs", body="x")
    c = login_as_address(server, addr_a)
    box = mailbox_id(c)
    assert all_pages(c, box, q=word, view="all", limit=2) == list(reversed(mine))
    # The internal mailbox tokens cannot be searched for.
    other_box = _mailbox_id_of(server, addr_b)
    assert c.get(f"/api/v1/mailboxes/{box}/messages", params={"q": f"zzmbx{other_box}", "view": "all"}
                 ).json()["items"] == []


def _mailbox_id_of(server, address):
    from monsisra.store.models import Mailbox

    async def q(core):
        async with core.read() as s:
            return await s.scalar(sa.select(Mailbox.id).where(Mailbox.address == address))

    return server.call(q, server.core)
