"""Issue 15, item 5: administrators create accounts and service mailboxes, manage members and
delegates and deactivate accounts from their pages and API (the CLI's services), audited;
everyone else gets 403, and what does not exist 404."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import httpx
import pytest

from tests.support import unique

pytestmark = pytest.mark.postgres


@contextlib.contextmanager
def web_login(server, username: str, password: str = "demo") -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=30, follow_redirects=False) as web:
        assert web.post("/connexion", data={"username": username, "password": password}).status_code == 303
        yield web


def csrf(web: httpx.Client, page: str = "/parametres") -> str:
    match = re.search(r'<meta name="csrf-token" content="([0-9a-f]+)">', web.get(page).text)
    assert match
    return match.group(1)


def test_admin_creates_an_account_a_service_mailbox_and_a_member_from_the_pages(server):
    username = unique("adm")
    with web_login(server, "admin") as web:
        token = csrf(web, "/admin/comptes")
        weak = web.post("/admin/comptes/nouveau", data={"csrf": token, "username": username, "first_name": "Rose",
                                                         "last_name": "Vidal", "personal_mailbox": "1",
                                                         "password": "rosevidal"})
        assert weak.status_code == 422 and "trop court" in weak.text
        r = web.post("/admin/comptes/nouveau", data={
            "csrf": token, "username": username, "civility": "Dr", "first_name": "Rose", "last_name": "Vidal",
            "profession": "Médecin", "national_id": "810000004321", "personal_mailbox": "1",
            "password": "vallée-du-lot-brumeuse"})
        assert r.status_code == 303 and r.headers["location"] == f"/admin/comptes/{username}"
        page = web.get(r.headers["location"])
        assert page.status_code == 200 and "Dr Rose VIDAL" in page.text and "rose.vidal" in page.text
        assert username in web.get("/admin/comptes", params={"q": "vidal"}).text
        # A service mailbox, then the new account as its member.
        local = unique("cardio")
        r = web.post("/admin/boites", data={"csrf": token, "local": local, "display_name": "Cardiologie — CH Test",
                                            "kind": "ORG", "organisation": "CH Test", "finess": "630000000",
                                            "is_expert": "1"})
        assert r.status_code == 303, r.text
        box_url = r.headers["location"]
        mailbox_id = int(box_url.rsplit("/", 1)[1])
        dup = web.post("/admin/boites", data={"csrf": token, "local": local, "display_name": "Doublon", "kind": "ORG"})
        assert dup.status_code == 409 and "existe déjà" in dup.text
        assert web.post(f"{box_url}/acces", data={"csrf": token, "username": username,
                                                  "access": "member"}).status_code == 303
        detail = web.get(box_url).text
        assert "Dr Rose VIDAL" in detail and "membre" in detail
        unknown = web.post(f"{box_url}/acces", data={"csrf": token, "username": "personne", "access": "member"})
        assert unknown.status_code == 404 and "introuvable" in unknown.text
    user = httpx.post(f"{server.base_url}/api/v1/auth/token",
                      data={"username": username, "password": "vallée-du-lot-brumeuse"}).json()["access_token"]
    with server.client(user) as rose:
        boxes = {b["id"]: b for b in rose.get("/api/v1/mailboxes").json()}
        assert boxes[mailbox_id]["access"] == "member" and len(boxes) == 2
        # Deactivated from the page: her session ends at once.
        with web_login(server, "admin") as web:
            token = csrf(web, "/admin/comptes")
            assert web.post(f"/admin/comptes/{username}/desactiver", data={"csrf": token}).status_code == 303
            assert "Désactivé" in web.get(f"/admin/comptes/{username}").text
            log = web.get("/admin/journal", params={"compte": "admin", "action": "account."}).text
            assert "Compte désactivé" in log and "Compte créé" in log
            assert "Accès à une boîte donné" in web.get("/admin/journal", params={"action": "mailbox.grant"}).text
            own = web.post("/admin/comptes/admin/desactiver", data={"csrf": token})
            assert own.status_code == 422 and "propre compte" in own.text
        assert rose.get("/api/v1/me").status_code == 401


def test_admin_api_manages_delegates_and_members(server, make_user):
    doctor, _, doctor_box = make_user("Paul", national_id="810000005555")
    helper, _, _ = make_user("Nina")
    admin = server.login("admin")
    r = admin.put(f"/api/v1/admin/mailboxes/{doctor_box}/access/{helper}", json={"access": "member"})
    assert r.status_code == 422 and "déléguez" in r.json()["detail"]
    r = admin.put(f"/api/v1/admin/mailboxes/{doctor_box}/access/{helper}",
                  json={"access": "delegate", "rights": ["read"]})
    assert r.status_code == 201
    people = admin.get(f"/api/v1/admin/mailboxes/{doctor_box}").json()["people"]
    assert {(p["username"], p["access"], tuple(p["rights"])) for p in people} >= {(helper, "delegate", ("read",))}
    detail = admin.get(f"/api/v1/admin/accounts/{helper}").json()
    assert any(a["mailbox"]["id"] == doctor_box and a["rights_label"] == "lecture seule" for a in detail["accesses"])
    assert admin.delete(f"/api/v1/admin/mailboxes/{doctor_box}/access/{helper}").status_code == 204
    assert admin.delete(f"/api/v1/admin/mailboxes/{doctor_box}/access/{doctor}").status_code == 404  # the owner
    created = admin.post("/api/v1/admin/accounts", json={"username": unique("sec"), "first_name": "Léa",
                                                         "last_name": "Bost", "personal_mailbox": False,
                                                         "password": "lavande-et-miel-du-cantal"})
    assert created.status_code == 201 and created.json()["mailbox"] is None
    assert admin.post("/api/v1/admin/accounts", json={"username": "sans.mot", "first_name": "A"}).status_code == 422
    assert admin.post("/api/v1/admin/accounts", json={"username": "x y", "password": "lavande-et-miel-du-cantal"}
                      ).status_code == 422
    assert admin.get("/api/v1/admin/accounts/personne-de-ce-nom").status_code == 404
    assert admin.get("/api/v1/admin/mailboxes/2147483647").status_code == 404
    listing = admin.get("/api/v1/admin/mailboxes", params={"q": "hemostase"}).json()["items"]
    assert [m["kind"] for m in listing] == ["ORG"]


@pytest.mark.parametrize("path", ["/admin/comptes", "/admin/comptes/nouveau", "/admin/boites", "/admin/journal",
                                  "/admin/comptes/alice.martin"])
def test_pages_are_for_administrators_only(server, path):
    with web_login(server, "alice.martin") as web:
        r = web.get(path)
        assert r.status_code == 403 and "Réservé aux administrateurs" in r.text
    with httpx.Client(base_url=server.base_url, follow_redirects=False) as anon:
        assert anon.get(path).status_code == 303  # to the login page


def test_api_is_for_administrators_only(server):
    alice = server.login("alice.martin")
    for method, path, body in (("get", "/api/v1/admin/accounts", None), ("get", "/api/v1/admin/mailboxes", None),
                               ("post", "/api/v1/admin/accounts", {"username": unique("x"), "password": "y" * 20}),
                               ("post", "/api/v1/admin/accounts/claire.roux/deactivate", None),
                               ("delete", "/api/v1/admin/accounts/claire.roux/sessions", None)):
        r = alice.request(method, path, json=body)
        assert r.status_code == 403, (path, r.text)
    assert server.login("claire.roux").get("/api/v1/me").status_code == 200
