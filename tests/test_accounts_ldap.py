"""Issue 15, item 5: LDAP login against Debian's slapd started here on 127.0.0.1, with its own
configuration and an LDIF of test users; password login stays for local accounts."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from monsisra.services import demo as demo_service
from tests.support import free_port, make_settings, start_server

pytestmark = pytest.mark.postgres
SLAPD = Path("/usr/sbin/slapd")
SUFFIX = "dc=chu-test,dc=fr"
USERS = f"""dn: {SUFFIX}
objectClass: dcObject
objectClass: organization
o: CHU Test
dc: chu-test

dn: ou=people,{SUFFIX}
objectClass: organizationalUnit
ou: people

dn: uid=mduval,ou=people,{SUFFIX}
objectClass: inetOrgPerson
uid: mduval
cn: Marc Duval
givenName: Marc
sn: Duval
mail: marc.duval@chu-test.fr
employeeNumber: 810000006666
title: Médecin
userPassword: annuaire-du-chu

dn: uid=alice.martin,ou=people,{SUFFIX}
objectClass: inetOrgPerson
uid: alice.martin
cn: Alice Imposteur
givenName: Alice
sn: Imposteur
userPassword: pas-la-demo

dn: uid=double,ou=people,{SUFFIX}
objectClass: inetOrgPerson
uid: double
cn: Double Un
sn: Un
userPassword: x

dn: uid=autre,ou=people,{SUFFIX}
objectClass: inetOrgPerson
uid: autre
cn: Double Deux
sn: Deux
mail: double@chu-test.fr
userPassword: x
"""


@pytest.fixture(scope="module")
def slapd(tmp_path_factory):
    if not SLAPD.exists() or not shutil.which("slapadd"):
        pytest.skip("Debian slapd is not installed (.ci/run installs slapd and ldap-utils)")
    root = tmp_path_factory.mktemp("slapd")
    (root / "data").mkdir()
    conf = root / "slapd.conf"
    conf.write_text("\n".join([
        *(f"include /etc/ldap/schema/{name}.schema" for name in ("core", "cosine", "nis", "inetorgperson")),
        f"pidfile {root}/slapd.pid", "modulepath /usr/lib/ldap", "moduleload back_mdb",
        "database mdb", f'suffix "{SUFFIX}"', f'rootdn "cn=admin,{SUFFIX}"', "rootpw service-secret",
        f"directory {root}/data", "maxsize 10485760",
        "access to attrs=userPassword by anonymous auth by * none", "access to * by * read", ""]))
    (root / "users.ldif").write_text(USERS)
    subprocess.run(["slapadd", "-f", str(conf), "-l", str(root / "users.ldif")], check=True, capture_output=True)
    port = free_port()
    proc = subprocess.Popen([str(SLAPD), "-f", str(conf), "-h", f"ldap://127.0.0.1:{port}/", "-d", "0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("slapd did not start: " + proc.stderr.read().decode(errors="replace")) from None
            time.sleep(0.1)
    yield port
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def srv(database_url, tmp_path_factory, backend, slapd):
    settings = make_settings(database_url, tmp_path_factory.mktemp(f"ldap-{backend}"), smtp_enabled=False,
                             run_workers=False, ldap_url=f"ldap://127.0.0.1:{slapd}", ldap_base_dn=SUFFIX,
                             ldap_bind_dn=f"cn=admin,{SUFFIX}", ldap_bind_password="service-secret",
                             ldap_attr_national_id="employeeNumber", ldap_attr_profession="title",
                             ldap_create_accounts=True, ldap_timeout=5)
    running = start_server(settings)
    running.call(demo_service.load, running.core)
    yield running
    running.stop()


def login(srv, username: str, password: str) -> httpx.Response:
    return httpx.post(f"{srv.base_url}/api/v1/auth/token", data={"username": username, "password": password},
                      timeout=30)


def test_a_directory_user_logs_in_and_gets_an_account_with_its_mailbox(srv):
    assert login(srv, "mduval", "mauvais").status_code == 401
    r = login(srv, "MDuval", "annuaire-du-chu")
    assert r.status_code == 200, r.text
    with srv.client(r.json()["access_token"]) as me:
        who = me.get("/api/v1/me").json()
        assert (who["username"], who["first_name"], who["last_name"], who["national_id"], who["profession"]) == \
            ("mduval", "Marc", "Duval", "810000006666", "Médecin")
        assert [b["address"] for b in who["mailboxes"]] == [f"marc.duval@{srv.settings.domain}"]
        # Its password is the directory's: no change here, no reset link.
        r = me.post("/api/v1/me/password", json={"current": "annuaire-du-chu", "new": "cheval-agrafe-batterie"})
        assert r.status_code == 422 and "annuaire" in r.json()["detail"]
    # A second login finds the same account.
    assert login(srv, "mduval", "annuaire-du-chu").status_code == 200
    admin = srv.login("admin")
    detail = admin.get("/api/v1/admin/accounts/mduval").json()
    assert detail["auth_source"] == "ldap"
    found = admin.get("/api/v1/admin/audit", params={"account": "mduval", "action": "login.success"}).json()
    assert found["items"] and found["items"][0]["detail"]["source"] == "ldap"


def test_local_accounts_keep_their_password_and_are_not_taken_over(srv):
    # The directory has an alice.martin with another password: the local account decides.
    assert login(srv, "alice.martin", "pas-la-demo").status_code == 401
    assert login(srv, "alice.martin", "demo").status_code == 200


@pytest.mark.parametrize(("username", "password"), [
    ("personne", "x"),  # unknown to both
    ("mduval", ""),  # an empty password would be an anonymous bind
    ("*", "annuaire-du-chu"),  # a filter injection finds no single entry
    ("mduval)(uid=*", "annuaire-du-chu"),
])
def test_bad_directory_logins_are_refused(srv, username, password):
    r = login(srv, username, password)
    assert r.status_code in (401, 422), r.text


def test_an_unreachable_directory_answers_503(database_url, tmp_path_factory, backend):
    settings = make_settings(database_url, tmp_path_factory.mktemp(f"ldap-down-{backend}"), smtp_enabled=False,
                             run_workers=False, ldap_url=f"ldap://127.0.0.1:{free_port()}", ldap_base_dn=SUFFIX,
                             ldap_timeout=2)
    running = start_server(settings)
    try:
        r = login(running, "quelquun", "secret")
        assert r.status_code == 503 and "annuaire" in r.json()["detail"]
    finally:
        running.stop()
