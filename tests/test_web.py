"""Web pages over real HTTP: session cookie, CSRF, security headers, page weight, every
folder, settings, drafts, and the session cookie accepted by the API and the WebSocket."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import httpx
import pytest
from websockets.sync.client import connect

from tests.web_support import insert_hostile_message

PAGE_BUDGET = 100 * 1024  # bytes a phone downloads for the inbox: page + scripts and styles as sent


@pytest.fixture(scope="module")
def hostile_message(server):
    return insert_hostile_message(server, "sophie.blanc")


@contextlib.contextmanager
def web_login(server, username: str, password: str = "demo") -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=30, follow_redirects=False) as client:
        r = client.post("/connexion", data={"username": username, "password": password})
        assert r.status_code == 303, r.text
        assert r.headers["location"] == "/boite"
        yield client


def csrf_of(html: str) -> str:
    match = re.search(r'<meta name="csrf-token" content="([0-9a-f]+)">', html)
    assert match, "no CSRF token in the page"
    return match.group(1)


def test_login_sets_a_hardened_session_cookie(server):
    with httpx.Client(base_url=server.base_url, timeout=30) as anon:
        r = anon.get("/boite", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/connexion")
        page = anon.get("/connexion")
        assert page.status_code == 200 and "Mot de passe" in page.text and 'name="otp"' in page.text
        assert "<kbd>alice.martin</kbd>" in page.text  # development domain with the demo data
        bad = anon.post("/connexion", data={"username": "alice.martin", "password": "faux"})
        assert bad.status_code == 400 and "incorrect" in bad.text
        assert "monsisra_session" not in bad.headers.get("set-cookie", "")
        ok = anon.post("/connexion", data={"username": "alice.martin", "password": "demo"}, follow_redirects=False)
        cookie = ok.headers["set-cookie"].lower()
        assert "monsisra_session=" in cookie and "httponly" in cookie and "samesite=lax" in cookie
        assert "secure" not in cookie  # plain HTTP here; Secure is set when served over TLS


def test_cross_site_posts_are_refused(server):
    with httpx.Client(base_url=server.base_url, timeout=30) as anon:
        r = anon.post("/connexion", data={"username": "alice.martin", "password": "demo"},
                      headers={"Origin": "https://evil.example"})
        assert r.status_code == 403 and "monsisra_session" not in r.headers.get("set-cookie", "")
    with web_login(server, "alice.martin") as web:
        token = csrf_of(web.get("/boite").text)
        r = web.post("/absent", data={"csrf": token, "absent": "1"}, headers={"Origin": "https://evil.example"})
        assert r.status_code == 403


def test_open_redirect_refused(server):
    with httpx.Client(base_url=server.base_url, timeout=30) as anon:
        r = anon.post("/connexion", data={"username": "alice.martin", "password": "demo",
                                          "suite": "//evil.example/"}, follow_redirects=False)
        assert r.headers["location"] == "/boite"


def test_inbox_page_security_headers_and_weight(server):
    with web_login(server, "alice.martin") as web:
        r = web.get("/boite")
        assert r.status_code == 200
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert r.headers["x-frame-options"] == "DENY"
        html = r.text
        assert "<script>" not in html and " on" + "click=" not in html  # no inline script or handler
        for label in ("Boîte de réception", "Non lus", "Tous les messages", "Conversations", "Courriers", "MSSanté",
                      "Échanges patient", "Téléexpertises", "Demandes d&#39;appui", "Résultats", "Évènements",
                      "Brouillons", "DGS Urgent", "Favoris", "À traiter", "Apparaître absent", "Toutes les boîtes",
                      "Rechercher un message", "Envoyer un courrier", "Démarrer une conversation",
                      "Demander une expertise", "Échanges avec un patient"):
            assert label in html, label
        assert "content-encoding" not in r.headers  # pages carry the CSRF token: never compressed (BREACH)
        # The weight is what a phone downloads: the page, and its scripts and styles as sent (compressed).
        weight = r.num_bytes_downloaded
        for asset in re.findall(r'(?:src|href)="(/static/[^"]+)"', html):
            if asset.endswith(".svg"):
                continue
            a = web.get(asset, headers={"Accept-Encoding": "gzip"})
            assert a.status_code == 200, asset
            if len(a.content) > 4096:
                assert a.headers.get("content-encoding") == "gzip", asset
            weight += a.num_bytes_downloaded
        assert weight < PAGE_BUDGET, f"inbox page weighs {weight} bytes"


def test_every_folder_renders(server):
    with web_login(server, "alice.martin") as web:
        for folder in ("inbox", "unread", "all", "conversation", "letter", "mssante", "patient", "teleexpertise",
                       "support", "result", "event", "drafts", "dgs_urgent", "favorites", "todo", "sent", "archived"):
            r = web.get("/boite", params={"dossier": folder})
            assert r.status_code == 200, folder
            assert 'class="item' in r.text, f"demo data shows something in {folder}"
        listing = web.get("/boite/liste", params={"dossier": "result"})
        assert "Résultats d&#39;analyses" in listing.text or "Résultats" in listing.text
        search = web.get("/boite/liste", params={"q": "echocardiographie"})
        assert "chocardiographie" in search.text
        assert web.get("/boite", params={"bal": "toutes"}).status_code == 200


def test_delegate_sees_delegated_mailbox(server):
    with web_login(server, "sophie.blanc") as web:
        r = web.get("/boite")
        assert "Dr Alice MARTIN" in r.text and "délégation" in r.text


def test_forged_posts_are_refused_without_csrf(server):
    with web_login(server, "alice.martin") as web:
        me = server.login("alice.martin").get("/api/v1/me").json()
        r = web.post("/parametres", data={"categories": ["letter"]})
        assert r.status_code == 403
        assert server.login("alice.martin").get("/api/v1/me").json()["inbox_categories"] == me["inbox_categories"]
        # The API accepts the cookie for reads, but writes need the CSRF header.
        assert web.get("/api/v1/me").status_code == 200
        assert web.patch("/api/v1/me", json={"appear_absent": True}).status_code == 401
        token = csrf_of(web.get("/boite").text)
        r = web.patch("/api/v1/me", json={"appear_absent": False}, headers={"X-CSRF-Token": token})
        assert r.status_code == 200


def test_settings_choose_inbox_categories(server, make_user):
    username, _, _ = make_user("Réglages")
    with web_login(server, username, "secret-pass") as web:
        token = csrf_of(web.get("/parametres").text)
        r = web.post("/parametres", data={"csrf": token, "categories": ["letter", "result"]})
        assert r.status_code == 303
        page = web.get("/parametres").text
        assert re.search(r'value="letter" checked', page) and not re.search(r'value="conversation" checked', page)
        with server.login(username, "secret-pass") as api:
            assert api.get("/api/v1/me").json()["inbox_categories"] == ["letter", "result"]


def test_send_and_draft_through_the_form(server, make_user):
    sender, _, sender_box = make_user("Envoi")
    _, rcpt_address, _ = make_user("Réception")
    with web_login(server, sender, "secret-pass") as web:
        token = csrf_of(web.get("/ecrire?type=courrier").text)
        d1 = web.post("/ecrire/brouillon", data={"csrf": token, "from_mailbox": sender_box, "subject": "Brouillon 1",
                                                 "body": "début", "category": "letter"})
        assert d1.status_code == 200, d1.text
        d2 = web.post("/ecrire/brouillon", data={"csrf": token, "from_mailbox": sender_box, "subject": "Brouillon 2",
                                                 "body": "suite", "category": "letter",
                                                 "draft_id": d1.json()["draft_id"]})
        drafts = web.get("/boite/liste", params={"dossier": "drafts"}).text
        assert "Brouillon 2" in drafts and "Brouillon 1" not in drafts
        bad = web.post("/ecrire", data={"csrf": token, "from_mailbox": sender_box, "to": "personne@" +
                                        server.settings.domain, "subject": "x", "body": "y", "category": "letter"})
        assert bad.status_code == 422 and "boîte inconnue" in bad.text
        sent = web.post("/ecrire", data={"csrf": token, "from_mailbox": sender_box, "to": rcpt_address,
                                         "subject": "Envoyé par le formulaire", "body": "Bonjour",
                                         "category": "letter", "draft_id": d2.json()["draft_id"]})
        assert sent.status_code == 303 and "dossier=sent" in sent.headers["location"]
        assert "Brouillon 2" not in web.get("/boite/liste", params={"dossier": "drafts"}).text
        page = web.get(sent.headers["location"]).text
        assert "Envoyé par le formulaire" in page and "personne pour l'instant" in page


def test_hostile_html_is_sanitised_in_the_page(server, hostile_message):
    mailbox_id, message_id, _ = hostile_message
    with web_login(server, "sophie.blanc") as web:
        r = web.get(f"/message/{mailbox_id}/{message_id}", headers={"HX-Request": "true"})
        assert r.status_code == 200
        pane = r.text
        assert "<script" not in pane and "onerror" not in pane.replace("onerror=alert(1)&gt;", "")
        assert "<iframe" not in pane and "javascript:" not in pane and "tracker.example" not in pane
        assert "Bonjour &lt;img src=x onerror=alert(1)&gt;" in pane


def test_other_people_cannot_open_a_message(server, hostile_message):
    mailbox_id, message_id, _ = hostile_message
    with web_login(server, "claire.roux") as web:
        r = web.get(f"/message/{mailbox_id}/{message_id}", headers={"HX-Request": "true"})
        assert r.status_code == 404 and "Bonjour" not in r.text


def test_websocket_accepts_the_session_cookie_from_our_origin_only(server):
    with web_login(server, "alice.martin") as web:
        cookie = f"monsisra_session={web.cookies['monsisra_session']}"
    url = server.base_url.replace("http://", "ws://") + "/api/v1/events"
    with connect(url, additional_headers={"Cookie": cookie, "Origin": server.base_url}) as ws:
        assert '"hello"' in ws.recv(timeout=10)
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    with pytest.raises((ConnectionClosed, InvalidStatus)), \
            connect(url, additional_headers={"Cookie": cookie, "Origin": "http://evil.example"}) as ws:
        ws.recv(timeout=10)


def test_logout_revokes_the_session(server):
    with web_login(server, "bruno.petit") as web:
        token = csrf_of(web.get("/boite").text)
        cookie = web.cookies["monsisra_session"]
        r = web.post("/deconnexion", data={"csrf": token})
    assert r.status_code == 303 and r.headers["location"] == "/connexion"
    with httpx.Client(base_url=server.base_url, timeout=30, cookies={"monsisra_session": cookie}) as replay:
        assert replay.get("/boite", follow_redirects=False).status_code == 303
        assert replay.get("/api/v1/me").status_code == 401


def test_htmx_request_without_session_redirects_to_login(server):
    with httpx.Client(base_url=server.base_url, timeout=30) as anon:
        r = anon.get("/boite/liste", headers={"HX-Request": "true"})
        assert r.status_code == 204 and r.headers["hx-redirect"].startswith("/connexion")


def test_reply_and_forward_are_prefilled(server, make_user):
    sender, sender_address, sender_box = make_user("Question")
    reader, reader_address, reader_box = make_user("Réponse")
    with server.login(sender, "secret-pass") as api:
        sent = api.post("/api/v1/messages", json={"from_mailbox": sender_box, "to": [reader_address],
                                                  "subject": "Avis sur un ECG", "body": "Ligne 1\nLigne 2"}).json()
    with web_login(server, reader, "secret-pass") as web:
        reply = web.get("/ecrire", params={"repondre": f"{reader_box}:{sent['id']}"}).text
        assert 'value="Re: Avis sur un ECG"' in reply and f'value="{sender_address}"' in reply
        assert "&gt; Ligne 2" in reply and f'name="in_reply_to" value="{sent["id"]}"' in reply
        forward = web.get("/ecrire", params={"transferer": f"{reader_box}:{sent['id']}"}).text
        assert 'value="Tr: Avis sur un ECG"' in forward and "Message transféré" in forward
        assert web.get("/ecrire", params={"repondre": f"{reader_box}:999999999"}).status_code == 404


def test_appear_absent_toggle(server, make_user):
    username, _, _ = make_user("Absent")
    with web_login(server, username, "secret-pass") as web:
        token = csrf_of(web.get("/boite").text)
        r = web.post("/absent", data={"csrf": token, "absent": "1"}, headers={"HX-Request": "true"})
        assert r.status_code == 200 and 'aria-checked="true"' in r.text
        assert web.get("/api/v1/me").json()["appear_absent"] is True
        web.post("/absent", data={"csrf": token, "absent": "0"}, headers={"HX-Request": "true"})
        assert web.get("/api/v1/me").json()["appear_absent"] is False


def test_thread_shown_and_account_without_mailbox(server, make_user):
    asker, asker_address, asker_box = make_user("Fil")
    expert, expert_address, expert_box = make_user("Expert")
    with server.login(asker, "secret-pass") as api:
        first = api.post("/api/v1/messages", json={"from_mailbox": asker_box, "to": [expert_address],
                                                   "subject": "Plaie du talon", "body": "Photo demain",
                                                   "category": "conversation"}).json()
    with server.login(expert, "secret-pass") as api:
        answer = api.post("/api/v1/messages", json={"from_mailbox": expert_box, "to": [asker_address],
                                                    "subject": "Re: Plaie du talon", "body": "Merci",
                                                    "category": "conversation", "in_reply_to": first["id"]}).json()
    with web_login(server, asker, "secret-pass") as web:
        pane = web.get(f"/message/{asker_box}/{answer['id']}", headers={"HX-Request": "true"}).text
        assert "Dans ce fil (2 messages)" in pane and "Photo demain" in pane
    with web_login(server, "admin") as web:
        assert web.get("/boite").status_code == 200
        assert web.get("/ecrire").status_code == 200


def test_cookie_is_secure_over_tls(server):
    from starlette.requests import Request
    from starlette.responses import Response

    from monsisra.web.session import Sessions

    sessions = Sessions(server.settings)
    for scheme, secure in (("https", True), ("http", False)):
        request = Request({"type": "http", "scheme": scheme, "method": "GET", "path": "/", "headers": [],
                           "server": ("monsisra.example", 443), "query_string": b""})
        response = Response()
        sessions.set_cookie(response, request, "token")
        assert ("secure" in response.headers["set-cookie"].lower()) is secure


def test_api_documentation_page_is_under_the_same_csp(server):
    """/docs is served from our own files (issue 11): the strict CSP of every page applies."""
    with httpx.Client(base_url=server.base_url, timeout=30) as anon:
        r = anon.get("/docs")
        assert r.status_code == 200
        assert r.headers["content-security-policy"] == anon.get("/connexion").headers["content-security-policy"]


def test_list_pages_with_the_cursor(server, make_user):
    sender, _, sender_box = make_user("Pages")
    reader, reader_address, reader_box = make_user("Lecteur")
    with server.login(sender, "secret-pass") as api:
        for i in range(55):
            r = api.post("/api/v1/messages", json={"from_mailbox": sender_box, "to": [reader_address],
                                                   "subject": f"Message numéro {i:02d}", "body": "."})
            assert r.status_code == 201
    with web_login(server, reader, "secret-pass") as web:
        first = web.get("/boite/liste", params={"bal": reader_box, "dossier": "inbox"}).text
        assert first.count('<li class="item') == 50 and "Message numéro 54" in first
        cursor = re.search(r"apres=([A-Za-z0-9_-]+)", first).group(1)
        rest = web.get("/boite/liste", params={"bal": reader_box, "dossier": "inbox", "apres": cursor}).text
        assert rest.count('<li class="item') == 5 and "Message numéro 00" in rest and "Plus de messages" not in rest
        everything = web.get("/boite/liste", params={"bal": reader_box, "dossier": "inbox", "n": 60}).text
        assert everything.count('<li class="item') == 55
        assert web.get("/boite/liste", params={"bal": sender_box, "dossier": "inbox"}).status_code == 404


def test_receipt_to_another_address_is_asked_in_the_pane(server):
    """A sender asking for a receipt at another address than its own: the reader decides."""
    import sqlalchemy as sa

    from monsisra.domain.clock import utcnow
    from monsisra.domain.model import Category, Role
    from monsisra.services import messages
    from monsisra.store.models import Mailbox, Message, Recipient

    address = f"claire.roux@{server.settings.domain}"

    async def store() -> tuple[int, int]:
        async with server.core.write() as tx:
            box = await tx.session.scalar(sa.select(Mailbox).where(Mailbox.address == address))
            now = utcnow()
            msg = Message(message_id=messages.new_message_id("labo-dore.mssante.fr"),
                          sender_address="contact@labo-dore.mssante.fr", sender_name="Laboratoire du Dore",
                          subject="Résultat avec accusé", body="x", preview="x", category=Category.RESULT,
                          created_at=now, sent_at=now, origin="smtp", receipt_requested=True,
                          headers={"smtp_from": "contact@labo-dore.mssante.fr",
                                   "notify_to": "suivi@labo-dore.mssante.fr"},
                          search_text="resultat")
            tx.session.add(msg)
            await tx.session.flush()
            msg.thread_id = msg.id
            tx.session.add(Recipient(message_id=msg.id, kind="to", address=address, mailbox_id=box.id,
                                     status="delivered"))
            await messages.deliver(tx, msg, [(box.id, Role.IN)])
            return box.id, msg.id

    box, mid = server.call(store)
    with web_login(server, "claire.roux") as web:
        pane = web.get(f"/message/{box}/{mid}", headers={"HX-Request": "true"}).text
        assert "suivi@labo-dore.mssante.fr" in pane and "Envoyer l'accusé" in pane
        token = csrf_of(web.get("/boite").text)
        r = web.post(f"/message/{box}/{mid}/accuse", data={"csrf": token, "send": "0"},
                     headers={"HX-Request": "true"})
        assert r.status_code == 200 and "non envoyé" in r.text
        pane = web.get(f"/message/{box}/{mid}", headers={"HX-Request": "true"}).text
        assert "Envoyer l'accusé" not in pane and "non envoyé" in pane
        assert web.post(f"/message/{box}/{mid}/accuse", data={"send": "1"}).status_code in (400, 403)
