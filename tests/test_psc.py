"""Issue 15 item 3, Pro Santé Connect, against a real OpenID provider started on 127.0.0.1 (the
npm package oidc-provider, configured with the claims of DESIGN §5), driven end to end over HTTP
like a browser (redirects followed, the provider's login form posted), on both engines: a first
login creates the account from the national directory (with its PER mailbox) or links the one
holding the national id; a wrong state, nonce, issuer, audience or acr, an expired or forged ID
token, a replayed return or one delivered to another browser: each refused, audited, no session."""

from __future__ import annotations

import re
from urllib.parse import urljoin

import httpx
import pytest
import sqlalchemy as sa
from joserfc.jwk import RSAKey

from monsisra.services import accounts
from monsisra.store.directory import DirPerson
from monsisra.store.models import Account, AuditEvent, Mailbox
from tests.identity_support import NodeProcess, node_modules
from tests.support import free_port, make_settings, start_server, unique

CLIENT_ID = "monsisra-test"
CLIENT_SECRET = "secret-du-client-psc-de-test"
PASSWORD = "123456"
DIRECTORY_ID = "810000000777"  # in the directory, no account yet
CLAIMS_ONLY_ID = "810000000778"  # neither: the provider's claims make the account


def exercices(code: str, label: str) -> dict:
    return {"exercices": [{"codeProfession": code, "libelleProfession": label, "codeSavoirFaire": "SM54",
                           "activities": [{"raisonSocialeSite": "Cabinet de test", "numeroFinessSite": ""}]}]}


@pytest.fixture(scope="module")
def psc(server, database_url, tmp_path_factory, backend):
    tmp = tmp_path_factory.mktemp(f"psc-{backend}")
    modules = node_modules(tmp_path_factory.getbasetemp() / "npm-cache")
    linked_nid = "8100000" + unique("")[-5:].translate(str.maketrans("abcdef", "123456"))
    linked_user = unique("lina")
    server.call(accounts.create_account, server.core, accounts.NewAccount(
        username=linked_user, password="secret-pass", first_name="Lina", last_name="Liee", national_id=linked_nid))

    async def directory_entry() -> None:
        async with server.core.write() as tx:
            if not await tx.session.scalar(sa.select(DirPerson.id).where(DirPerson.national_id == DIRECTORY_ID)):
                tx.session.add(DirPerson(national_id=DIRECTORY_ID, id_type="8", pp_id=DIRECTORY_ID[1:],
                                         title="Docteur", last_name="DURAND", first_name="Hélène",
                                         profession_code="10", profession="Médecin", row_hash="x" * 32))

    server.call(directory_entry)
    key = RSAKey.generate_key(2048, parameters={"kid": f"psc-{backend}", "use": "sig", "alg": "RS256"})
    port = free_port()
    issuer = f"http://127.0.0.1:{port}"
    settings = make_settings(database_url, tmp / "data", smtp_enabled=False, run_workers=False,
                             psc_issuer=issuer, psc_client_id=CLIENT_ID, psc_client_secret=CLIENT_SECRET,
                             totp_required=True)
    site = start_server(settings)
    provider = NodeProcess(modules, "psc_provider.mjs", {
        "port": port, "issuer": issuer, "password": PASSWORD, "jwks": {"keys": [key.as_dict(private=True)]},
        "clients": [{"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
                     "redirect_uris": [f"{site.base_url}/connexion/psc/retour"]}],
        "accounts": {
            "lina": {"SubjectNameID": linked_nid, "given_name": "Lina", "family_name": "LIEE",
                     "SubjectRefPro": exercices("10", "Médecin")},
            "helene": {"SubjectNameID": DIRECTORY_ID, "given_name": "HELENE", "family_name": "DURAND",
                       "SubjectRefPro": exercices("10", "Médecin")},
            "marc": {"SubjectNameID": CLAIMS_ONLY_ID, "given_name": "Marc", "family_name": "Sansfiche",
                     "SubjectRefPro": exercices("60", "Infirmier")},
        },
    }, tmp / "provider.log")
    try:
        yield {"site": site, "issuer": issuer, "linked": linked_user, "linked_nid": linked_nid}
    finally:
        provider.stop()
        site.stop()


def provider_login(web: httpx.Client, site_base: str, login: str, start: str = "/connexion/psc") -> str:
    """From « Se connecter avec Pro Santé Connect » to the provider's answer: the URL of our
    return page it sends the browser to (not yet followed)."""
    r = web.get(site_base + start)
    assert r.status_code == 303, r.text
    location = r.headers["location"]
    for _ in range(10):
        if location.startswith(site_base + "/connexion/psc/retour"):
            return location
        r = web.get(location)
        if r.status_code == 200 and 'action="/interaction/' in r.text:
            action = re.search(r'action="([^"]+)"', r.text).group(1)
            r = web.post(urljoin(location, action), data={"login": login, "password": PASSWORD})
        assert r.status_code in (302, 303), r.text[:500]
        location = urljoin(location, r.headers["location"])
    raise AssertionError("the provider never sent the browser back")


def failures(site, reason: str) -> int:
    async def count() -> int:
        async with site.core.read() as s:
            rows = (await s.execute(sa.select(AuditEvent.detail).where(AuditEvent.action == "login.psc.failure"))
                    ).scalars()
            return sum(1 for d in rows if d and reason in d.get("reason", ""))

    return site.call(count)


def test_the_button_shows_only_when_configured(psc, server):
    assert "Se connecter avec Pro Santé Connect" in httpx.get(psc["site"].base_url + "/connexion").text
    assert "Pro Santé Connect" not in httpx.get(server.base_url + "/connexion").text


def test_a_first_login_creates_the_account_from_the_directory_then_links_it(psc):
    site = psc["site"]
    with httpx.Client(timeout=30, follow_redirects=False) as web:
        back = provider_login(web, site.base_url, "helene")
        query = dict(httpx.URL(back).params)
        assert query["state"] and query["code"] and query["iss"] == psc["issuer"]
        r = web.get(back)
        assert r.status_code == 303 and r.headers["location"] == "/boite", re.findall(r'role="alert">([^<]*)', r.text)
        # Pro Santé Connect is a strong login: no second factor asked, messages open at once.
        me = web.get(site.base_url + "/api/v1/me").json()
        assert me["national_id"] == DIRECTORY_ID and me["first_name"] == "Hélène" and me["last_name"] == "DURAND"
        assert me["profession"] == "Médecin" and me["civility"] == "Dr"
        assert [m["address"] for m in me["mailboxes"]] == [f"helene.durand@{site.settings.domain}"]
        assert web.get(site.base_url + "/boite").status_code == 200
    # The second time, the same account is found (no second one).
    with httpx.Client(timeout=30, follow_redirects=False) as web:
        assert web.get(provider_login(web, site.base_url, "helene")).status_code == 303
        assert web.get(site.base_url + "/api/v1/me").json()["username"] == me["username"]

    async def accounts_with_id() -> int:
        async with site.core.read() as s:
            return await s.scalar(sa.select(sa.func.count()).select_from(Account)
                                  .where(Account.national_id == DIRECTORY_ID))

    assert site.call(accounts_with_id) == 1


def test_an_existing_account_is_linked_and_one_outside_the_directory_comes_from_the_claims(psc):
    site = psc["site"]
    with httpx.Client(timeout=30, follow_redirects=False) as web:
        assert web.get(provider_login(web, site.base_url, "lina")).status_code == 303
        assert web.get(site.base_url + "/api/v1/me").json()["username"] == psc["linked"]
    with httpx.Client(timeout=30, follow_redirects=False) as web:
        assert web.get(provider_login(web, site.base_url, "marc")).status_code == 303
        me = web.get(site.base_url + "/api/v1/me").json()
        assert me["national_id"] == CLAIMS_ONLY_ID and me["profession"] == "Infirmier"

    async def mailbox_of(username: str) -> str | None:
        async with site.core.read() as s:
            return await s.scalar(sa.select(Mailbox.address).join(Account, Account.id == Mailbox.owner_account_id)
                                  .where(Account.username == username))

    assert site.call(mailbox_of, me["username"]) == f"marc.sansfiche@{site.settings.domain}"


@pytest.mark.parametrize(("mode", "reason"), [
    ("nonce", "nonce"), ("iss", "émetteur"), ("aud", "autre service"), ("acr", "niveau"),
    ("expired", "expiré"), ("forged", "signature"),
])
def test_a_tampered_id_token_is_refused_audited_and_opens_no_session(psc, mode, reason):
    site = psc["site"]
    before = failures(site, reason)
    issuer = psc["issuer"]
    with httpx.Client(timeout=30, follow_redirects=False) as web:
        back = provider_login(web, site.base_url, "lina")
        assert httpx.post(f"{issuer}/__test/tamper", content=f'{{"mode": "{mode}"}}').status_code == 204
        r = web.get(back)
        assert r.status_code == 403 and "refusée" in r.text and reason in r.text, r.text[:400]
        assert "monsisra_session" not in web.cookies
        assert web.get(site.base_url + "/boite").status_code == 303  # to the login page
    assert failures(site, reason) == before + 1


def test_a_wrong_replayed_or_foreign_state_is_refused(psc):
    site = psc["site"]
    with httpx.Client(timeout=30, follow_redirects=False) as web:
        back = provider_login(web, site.base_url, "lina")
        wrong = re.sub(r"state=[^&]+", "state=un-etat-invente", back)
        r = web.get(wrong)
        assert r.status_code == 403 and "état inconnu" in r.text and "monsisra_session" not in web.cookies
    # The return delivered to another browser (an attacker's link): refused, and spent.
    with httpx.Client(timeout=30, follow_redirects=False) as web, \
            httpx.Client(timeout=30, follow_redirects=False) as other:
        back = provider_login(web, site.base_url, "lina")
        r = other.get(back)
        assert r.status_code == 403 and "autre navigateur" in r.text and "monsisra_session" not in other.cookies
        r = web.get(back)
        assert r.status_code == 403 and "déjà utilisé" in r.text
    # A return used once cannot be used again.
    with httpx.Client(timeout=30, follow_redirects=False) as web:
        back = provider_login(web, site.base_url, "lina")
        assert web.get(back).status_code == 303
        web.cookies.clear()
        again = web.get(back)
        assert again.status_code == 403 and "monsisra_session" not in again.headers.get("set-cookie", "")
    assert failures(site, "état inconnu") >= 1 and failures(site, "autre navigateur") >= 1
    # The provider's own refusal (the user cancelled) is refused politely, and audited.
    with httpx.Client(timeout=30, follow_redirects=False) as web:
        r = web.get(site.base_url + "/connexion/psc")
        state = dict(httpx.URL(r.headers["location"]).params)["state"]
        cancelled = web.get(f"{site.base_url}/connexion/psc/retour?error=access_denied&state={state}")
        assert cancelled.status_code == 403 and "refus du fournisseur" in cancelled.text
