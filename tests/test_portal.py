"""Issue 15 item 4, « Mon portail »: MonSisra as the OpenID provider of the region's services,
tested with a real relying party in another process (the npm package openid-client: code flow
with PKCE, state, nonce, ID token checked against our JWKS, user info, back-channel logout),
over HTTP and through Chromium (the tile opens the service already logged in), on both engines:
discovery, JWKS with key rotation, registered clients (CLI and admin page), single logout, and
the requests a provider must refuse."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import re
import secrets
from collections.abc import Iterator
from urllib.parse import urljoin

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import KeySet
from playwright.sync_api import expect

from monsisra.services import portal
from tests.browser_support import browser_fixture, open_page  # noqa: F401 (fixture)
from tests.identity_support import NodeProcess, cli, node_modules, serve_env
from tests.support import free_port, fresh_database, unique


@pytest.fixture(scope="module")
def rp(server, tmp_path_factory, backend):
    """A registered service and its relying party (openid-client) on 127.0.0.1."""
    modules = node_modules(tmp_path_factory.getbasetemp() / "npm-cache")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    client, secret = server.call(portal.add_client, server.core, name=f"Dossier de coordination {backend}",
                                 redirect_uris=[f"{base}/cb"], login_url=f"{base}/login",
                                 backchannel_logout_uri=f"{base}/backchannel", client_id=unique("dcc-"),
                                 description="Parcours et plans de soins partagés")
    process = NodeProcess(modules, "portal_rp.mjs", {"port": port, "issuer": server.base_url, "name": client["name"],
                                                     "client_id": client["client_id"], "client_secret": secret},
                          tmp_path_factory.mktemp(f"rp-{backend}") / "rp.log")
    try:
        yield {"base": base, "client": client, "secret": secret, "process": process}
    finally:
        process.stop()


@contextlib.contextmanager
def browser_login(server, username: str = "alice.martin") -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30, follow_redirects=False) as web:
        r = web.post(server.base_url + "/connexion", data={"username": username, "password": "demo"})
        assert r.status_code == 303
        yield web


def follow(web: httpx.Client, url: str, until: str, limit: int = 10) -> httpx.Response:
    """Follow redirects (and nothing else) until the response comes from ``until``."""
    for _ in range(limit):
        r = web.get(url)
        if url.startswith(until) or r.status_code not in (302, 303):
            return r
        url = urljoin(url, r.headers["location"])
    raise AssertionError("too many redirects")


def event(rp, wanted: str) -> dict:
    for _ in range(20):
        line = rp["process"].read_line(timeout=30)
        if line.get("event") == wanted:
            return line
        assert line.get("event") != "error", line
    raise AssertionError(f"no {wanted} event")


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def test_discovery_and_jwks(server):
    meta = httpx.get(server.base_url + "/.well-known/openid-configuration").json()
    assert meta["issuer"] == server.base_url
    assert meta["code_challenge_methods_supported"] == ["S256"] and meta["backchannel_logout_supported"] is True
    keys = httpx.get(meta["jwks_uri"]).json()["keys"]
    assert keys and all(k["kty"] == "RSA" and k["kid"] and "d" not in k for k in keys)


def test_a_service_logs_a_monsisra_user_in_and_single_logout_ends_it(server, rp):
    with browser_login(server) as web:
        page = follow(web, rp["base"] + "/login?iss=" + server.base_url, rp["base"] + "/cb")
        assert page.status_code == 303, page.text[:300]
        login = event(rp, "login")
        claims, info = login["claims"], login["userinfo"]
        assert claims["iss"] == server.base_url and claims["aud"] in (rp["client"]["client_id"],
                                                                      [rp["client"]["client_id"]])
        assert claims["national_id"] and claims["SubjectNameID"] == claims["national_id"]
        assert claims["given_name"] == "Alice" and claims["family_name"] == "Martin"
        assert claims["profession"] and claims["name"] == "Dr Alice MARTIN" and claims["sid"]
        assert info["sub"] == claims["sub"] and info["national_id"] == claims["national_id"]
        assert "Connecté : Dr Alice MARTIN" in web.get(rp["base"] + "/").text
        # MonSisra logout: the service hears it on its back channel and its session ends.
        assert web.post(server.base_url + "/deconnexion").status_code == 303
        logout = event(rp, "backchannel_logout")
        assert logout["sid"] == claims["sid"] and logout["sub"] == claims["sub"]
        assert "Non connecté" in web.get(rp["base"] + "/").text


def test_without_a_session_the_browser_logs_in_first_then_comes_back(server, rp):
    with httpx.Client(timeout=30, follow_redirects=False) as web:
        r = follow(web, rp["base"] + "/login", server.base_url + "/connexion")
        assert r.status_code == 200 and "Mot de passe" in r.text
        suite = re.search(r'name="suite" value="([^"]+)"', r.text).group(1).replace("&amp;", "&")
        assert suite.startswith("/portail/oidc/authorize?")
        r = web.post(server.base_url + "/connexion", data={"username": "bruno.petit", "password": "demo",
                                                           "suite": suite})
        assert r.status_code == 303 and r.headers["location"] == suite
        back = follow(web, server.base_url + suite, rp["base"] + "/cb")
        assert back.status_code == 303
        assert event(rp, "login")["claims"]["family_name"] == "Petit"
        # prompt=none without a session: an error for the service, not a login page.
    with httpx.Client(timeout=30, follow_redirects=False) as anon:
        _, challenge = pkce()
        r = anon.get(server.base_url + "/portail/oidc/authorize", params={
            "response_type": "code", "client_id": rp["client"]["client_id"], "redirect_uri": rp["base"] + "/cb",
            "scope": "openid", "state": "s1", "prompt": "none", "code_challenge": challenge,
            "code_challenge_method": "S256"})
        assert r.status_code == 303 and "error=login_required" in r.headers["location"]
        assert "state=s1" in r.headers["location"] and "iss=" in r.headers["location"]


def _authorize(web: httpx.Client, server, rp, **extra) -> httpx.Response:
    params = {"response_type": "code", "client_id": rp["client"]["client_id"], "redirect_uri": rp["base"] + "/cb",
              "scope": "openid profile", "state": "etat", "nonce": "n-0"} | extra
    return web.get(server.base_url + "/portail/oidc/authorize", params=params)


def _token(server, rp, code: str, verifier: str, secret: str | None = None) -> httpx.Response:
    return httpx.post(server.base_url + "/portail/oidc/token",
                      data={"grant_type": "authorization_code", "code": code, "redirect_uri": rp["base"] + "/cb",
                            "code_verifier": verifier},
                      auth=(rp["client"]["client_id"], secret or rp["secret"]))


def test_the_provider_refuses_what_it_must(server, rp):
    verifier, challenge = pkce()
    with browser_login(server, "claire.roux") as web:
        # Unknown service, unregistered return address: a page here, never a redirect.
        r = _authorize(web, server, rp, client_id="inconnu", code_challenge=challenge, code_challenge_method="S256")
        assert r.status_code == 400 and "service inconnu" in r.text.lower()
        r = _authorize(web, server, rp, redirect_uri="https://evil.example/cb", code_challenge=challenge,
                       code_challenge_method="S256")
        assert r.status_code == 400 and "adresse de retour" in r.text.lower()
        # No PKCE: an error sent back to the service.
        r = _authorize(web, server, rp)
        assert r.status_code == 303 and "error=invalid_request" in r.headers["location"]
        r = _authorize(web, server, rp, code_challenge=challenge, code_challenge_method="plain")
        assert r.status_code == 303 and "error=invalid_request" in r.headers["location"]
        # A good request: a code, once.
        r = _authorize(web, server, rp, code_challenge=challenge, code_challenge_method="S256")
        code = dict(httpx.URL(r.headers["location"]).params)["code"]
        assert _token(server, rp, code, verifier, secret="pas-le-secret").json()["error"] == "invalid_client"
        wrong = _token(server, rp, code, pkce()[0])
        assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"  # and the code is spent
        r = _authorize(web, server, rp, code_challenge=challenge, code_challenge_method="S256")
        code = dict(httpx.URL(r.headers["location"]).params)["code"]
        ok = _token(server, rp, code, verifier)
        assert ok.status_code == 200 and ok.json()["token_type"] == "Bearer"
        assert ok.headers["cache-control"] == "no-store"
        access = ok.json()["access_token"]
        info = httpx.get(server.base_url + "/portail/oidc/userinfo", headers={"Authorization": f"Bearer {access}"})
        assert info.status_code == 200 and info.json()["family_name"] == "Roux"
        # The portal's access token opens the user info and nothing else.
        assert httpx.get(server.base_url + "/api/v1/mailboxes", headers={"Authorization": f"Bearer {access}"}
                         ).status_code == 401
        # The same code again: refused, and the tokens it gave are revoked.
        again = _token(server, rp, code, verifier)
        assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
        assert httpx.get(server.base_url + "/portail/oidc/userinfo",
                         headers={"Authorization": f"Bearer {access}"}).status_code == 401


def test_keys_rotate_and_old_ones_stay_published(server, rp):
    verifier, challenge = pkce()

    def id_token(web) -> str:
        r = _authorize(web, server, rp, code_challenge=challenge, code_challenge_method="S256")
        code = dict(httpx.URL(r.headers["location"]).params)["code"]
        return _token(server, rp, code, verifier).json()["id_token"]

    with browser_login(server, "sophie.blanc") as web:
        before = id_token(web)
        old_kid = jwt.decode(before, KeySet.import_key_set(httpx.get(server.base_url + "/portail/oidc/jwks").json())
                             ).header["kid"]
        new_kid = server.call(portal.rotate_keys, server.core)
        keys = httpx.get(server.base_url + "/portail/oidc/jwks").json()
        assert {old_kid, new_kid} <= {k["kid"] for k in keys["keys"]}
        after = id_token(web)
        keyset = KeySet.import_key_set(keys)
        assert jwt.decode(after, keyset).header["kid"] == new_kid
        assert jwt.decode(before, keyset).claims["family_name"] == "Blanc"  # still verifiable


def test_admin_page_registers_a_service_and_others_cannot(server):
    with browser_login(server, "admin") as web:
        page = web.get(server.base_url + "/admin/portail")
        assert page.status_code == 200
        csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text).group(1)
        name = unique("Service ")
        r = web.post(server.base_url + "/admin/portail/services", data={
            "csrf": csrf, "name": name, "redirect_uris": "https://service.example/cb",
            "login_url": "https://service.example/login"})
        assert r.status_code == 200 and re.search(r'id="client-secret">[^<]{20,}<', r.text)
        bad = web.post(server.base_url + "/admin/portail/services", data={
            "csrf": csrf, "name": "X", "redirect_uris": "http://service.example/cb", "login_url": "https://s/l"})
        assert bad.status_code == 422 and "https://" in bad.text
    with browser_login(server, "alice.martin") as web:
        assert web.get(server.base_url + "/admin/portail").status_code == 403


def test_cli_add_client(backend, tmp_path):
    with fresh_database(backend, tmp_path) as url:
        env = serve_env(url, tmp_path / "data")
        out = cli(env, "portal", "add-client", "Messagerie régionale", "--redirect-uri", "https://mr.example/cb",
                  "--login-url", "https://mr.example/login", "--client-id", "messagerie-regionale")
        assert "client_id=messagerie-regionale" in out and re.search(r"client_secret=\S{30,}", out)
        assert "messagerie-regionale\tMessagerie régionale\tactif" in cli(env, "portal", "list")
        cli(env, "portal", "rotate-keys")


@pytest.mark.browser
def test_the_portal_tile_opens_the_service_already_logged_in(server, rp, browser):
    page = open_page(browser, server, "alice.martin")
    page.click("text=Mon portail")
    tile = page.locator(f'a[data-client="{rp["client"]["client_id"]}"]')
    expect(tile).to_contain_text(rp["client"]["name"])
    tile.click()
    expect(page.locator("#user")).to_have_text("Connecté : Dr Alice MARTIN")
    assert page.url.startswith(rp["base"])
    assert event(rp, "login")["claims"]["given_name"] == "Alice"
    page.context.close()
