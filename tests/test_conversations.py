"""Conversations through the HTTP API and the live socket, on SQLite and PostgreSQL: the
contract, access with accounts other than the demo's, bad input (French problem, nothing
changed), add/leave/read/close and the summary letter in every participant's mailbox."""

from __future__ import annotations

import io

import pytest
from PIL import Image
from websockets.sync.client import connect

from monsisra.domain.model import Access
from monsisra.services import mailboxes
from tests.support import unique
from tests.test_realtime import next_event, token_of, ws_url

DOMAIN = "monsisra.localhost"
VALID_INS = "255081416802538"  # key checked (97 - 2550814168025 % 97 = 38)


@pytest.fixture
def trio(server, make_user):
    """Three fresh professionals (never the demo accounts): logged-in clients and addresses."""
    out = []
    for first, last in (("Anne", unique("Dupont")), ("Bernard", unique("Leroy")), ("Chloé", unique("Morel"))):
        username, address, box = make_user(first, last, civility="Dr", national_id="8" + "1" * 11)
        out.append((server.login(username, "secret-pass"), address, box))
    return out


def _start(client, others, **extra):
    r = client.post("/api/v1/conversations", json={"title": "Plaie du pied", "participants": others,
                                                    "body": "Bonjour", **extra})
    assert r.status_code == 201, r.text
    return r.json()


def _problem(r, status):
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    return r.json()["detail"]


def test_contract_start_post_get_paged(trio):
    (a, a_addr, _), (b, b_addr, _), (c, c_addr, _) = trio
    conv = _start(a, [b_addr, c_addr])
    assert {"id", "title", "state", "participants", "messages"} <= conv.keys()
    assert conv["state"] == "open" and conv["title"] == "Plaie du pied"
    assert {p["address"] for p in conv["participants"]} == {a_addr, b_addr, c_addr}
    assert all({"address", "name"} <= p.keys() for p in conv["participants"])
    first = conv["messages"]["items"][0]
    assert {"id", "body", "author", "created_at", "attachments"} <= first.keys()
    assert first["author"]["address"] == a_addr and first["author"]["name"].startswith("Dr Anne ")
    for i in range(5):
        r = b.post(f"/api/v1/conversations/{conv['id']}/messages", json={"body": f"réponse {i}"})
        assert r.status_code == 201, r.text
    page = c.get(f"/api/v1/conversations/{conv['id']}?limit=4").json()
    bodies = [m["body"] for m in page["messages"]["items"]]
    assert bodies == ["réponse 1", "réponse 2", "réponse 3", "réponse 4"]  # newest at the bottom
    older = c.get(f"/api/v1/conversations/{conv['id']}?limit=4&cursor={page['messages']['next_cursor']}").json()
    assert [m["body"] for m in older["messages"]["items"]] == ["Bonjour", "réponse 0"]
    assert older["messages"]["next_cursor"] is None
    listing = c.get("/api/v1/conversations").json()
    mine = next(i for i in listing["items"] if i["id"] == conv["id"])
    assert mine["unread"] == 6 and listing["unread_total"] >= 6
    assert a.get("/api/v1/conversations").json()["items"][0]["unread"] == 5


def test_live_events_message_typing_read(server, trio):
    (a, _, _), (b, b_addr, _), _ = trio
    conv = _start(a, [b_addr])
    with connect(ws_url(server.base_url), additional_headers={"Authorization": f"Bearer {token_of(b)}"}) as ws:
        next_event(ws, "hello")
        a.post(f"/api/v1/conversations/{conv['id']}/typing")
        typing = next_event(ws, "conversation.typing")
        assert typing["conversation_id"] == conv["id"] and typing["name"].startswith("Dr Anne")
        sent = a.post(f"/api/v1/conversations/{conv['id']}/messages", json={"body": "En direct"}).json()
        event = next_event(ws, "conversation.message")
        assert event["conversation_id"] == conv["id"] and event["message"]["id"] == sent["id"]
        assert event["message"]["body"] == "En direct"
    with connect(ws_url(server.base_url) + f"?access_token={token_of(a)}") as ws:
        next_event(ws, "hello")
        assert b.post(f"/api/v1/conversations/{conv['id']}/read").status_code == 200
        read = next_event(ws, "conversation.read")
        assert read["message_id"] == sent["id"] and read["reader_name"].startswith("Dr Bernard")
    seen = a.get(f"/api/v1/conversations/{conv['id']}").json()
    assert any(n.startswith("Dr Bernard") for n in seen["seen_by"])
    assert b.get("/api/v1/conversations").json()["items"][0]["unread"] == 0


def test_outsiders_get_404_and_hear_nothing(server, trio, make_user):
    (a, _, _), (b, b_addr, _), (c, _, _) = trio
    conv = _start(a, [b_addr])
    for r in (c.get(f"/api/v1/conversations/{conv['id']}"),
              c.post(f"/api/v1/conversations/{conv['id']}/messages", json={"body": "intrus"}),
              c.post(f"/api/v1/conversations/{conv['id']}/read"),
              c.post(f"/api/v1/conversations/{conv['id']}/participants", json={"participants": [b_addr]}),
              c.post(f"/api/v1/conversations/{conv['id']}/close"),
              c.post(f"/api/v1/conversations/{conv['id']}/typing")):
        assert _problem(r, 404) == "conversation introuvable"
    assert conv["id"] not in [i["id"] for i in c.get("/api/v1/conversations").json()["items"]]
    with connect(ws_url(server.base_url) + f"?access_token={token_of(c)}") as ws:
        next_event(ws, "hello")
        a.post(f"/api/v1/conversations/{conv['id']}/messages", json={"body": "secret"})
        # A conversation with c afterwards: its event is the first c hears.
        other = _start(a, [trio[2][1]])
        assert next_event(ws, "conversation.new")["conversation_id"] == other["id"]
    # The attachment of the conversation is not for c either.
    up = a.post("/api/v1/attachments", files={"file": ("note.txt", b"confidentiel", "text/plain")}).json()
    a.post(f"/api/v1/conversations/{conv['id']}/messages", json={"body": "pj", "attachments": [up["id"]]})
    assert b.get(f"/api/v1/attachments/{up['id']}").status_code == 200
    assert c.get(f"/api/v1/attachments/{up['id']}").status_code == 404


def test_bad_input_french_errors_nothing_changed(trio):
    (a, a_addr, _), (b, b_addr, _), (_c, _c_addr, _) = trio
    before = len(a.get("/api/v1/conversations?limit=200").json()["items"])
    cases = [
        ({"title": "x", "participants": ["pas-une-adresse"]}, 422, "participants invalides"),
        ({"title": "x", "participants": [f"inconnu.{unique()}@{DOMAIN}"]}, 422, "participants invalides"),
        ({"title": "x", "participants": ["dr@exemple.fr"]}, 422, "participants invalides"),
        ({"title": "x", "participants": []}, 422, "au moins un autre participant"),
        ({"title": "x", "participants": [a_addr]}, 422, "au moins un autre participant"),
        ({"title": "a\nb", "participants": [b_addr]}, 422, "titre"),
        ({"title": "x", "participants": [b_addr], "patient_id": 2_000_000_000}, 422, "patient inconnu"),
        ({"title": "x", "participants": [b_addr], "patient": {"ins": "255081416802599"}}, 422, "patient"),
    ]
    for body, status, words in cases:
        assert words in _problem(a.post("/api/v1/conversations", json=body), status)
    assert len(a.get("/api/v1/conversations?limit=200").json()["items"]) == before
    conv = _start(a, [b_addr])
    url = f"/api/v1/conversations/{conv['id']}"
    assert "message vide" in _problem(a.post(url + "/messages", json={"body": "   "}), 422)
    assert "introuvable" in _problem(a.post(url + "/messages", json={"body": "x", "attachments": ["nope"]}), 404)
    assert "participent déjà" in _problem(a.post(url + "/participants", json={"participants": [b_addr]}), 422)
    assert _problem(a.get(url + "?cursor=abc"), 422) == "curseur invalide"
    assert len(a.get(url).json()["messages"]["items"]) == 1
    # Leaving: no more writing (403, French), history kept up to then; leaving twice refused.
    assert b.post(url + "/leave").status_code == 204
    assert "quitté" in _problem(b.post(url + "/messages", json={"body": "encore"}), 403)
    assert "déjà quitté" in _problem(b.post(url + "/leave"), 422)
    a.post(url + "/messages", json={"body": "après le départ"})
    assert "après le départ" not in [m["body"] for m in b.get(url).json()["messages"]["items"]]
    # Closing twice: 409 and one summary only.
    assert a.post(url + "/close").status_code == 200
    assert _problem(a.post(url + "/close"), 409) == "cette conversation est déjà close"
    assert "close" in _problem(a.post(url + "/messages", json={"body": "trop tard"}), 409)


def _inbox_letters(client, box_id, title):
    items = client.get(f"/api/v1/mailboxes/{box_id}/messages?view=inbox&category=letter&limit=200").json()["items"]
    return [m for m in items if m["subject"] == f"Synthèse de la conversation « {title} »"]


def test_add_leave_close_summary_in_every_mailbox(server, trio, make_user):
    (a, _a_addr, a_box), (b, b_addr, b_box), (c, c_addr, c_box) = trio
    # A service mailbox with two members (fresh accounts): each sees the conversation.
    svc = server.call(mailboxes.create_service_mailbox, server.core, local=unique("svc"),
                      display_name="Avis Test — CHU")
    m1, _, _ = make_user("Marc", unique("Membre"), civility="Dr", national_id="8" + "2" * 11)
    m2, _, _ = make_user("Nina", unique("Membre"))
    for name in (m1, m2):
        account_id = server.call(_account_id, server.core, name)
        server.call(mailboxes.grant, server.core, svc.id, account_id, Access.MEMBER)
    member1, member2 = server.login(m1, "secret-pass"), server.login(m2, "secret-pass")
    title = f"Suivi {unique()}"
    conv = _start(a, [b_addr], title=title)
    url = f"/api/v1/conversations/{conv['id']}"
    assert member1.get(url).status_code == 404
    r = a.post(url + "/participants", json={"participants": [svc.address, c_addr]})
    assert r.status_code == 200, r.text
    # Added later, they see the whole history.
    assert member2.get(url).json()["messages"]["items"][0]["body"] == "Bonjour"
    assert c.get(url).json()["messages"]["items"][0]["body"] == "Bonjour"
    posted = member1.post(url + "/messages", json={"body": "Le service répond"}).json()
    assert posted["author"]["address"] == svc.address
    assert posted["author"]["name"].endswith("pour Avis Test — CHU") and posted["author"]["name"].startswith("Dr Marc")
    # Read by one member: « lu par » that member, for the whole service.
    a.post(url + "/messages", json={"body": "Merci"})
    member2.post(url + "/read")
    svc_part = next(p for p in a.get(url).json()["participants"] if p["address"] == svc.address)
    assert svc_part["last_read_by"].startswith("Nina")
    assert c.post(url + "/leave").status_code == 204
    closed = b.post(url + "/close").json()
    assert closed["state"] == "closed"
    for client, box in ((a, a_box), (b, b_box), (c, c_box)):
        letters = _inbox_letters(client, box, title)
        assert len(letters) == 1, box
        assert letters[0]["attachments"][0]["content_type"] == "application/pdf"
    letters = _inbox_letters(member1, svc.id, title)
    assert len(letters) == 1
    pdf = member1.get(f"/api/v1/attachments/{letters[0]['attachments'][0]['id']}")
    assert pdf.content.startswith(b"%PDF")
    from pypdf import PdfReader

    text = "".join(p.extract_text() for p in PdfReader(io.BytesIO(pdf.content)).pages)
    assert "Synthèse de la conversation" in text and "Le service répond" in text
    assert a.get(url).json()["state"] == "closed"


async def _account_id(core, username):
    import sqlalchemy as sa

    from monsisra.store.models import Account

    async with core.read() as s:
        return await s.scalar(sa.select(Account.id).where(Account.username == username))


def test_patient_and_photo_exif_removed(server, trio):
    (a, _, _), (b, b_addr, _), _ = trio
    conv = _start(a, [b_addr], patient={"ins": VALID_INS, "oid": "1.2.250.1.213.1.4.8", "family_name": "Durand",
                                        "given_names": "Paul", "birth_date": "1955-08-14", "sex": "M"})
    assert conv["patient"]["ins"] == VALID_INS
    again = _start(a, [b_addr], patient_id=conv["patient"]["id"], title="Même patient")
    assert again["patient_id"] == conv["patient"]["id"]
    img = Image.new("RGB", (3000, 1500), (200, 30, 30))
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"
    exif[0x8825] = {1: "N", 2: (45.0, 46.0, 0.0)}  # GPS
    raw = io.BytesIO()
    img.save(raw, format="JPEG", exif=exif.tobytes())
    up = a.post("/api/v1/attachments", files={"file": ("plaie.jpg", raw.getvalue(), "image/jpeg")}).json()
    posted = a.post(f"/api/v1/conversations/{conv['id']}/messages",
                    json={"body": "photo", "attachments": [up["id"]]}).json()
    att = posted["attachments"][0]
    assert att["id"] != up["id"] and att["thumbnail_id"]
    stored = b.get(f"/api/v1/attachments/{att['id']}").content
    with Image.open(io.BytesIO(stored)) as photo:
        assert max(photo.size) == 2048
        assert not photo.getexif() and "exif" not in photo.info
    with Image.open(io.BytesIO(b.get(f"/api/v1/attachments/{att['thumbnail_id']}").content)) as thumb:
        assert max(thumb.size) <= 320
    bad = a.post("/api/v1/attachments", files={"file": ("faux.jpg", b"\xff\xd8\xff\xe0nope", "image/jpeg")}).json()
    r = a.post(f"/api/v1/conversations/{conv['id']}/messages", json={"body": "x", "attachments": [bad["id"]]})
    assert "photo illisible" in _problem(r, 422)


def test_delegate_author_and_absence_autoreply(server, trio, make_user):
    (a, a_addr, a_box), (b, _b_addr, _), _ = trio
    sec, _, _ = make_user("Sophie", unique("Sec"))
    server.call(mailboxes.grant, server.core, a_box, server.call(_account_id, server.core, sec), Access.DELEGATE)
    secretary = server.login(sec, "secret-pass")
    conv = _start(b, [a_addr])
    posted = secretary.post(f"/api/v1/conversations/{conv['id']}/messages", json={"body": "Le Dr est absent"}).json()
    last = a.get(f"/api/v1/conversations/{conv['id']}").json()["participants"]
    assert posted["author"]["name"].startswith("Sophie ") and ", secrétariat, pour le Dr " in posted["author"]["name"]
    assert last
    # « Apparaître absent » with an automatic answer.
    assert "écrivez le message" in _problem(a.put("/api/v1/me/absence", json={"autoreply": True}), 422)
    r = a.put("/api/v1/me/absence", json={"autoreply": True, "message": "Absente jusqu'à lundi."})
    assert r.status_code == 200 and r.json()["autoreply"] is True
    a.patch("/api/v1/me", json={"appear_absent": True})
    b.post(f"/api/v1/conversations/{conv['id']}/messages", json={"body": "Question"})
    b.post(f"/api/v1/conversations/{conv['id']}/messages", json={"body": "Autre question"})
    items = b.get(f"/api/v1/conversations/{conv['id']}").json()["messages"]["items"]
    autos = [m for m in items if m["kind"] == "auto"]
    assert len(autos) == 1 and autos[0]["body"] == "Absente jusqu'à lundi."
    a.patch("/api/v1/me", json={"appear_absent": False})
