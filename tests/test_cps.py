"""Issue 15 item 2, the CPS card: a real ``monsisra serve`` asks for a client certificate on its
HTTPS listener, verified against the configured trust anchors (a test CA standing for
IGC-Santé); the certificate's national id names the account. Also behind a reverse proxy that
forwards the verified certificate, believed from the configured proxy addresses only. A
certificate from another CA, an expired one, one naming no account: refused and audited, on
both engines."""

from __future__ import annotations

import ssl
from urllib.parse import quote

import httpx
import pytest

from tests.identity_support import ServeProcess, audit_rows, card, cli, new_ca, serve_env, server_cert, wait_for_audit
from tests.support import fresh_database

NID = "810000000501"
UNKNOWN = "810000000599"


@pytest.fixture(scope="module")
def card_site(backend, tmp_path_factory):
    """``monsisra serve`` with the test CA as trust anchor, 127.0.0.1 as a trusted proxy, an
    account holding NID; the cards: valid, expired, from another CA, naming nobody."""
    tmp = tmp_path_factory.mktemp(f"cps-{backend}")
    pki = tmp / "pki"
    ca = new_ca(pki, "IGC-Test")
    other = new_ca(pki, "Autre-AC")
    cert, key = server_cert(ca, pki)
    with fresh_database(backend, tmp) as url:
        env = serve_env(url, tmp / "data", MONSISRA_TLS_TRUST=str(ca[0]), MONSISRA_TLS_CERT=str(cert),
                        MONSISRA_TLS_KEY=str(key), MONSISRA_TRUSTED_PROXIES="127.0.0.1")
        cli(env, "account", "create", "jeanne.carte", "--first-name", "Jeanne", "--last-name", "Carte",
            "--civility", "Dr", "--profession", "Médecin", "--rpps", NID, "--password", "un-mot-de-passe")
        proc = ServeProcess(env, tmp / "serve.log")
        try:
            yield {
                "serve": proc, "url": url, "ca": ca,
                "good": card(ca, pki / "cards", NID, "Jeanne", "Carte"),
                "expired": card(ca, pki / "cards", NID, "Jeanne", "Carte", days=(-30, -1)),
                "foreign": card(other, pki / "foreign", NID, "Jeanne", "Carte"),
                "nobody": card(ca, pki / "cards", UNKNOWN, "Paul", "Inconnu"),
            }
        finally:
            proc.stop()


def https_client(site: dict, cert: tuple | None) -> httpx.Client:
    ctx = ssl.create_default_context(cafile=str(site["ca"][0]))
    if cert:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    return httpx.Client(base_url=site["serve"].https, verify=ctx, timeout=30, follow_redirects=False)


def test_a_card_logs_in_over_https(card_site):
    with https_client(card_site, card_site["good"]) as web:
        page = web.get("/connexion")
        assert "Se connecter avec ma carte CPS" in page.text
        r = web.get("/connexion/carte", params={"suite": "/parametres"})
        assert r.status_code == 303 and r.headers["location"] == "/parametres", r.text
        assert "secure" in r.headers["set-cookie"].lower()
        assert web.get("/parametres").status_code == 200
        me = web.get("/api/v1/me")
        assert me.status_code == 200 and me.json()["username"] == "jeanne.carte"
        # The same card gives practice software a bearer token.
        token = web.post("/api/v1/auth/certificate")
        assert token.status_code == 200, token.text
    with httpx.Client(base_url=card_site["serve"].http, timeout=30,
                      headers={"Authorization": f"Bearer {token.json()['access_token']}"}) as api:
        assert api.get("/api/v1/me").json()["national_id"] == NID
    logins = [r for r in audit_rows(card_site["url"], "login.success") if r.get("methods") == "cps"]
    assert len(logins) >= 2 and {r["kind"] for r in logins} == {"web", "api"}


def test_no_card_a_foreign_ca_an_expired_card_or_nobodys_card_are_refused_and_audited(card_site):
    url = card_site["url"]
    # No certificate: the TLS connection is fine (optional at that level), the login is not.
    with https_client(card_site, None) as web:
        r = web.get("/connexion/carte")
        assert r.status_code == 403 and "aucune carte CPS" in r.text and "monsisra_session" not in web.cookies
    # Another CA, an expired card: the handshake itself refuses them, and the refusal is audited.
    for name, words in (("foreign", ("unknown ca", "unable to get local issuer")), ("expired", ("expired",))):
        with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)), \
                https_client(card_site, card_site[name]) as web:
            web.get("/connexion/carte")
        wait_for_audit(url, "login.cps.failure",
                       lambda row, w=words: row.get("via") == "tls" and any(x in row.get("error", "") for x in w))
    # A valid card naming no account: refused, audited with the id, no session.
    with https_client(card_site, card_site["nobody"]) as web:
        r = web.get("/connexion/carte")
        assert r.status_code == 403 and "aucun compte" in r.text and "monsisra_session" not in web.cookies
        assert web.post("/api/v1/auth/certificate").status_code == 401
    row = wait_for_audit(url, "login.cps.failure", lambda row: row.get("national_id") == UNKNOWN)
    assert row["reason"] == "inconnu" and row["via"] == "tls" and "Inconnu".upper() in row["subject"]


def _forwarded(cert: tuple) -> dict[str, str]:
    return {"X-SSL-Client-Cert": quote(cert[0].read_text())}


def test_behind_a_trusted_proxy_the_forwarded_card_is_verified_again(card_site, server):
    base = card_site["serve"].http
    with httpx.Client(base_url=base, timeout=30, follow_redirects=False) as web:
        r = web.get("/connexion/carte", headers=_forwarded(card_site["good"]))
        assert r.status_code == 303 and r.headers["location"] == "/boite"
        assert web.get("/api/v1/me").json()["username"] == "jeanne.carte"
    for name, reason in (("foreign", "autorité de confiance"), ("expired", "expiré")):
        with httpx.Client(base_url=base, timeout=30, follow_redirects=False) as web:
            r = web.get("/connexion/carte", headers=_forwarded(card_site[name]))
            assert r.status_code == 403 and reason in r.text and "monsisra_session" not in web.cookies
        wait_for_audit(card_site["url"], "login.cps.failure",
                       lambda row, why=reason: row.get("via") == "proxy" and why in row["reason"])
    garbage = httpx.get(f"{base}/connexion/carte", headers={"X-SSL-Client-Cert": "pas%20un%20certificat"})
    assert garbage.status_code == 403 and "illisible" in garbage.text
    # A server that trusts no proxy ignores the header: anyone could send it.
    with httpx.Client(base_url=server.base_url, timeout=30, follow_redirects=False) as web:
        r = web.get("/connexion/carte", headers=_forwarded(card_site["good"]))
        assert r.status_code == 403 and "aucune carte CPS" in r.text and "monsisra_session" not in web.cookies
