"""Issue 11, items 12, 13, 18 and 19 through HTTP (API and web forms), on SQLite and PostgreSQL:
recipients' states that tell the truth, addresses outside the MSSanté trust space refused at
once, the bin (« Corbeille »), return after sending, demo data that looks real."""

from __future__ import annotations

import contextlib
import json
import re
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import httpx
import pytest
import sqlalchemy as sa
from websockets.sync.client import connect

from monsisra.domain.clock import utcnow
from monsisra.domain.model import Access
from monsisra.services import demo as demo_service
from monsisra.services import mailboxes, maintenance, outbound, trust
from monsisra.services.demo import minimal_pdf
from monsisra.store.models import Account, Attachment, Delivery, Message, MessageAttachment, Recipient

PARIS = ZoneInfo("Europe/Paris")
TRUSTED = "hardening-test.mssante.fr"
OUTSIDE = "hors de l'espace de confiance MSSanté"


@pytest.fixture(scope="module")
def trusted(server) -> str:
    """Another operator's domain, trusted for these tests (as the gateway tests do)."""
    server.call(trust.add, server.core, [TRUSTED], note="tests")
    return TRUSTED


def box_of(client: httpx.Client) -> int:
    return next(b["id"] for b in client.get("/api/v1/mailboxes").json() if b["kind"] == "PER")


def send(client: httpx.Client, **body) -> httpx.Response:
    body.setdefault("from_mailbox", box_of(client))
    body.setdefault("body", "Message de test")
    return client.post("/api/v1/messages", json=body)


def listed(client: httpx.Client, box: int, view: str, **params) -> list[int]:
    r = client.get(f"/api/v1/mailboxes/{box}/messages", params={"view": view, **params})
    assert r.status_code == 200, r.text
    return [i["id"] for i in r.json()["items"]]


def counts(client: httpx.Client, box: int) -> dict:
    return client.get(f"/api/v1/mailboxes/{box}/counts").json()["views"]


def db(server, fn):
    """Run ``fn(session)`` in a write transaction on the server's own loop and database."""
    async def run():
        async with server.core.write() as tx:
            return await fn(tx.session)
    return server.call(run)


def paris(iso: str) -> datetime:
    return datetime.fromisoformat(iso).astimezone(PARIS)


@contextlib.contextmanager
def web_login(server, username: str, password: str = "demo") -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=30, follow_redirects=False) as client:
        r = client.post("/connexion", data={"username": username, "password": password})
        assert r.status_code == 303, r.text
        yield client


def csrf_of(html: str) -> str:
    match = re.search(r'<meta name="csrf-token" content="([0-9a-f]+)">', html)
    assert match, "no CSRF token in the page"
    return match.group(1)


# --- 12. recipients' states ----------------------------------------------------------------------


def test_each_recipient_tells_where_it_stands(server, make_user, trusted):
    sender, _, sender_box = make_user("Expéditrice")
    reader, reader_address, reader_box = make_user("Lectrice")
    ok, later, never = (f"{n}.{uuid.uuid4().hex[:6]}@{trusted}" for n in ("remis", "plein", "inconnu"))
    subject = f"États des destinataires {uuid.uuid4().hex[:6]}"
    with server.login(sender, "secret-pass") as api, server.login(reader, "secret-pass") as other:
        r = send(api, to=[reader_address, ok, later], cc=[never], subject=subject)
        assert r.status_code == 201, r.text
        sent = r.json()

        def rows() -> dict[str, dict]:
            got = api.get(f"/api/v1/messages/{sent['id']}/receipts")
            assert got.status_code == 200, got.text
            return {i["address"]: i for i in got.json()["items"]}

        first = rows()
        assert set(first) == {reader_address, ok, later, never}
        for row in first.values():  # every row carries the new fields, the old ones stay
            assert {"address", "name", "initials", "kind", "status", "read_at", "detail", "next_attempt_at",
                    "state"} <= set(row)
        assert first[reader_address]["status"] == "delivered" and first[reader_address]["state"] == "delivered"
        assert first[ok]["status"] == "queued" and first[ok]["state"] == "queued" and first[ok]["detail"] is None
        assert first[never]["kind"] == "cc"

        # The local recipient reads it; the other operator answers for the external ones, through
        # the same function the delivery worker uses.
        other.get(f"/api/v1/mailboxes/{reader_box}/messages/{sent['id']}")
        server.call(outbound.record_outcomes, server.core, sent["id"], {
            ok: outbound.Outcome(250, "2.0.0 Ok: queued", "mx.autre"),
            later: outbound.Outcome(452, "4.2.2 Boîte pleine", "mx.autre"),
            never: outbound.Outcome(550, "5.1.1 Adresse inconnue", "mx.autre"),
        })
        now = utcnow()
        after = rows()
        assert after[reader_address]["state"] == "read" and after[reader_address]["read_at"]
        assert after[ok]["status"] == "sent" and after[ok]["state"] == "delivered"
        assert after[later]["status"] == "retrying" and after[later]["state"] == "retrying"
        assert "452" in after[later]["detail"]
        assert datetime.fromisoformat(after[later]["next_attempt_at"]) > now - timedelta(seconds=5)
        assert after[never]["status"] == "failed" and after[never]["state"] == "failed"
        assert "550 5.1.1 Adresse inconnue" in after[never]["detail"] and after[never]["next_attempt_at"] is None

        # A read receipt (MDN) from the other operator: read, at that time.
        read_at = utcnow() - timedelta(minutes=3)
        db(server, lambda s: s.execute(sa.update(Recipient).where(
            Recipient.message_id == sent["id"], Recipient.address == ok).values(read_at=read_at)))
        assert rows()[ok]["state"] == "read"

        # The sender's page says it in words, in Paris time.
        with web_login(server, sender, "secret-pass") as web:
            pane = web.get(f"/message/{sender_box}/{sent['id']}/accuses", headers={"HX-Request": "true"}).text
        retry_at = paris(after[later]["next_attempt_at"]).strftime("%H:%M")
        read_hm = paris(after[reader_address]["read_at"]).strftime("%H:%M")
        # "à HH:MM" today, "le 3 nov. à HH:MM" when the time fell on another day (around midnight).
        assert re.search(rf"lu (à|le [^<]+ à) {read_hm}<", pane), pane
        assert re.search(rf"nouvel essai (à|le [^<]+ à) {retry_at}<", pane), pane
        assert "échec : 550 5.1.1 Adresse inconnue" in pane
        assert pane.count('data-state="read"') == 2 and 'data-state="retrying"' in pane

        # The non-delivery notice gives the time of sending in Paris, as everywhere else.
        notices = api.get(f"/api/v1/mailboxes/{sender_box}/messages", params={"view": "all", "q": "Non distribué"})
        notice = next(i for i in notices.json()["items"] if i["subject"] == f"Non distribué : {subject}")
        body = api.get(f"/api/v1/mailboxes/{sender_box}/messages/{notice['id']}").json()["body"]
        sent_at = datetime.fromisoformat(sent["created_at"])
        assert f"envoyé le {paris(sent['created_at']).strftime('%d/%m/%Y à %H:%M')}" in body
        assert sent_at.strftime("%H:%M") not in body.split("n'a pas")[0] and "UTC" not in body
        assert never in body

        # Only the sending mailbox's users may ask.
        r = other.get(f"/api/v1/messages/{sent['id']}/receipts")
        assert r.status_code == 404


# --- 13. the trust space -------------------------------------------------------------------------


def _stored(server, subject: str) -> int:
    async def count(s):
        return await s.scalar(sa.select(sa.func.count()).select_from(Message).where(Message.subject == subject))
    return db(server, count)


def _recipient_rows(server, address: str) -> int:
    async def count(s):
        return await s.scalar(sa.select(sa.func.count()).select_from(Recipient).where(Recipient.address == address))
    return db(server, count)


def test_address_outside_the_trust_space_is_refused_at_once(server, make_user, trusted):
    user, _, box = make_user("Prudente")
    _, colleague, _ = make_user("Collègue")
    stranger = f"quelquun.{uuid.uuid4().hex[:6]}@gmail.com"
    subject = f"Vers gmail {uuid.uuid4().hex[:6]}"
    with server.login(user, "secret-pass") as api:
        before = counts(api, box)
        r = send(api, to=[colleague, stranger], subject=subject)
        assert r.status_code == 422, r.text
        problem = r.json()
        assert r.headers["content-type"].startswith("application/problem+json")
        assert problem["invalid_addresses"] == [{"address": stranger, "reason": OUTSIDE}]
        assert stranger in problem["detail"]
        # Nothing written: no message, no outbox row, counts unchanged (the colleague got nothing).
        assert _stored(server, subject) == 0 and _recipient_rows(server, stranger) == 0
        assert counts(api, box) == before
        # Same in cc, and for a domain that only looks like a trusted one.
        r = send(api, to=[colleague], cc=[f"x@{trusted}.evil.example"], subject=subject)
        assert r.status_code == 422 and r.json()["invalid_addresses"][0]["reason"] == OUTSIDE
        # A trusted operator's address is accepted (queued for the outbound worker).
        r = send(api, to=[f"someone@{trusted}"], subject=subject)
        assert r.status_code == 201, r.text

        # A draft may keep such an address; sending it is refused and keeps the draft.
        d = send(api, to=[stranger], subject=f"Brouillon {subject}", draft=True)
        assert d.status_code == 201, d.text
        r = send(api, to=[stranger], subject=f"Brouillon {subject}", draft_id=d.json()["id"])
        assert r.status_code == 422 and r.json()["invalid_addresses"][0]["reason"] == OUTSIDE
        assert d.json()["id"] in listed(api, box, "drafts") and _recipient_rows(server, stranger) == 1  # the draft's

        # The patients' domain follows the same rule: refused when it is not trusted.
        patient = "275082A00412359@patient.mssante.fr"
        server.call(trust.remove, server.core, "patient.mssante.fr")
        try:
            r = send(api, to=[patient], subject=subject, category="patient")
            assert r.status_code == 422
            assert r.json()["invalid_addresses"] == [{"address": patient.lower(), "reason": OUTSIDE}]
        finally:
            server.call(trust.add, server.core, ["patient.mssante.fr"])
        assert send(api, to=[patient], subject=subject, category="patient").status_code == 201

    # The compose form names the address and the reason, and marks its chip.
    with web_login(server, user, "secret-pass") as web:
        token = csrf_of(web.get("/ecrire").text)
        page = web.post("/ecrire", data={"csrf": token, "from_mailbox": box, "to": [colleague, stranger],
                                          "subject": subject, "body": "x", "category": "letter"})
        assert page.status_code == 422
        assert f"{stranger} : {OUTSIDE}".replace("'", "&#39;") in page.text
        assert re.search(rf'class="chip bad" data-address="{re.escape(stranger)}"', page.text)
        assert _stored(server, subject) == 2  # the two accepted sends above, nothing more


def test_address_check_endpoint(server, make_user, trusted):
    user, own, _ = make_user("Vérifie")
    with server.login(user, "secret-pass") as api:
        def check(address: str) -> dict:
            r = api.get("/api/v1/addresses/check", params={"address": address})
            assert r.status_code == 200, r.text
            return r.json()

        assert check(f"  {own.upper()} ") == {"address": own, "ok": True, "reason": None, "local": True}
        unknown = f"personne.{uuid.uuid4().hex[:6]}@{server.settings.domain}"
        assert check(unknown) == {"address": unknown, "ok": False, "reason": "boîte inconnue sur cette plateforme",
                                  "local": True}
        assert check("quelquun@gmail.com") == {"address": "quelquun@gmail.com", "ok": False, "reason": OUTSIDE,
                                               "local": False}
        assert check(f"Secretariat@{trusted}") == {"address": f"secretariat@{trusted}", "ok": True, "reason": None,
                                                   "local": False}
        bad = check("pas une adresse")
        assert bad["ok"] is False and bad["reason"] == "adresse mal formée" and bad["local"] is False
        ins = check("180017510801183@patient.mssante.fr")  # wrong key
        assert ins["ok"] is False and "INS" in ins["reason"]
        assert check("180017510801182@patient.mssante.fr")["ok"] is True
        server.call(trust.add, server.core, ["*.chu-essai.fr"])
        assert check("avis@cardio.chu-essai.fr")["ok"] is True
        r = api.get("/api/v1/addresses/check", params={"address": "x" * 400 + "@gmail.com"})
        assert r.status_code == 422
    with httpx.Client(base_url=server.base_url, timeout=30) as anon:
        assert anon.get("/api/v1/addresses/check", params={"address": own}).status_code == 401


# --- 18. the bin ---------------------------------------------------------------------------------


def test_delete_restore_list_and_count_the_bin(server, make_user):
    owner, address, box = make_user("Corbeille")
    sender, _, _ = make_user("Envoie")
    with server.login(sender, "secret-pass") as out, server.login(owner, "secret-pass") as api:
        ids = [send(out, to=[address], subject=f"À trier {i}").json()["id"] for i in range(4)]
        api.patch(f"/api/v1/mailboxes/{box}/messages/{ids[1]}", json={"favorite": True, "read": True})
        api.patch(f"/api/v1/mailboxes/{box}/messages/{ids[2]}", json={"archived": True})
        before = counts(api, box)
        assert before["trash"] == {"unread": 0, "total": 0}
        url = f"/api/v1/mailboxes/{box}/messages"

        # Newest message deleted first, an older one next: the bin lists newest-deleted first.
        r = api.delete(f"{url}/{ids[3]}")
        assert r.status_code == 204 and r.content == b""
        assert api.delete(f"{url}/{ids[1]}").status_code == 204
        assert api.delete(f"{url}/{ids[1]}").status_code == 204  # already there: nothing changes
        assert listed(api, box, "trash") == [ids[1], ids[3]]
        page1 = api.get(url, params={"view": "trash", "limit": 1}).json()
        page2 = api.get(url, params={"view": "trash", "limit": 1, "cursor": page1["next_cursor"]}).json()
        assert [i["id"] for i in page1["items"] + page2["items"]] == [ids[1], ids[3]] and not page2["next_cursor"]
        assert api.get(url, params={"view": "trash", "cursor": "@@"}).status_code == 422
        item = page1["items"][0]
        assert item["state"]["deleted"] is True and item["state"]["deleted_at"] and item["state"]["favorite"]
        for view in ("inbox", "all", "unread", "favorites"):
            assert ids[1] not in listed(api, box, view) and ids[3] not in listed(api, box, view)
        now = counts(api, box)
        assert now["trash"] == {"unread": 1, "total": 2}
        assert now["all"]["total"] == before["all"]["total"] - 2 and now["favorites"]["total"] == 0
        # In the bin a message takes no other change, and reading it through the API is 404 as before.
        assert api.patch(f"{url}/{ids[3]}", json={"favorite": True}).status_code == 404
        assert api.get(f"{url}/{ids[3]}").status_code == 404

        # Restoring puts it back where it was, flags untouched.
        r = api.post(f"{url}/{ids[1]}/restore")
        assert r.status_code == 200, r.text
        assert r.json() == {"read": True, "favorite": True, "todo": False, "archived": False, "deleted": False,
                            "deleted_at": None}
        assert ids[1] in listed(api, box, "favorites") and ids[1] in listed(api, box, "inbox")
        # PATCH {"deleted": …} keeps working both ways, archived state kept.
        assert api.patch(f"{url}/{ids[2]}", json={"deleted": True}).json()["deleted"] is True
        assert ids[2] not in listed(api, box, "archived") and ids[2] in listed(api, box, "trash")
        assert api.patch(f"{url}/{ids[2]}", json={"deleted": False}).json()["archived"] is True
        assert ids[2] in listed(api, box, "archived") and ids[2] not in listed(api, box, "inbox")
        after = counts(api, box)
        assert after["trash"] == {"unread": 1, "total": 1} and after["favorites"]["total"] == 1
        assert api.post(f"{url}/999999999/restore").status_code == 404
        assert api.delete(f"{url}/999999999").status_code == 404

        # A draft goes to the bin and comes back to the drafts.
        draft = send(api, to=[], subject="Brouillon à jeter", draft=True).json()["id"]
        assert api.delete(f"{url}/{draft}").status_code == 204
        assert draft not in listed(api, box, "drafts") and draft in listed(api, box, "trash")
        trashed = api.get(url, params={"view": "trash"}).json()["items"][0]
        assert trashed["id"] == draft and trashed["state"]["role"] == "draft"
        api.post(f"{url}/{draft}/restore")
        assert draft in listed(api, box, "drafts")


def test_the_bin_needs_the_access_of_reading(server, make_user):
    owner, address, box = make_user("Titulaire")
    secretary, _, _ = make_user("Secrétaire")
    outsider, _, outsider_box = make_user("Intrus")

    async def grant():
        async with server.core.read() as s:
            account_id = await s.scalar(sa.select(Account.id).where(Account.username == secretary))
        await mailboxes.grant(server.core, box, account_id, Access.DELEGATE)
    server.call(grant)
    with server.login(owner, "secret-pass") as api:
        mid = send(api, to=[address], subject="Pour la secrétaire").json()["id"]
    url = f"/api/v1/mailboxes/{box}/messages/{mid}"
    with server.login(outsider, "secret-pass") as intruder:
        assert intruder.delete(url).status_code == 404
        assert intruder.post(f"{url}/restore").status_code == 404
        assert intruder.get(f"/api/v1/mailboxes/{box}/messages", params={"view": "trash"}).status_code == 404
        assert intruder.delete(f"/api/v1/mailboxes/{outsider_box}/messages/{mid}").status_code == 404
    with server.login(secretary, "secret-pass") as delegate:
        assert delegate.delete(url).status_code == 204
        assert mid in listed(delegate, box, "trash")
        assert delegate.post(f"{url}/restore").status_code == 200


def test_deleting_tells_the_other_open_pages(server, make_user):
    owner, address, box = make_user("Évènements")
    with server.login(owner, "secret-pass") as api:
        mid = send(api, to=[address], subject="Évènements de la corbeille").json()["id"]
        token = api.headers["Authorization"].split(" ", 1)[1]
        url = server.base_url.replace("http://", "ws://") + "/api/v1/events"
        with connect(url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
            assert json.loads(ws.recv(timeout=10))["type"] == "hello"
            assert api.delete(f"/api/v1/mailboxes/{box}/messages/{mid}").status_code == 204
            seen = []
            while not ({"message.flags", "counts"} <= {e["type"] for e in seen}):
                seen.append(json.loads(ws.recv(timeout=10)))
        flags = next(e for e in seen if e["type"] == "message.flags")
        assert flags["message_id"] == mid and flags["mailbox_id"] == box and flags["flags"] == {"deleted": True}


def test_the_bin_is_emptied_after_30_days(server, make_user):
    sender, sender_address, sender_box = make_user("Purge")
    reader, reader_address, reader_box = make_user("Lit")
    pdf = minimal_pdf(["Pièce à purger", uuid.uuid4().hex])
    with server.login(sender, "secret-pass") as out, server.login(reader, "secret-pass") as api:
        up = out.post("/api/v1/attachments", files={"file": ("a-purger.pdf", pdf, "application/pdf")}).json()
        old = send(out, to=[reader_address], subject="Ancien", attachments=[up["id"]]).json()["id"]
        recent = send(out, to=[reader_address], subject="Récent").json()["id"]
        reply = send(api, to=[sender_address], subject="Re: Ancien", in_reply_to=old)
        assert reply.status_code == 201, reply.text
        reply_id = reply.json()["id"]
        for client, box, mid in ((api, reader_box, old), (api, reader_box, recent), (out, sender_box, old)):
            assert client.delete(f"/api/v1/mailboxes/{box}/messages/{mid}").status_code == 204

        def age(mailbox_id: int, message_id: int, days: int):
            return db(server, lambda s: s.execute(sa.update(Delivery).where(
                Delivery.mailbox_id == mailbox_id, Delivery.message_id == message_id)
                .values(deleted_at=utcnow() - timedelta(days=days))))

        # The reader's copy is 31 days in the bin, the sender's only 29: the message stays.
        age(reader_box, old, 31)
        age(sender_box, old, 29)
        age(reader_box, recent, 29)
        report = server.call(maintenance.purge, server.core)
        assert report.trashed >= 1
        assert old not in listed(api, reader_box, "trash") and recent in listed(api, reader_box, "trash")
        assert old in listed(out, sender_box, "trash")
        assert _stored(server, "Ancien") == 1
        before = counts(api, reader_box)["trash"]["total"]
        assert before == 1  # counts follow the purge (the mailbox's modseq moved)

        # Then the sender's copy too: the message, its recipients and its attachment link go; the
        # upload (older than a day, named by nothing) and its file go with the orphan purge.
        age(sender_box, old, 31)
        db(server, lambda s: s.execute(sa.update(Attachment).where(Attachment.id == up["id"])
                                       .values(created_at=utcnow() - timedelta(days=40))))
        blob = server.core.blobs.path(up["sha256"])
        assert blob.exists()
        report = server.call(maintenance.purge, server.core)
        assert report.messages >= 1 and report.uploads >= 1
        assert _stored(server, "Ancien") == 0 and not blob.exists()

        async def leftovers(s):
            return (await s.scalar(sa.select(sa.func.count()).select_from(Recipient)
                                   .where(Recipient.message_id == old)),
                    await s.scalar(sa.select(sa.func.count()).select_from(MessageAttachment)
                                   .where(MessageAttachment.message_id == old)),
                    await s.scalar(sa.select(sa.func.count()).select_from(Attachment)
                                   .where(Attachment.id == up["id"])))
        assert db(server, leftovers) == (0, 0, 0)
        # The reply stays readable in its thread; only its link to the vanished parent went.
        kept = api.get(f"/api/v1/mailboxes/{reader_box}/messages/{reply_id}").json()
        assert kept["subject"] == "Re: Ancien" and kept["thread"]["in_reply_to"] is None
        assert recent in listed(api, reader_box, "trash")


# --- 19. back where one was, demo data -----------------------------------------------------------


def test_sending_returns_where_one_was_with_a_confirmation(server, make_user):
    user, _, box = make_user("Retour")
    _, colleague, _ = make_user("Destinataire", "DESTINATAIRE")
    with web_login(server, user, "secret-pass") as web:
        compose = web.get("/ecrire", params={"retour": f"/boite?bal={box}&dossier=inbox&ouvrir=12"}).text
        assert f'name="retour" id="retour" value="/boite?bal={box}&amp;dossier=inbox&amp;ouvrir=12"' in compose
        for hostile in ("//evil.example/x", "https://evil.example/", "/\\evil.example", "/\t/evil.example",
                        "javascript:alert(1)", "/ecrire?type=courrier"):
            page = web.get("/ecrire", params={"retour": hostile}).text
            assert 'name="retour" id="retour" value=""' in page, hostile
        # Without retour, the page of our own site that linked here (no-JS fallback); never another site.
        assert 'value="/parametres"' in web.get("/ecrire", headers={"Referer": f"{server.base_url}/parametres"}).text
        assert 'id="retour" value=""' in web.get("/ecrire", headers={"Referer": "https://evil.example/boite"}).text
        token = csrf_of(compose)

        def post(retour: str, subject: str) -> httpx.Response:
            return web.post("/ecrire", data={"csrf": token, "from_mailbox": box, "to": colleague, "subject": subject,
                                             "body": "x", "category": "letter", "retour": retour})

        back = f"/boite?bal={box}&dossier=inbox"
        r = post(back, "Retour à la boîte")
        assert r.status_code == 303 and r.headers["location"] == back
        page = web.get(back).text
        assert 'id="confirmation"' in page and "Message envoyé à" in page and "DESTINATAIRE" in page
        assert "Voir le message envoyé" in page and "dossier=sent" in page
        assert 'id="confirmation"' not in web.get(back).text  # shown once
        for hostile in ("//evil.example/x", "https://evil.example/", "/\\evil.example"):
            r = post(hostile, "Retour refusé")
            assert r.status_code == 303 and r.headers["location"].startswith(f"/boite?bal={box}&dossier=sent&ouvrir=")
        # A confirmation cookie written by someone else is ignored.
        forged = f"monsisra_session={web.cookies['monsisra_session']}; monsisra_flash=forged.value.x"
        page = web.get(back, headers={"Cookie": forged})
        assert page.status_code == 200 and 'id="confirmation"' not in page.text

        # « Supprimer le brouillon » from the writing page: to the bin, back where one was.
        draft = web.post("/ecrire/brouillon", data={"csrf": token, "from_mailbox": box, "subject": "À jeter",
                                                    "body": "x", "category": "letter"}).json()["draft_id"]
        r = web.post("/ecrire/supprimer", data={"csrf": token, "from_mailbox": box, "draft_id": draft,
                                                "retour": back})
        assert r.status_code == 303 and r.headers["location"] == back
        assert "Brouillon placé dans la corbeille" in web.get(back).text
        assert "À jeter" in web.get("/boite/liste", params={"bal": box, "dossier": "trash"}).text


def test_demo_messages_are_spread_over_weeks_with_whole_attachment_names(server):
    with server.login("alice.martin") as api:
        box = box_of(api)
        items = api.get(f"/api/v1/mailboxes/{box}/messages", params={"view": "all", "limit": 200}).json()["items"]
        sent = api.get(f"/api/v1/mailboxes/{box}/messages", params={"view": "sent", "limit": 200}).json()["items"]
        trash = api.get(f"/api/v1/mailboxes/{box}/messages", params={"view": "trash"}).json()["items"]
    demo = [i for i in items if i["sender"]["address"].split("@")[0] in {
        "secretariat.ch-aurillac", "laboratoire.biocantal", "radiologie.imagerie-volcans", "urgences.ch-aurillac",
        "dgs-urgent", "dac63", "avis-hemostase.chu-clermont", "cardiologie.chu-clermont", "claire.roux",
        "bruno.petit", "contact", "secretariat.cardiologie", "180017510801182"}]
    now = utcnow()
    ages = [now - datetime.fromisoformat(i["created_at"]) for i in demo]
    assert len(demo) >= 15 and all(a >= timedelta(0) for a in ages)
    assert any(a < timedelta(hours=12) for a in ages), "something arrived today"
    assert any(timedelta(days=2) <= a <= timedelta(days=7) for a in ages), "something this week"
    assert any(a > timedelta(days=21) for a in ages), "something weeks ago"
    assert len({paris(i["created_at"]).date() for i in demo}) >= 10
    # Lists are newest first by arrival, and the dates agree with that order.
    dates = [datetime.fromisoformat(i["created_at"]) for i in items]
    assert dates == sorted(dates, reverse=True)
    assert any(now - datetime.fromisoformat(i["created_at"]) > timedelta(days=7) for i in sent)
    assert [i["subject"] for i in trash if i["subject"].startswith("Invitation")], "the demo bin shows something"

    names = [(a["filename"], i) for i in demo for a in i["attachments"]]
    assert len(names) >= 5
    for filename, item in names:
        assert filename.endswith(".pdf") and len(filename) <= 120
        with server.login("alice.martin") as api:
            body = api.get(f"/api/v1/mailboxes/{box}/messages/{item['id']}").json()["body"]
        text = f"{item['subject']} {body}".lower()
        for word in re.findall(r"\w+", filename.removesuffix(".pdf").lower()):
            assert re.search(rf"\b{re.escape(word)}\b", text), f"{filename!r}: « {word} » is cut or invented"

    # Loading the demo again changes nothing (idempotent), dates included.
    async def snapshot(s):
        return (await s.execute(sa.select(sa.func.count(), sa.func.max(Message.id), sa.func.min(Message.created_at))
                                .select_from(Message))).one()
    before = db(server, snapshot)
    server.call(demo_service.load, server.core)
    assert db(server, snapshot) == before
