"""Issue 15 item 1, the second factor, through HTTP (API and web forms) and the WebSocket, on
both engines: enrolment and confirmation, a code accepted once, recovery codes used once, wrong
codes throttled, the policy that holds a password-only session to enrolment (demo accounts
exempt), the web login's second step and the browsers remembered after it."""

from __future__ import annotations

import re
import time

import httpx
import pyotp
import pytest
import sqlalchemy as sa
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from monsisra.store.models import AuditEvent
from tests.support import make_settings, start_server


def code_at(secret: str, offset: int = 0) -> str:
    """The code of the time step ``offset`` steps from now (the server accepts one either side)."""
    totp = pyotp.TOTP(secret)
    return totp.generate_otp(int(time.time()) // 30 + offset)


def token(base_url: str, username: str, password: str = "secret-pass", otp: str | None = None) -> httpx.Response:
    data = {"username": username, "password": password}
    if otp is not None:
        data["otp"] = otp
    return httpx.post(f"{base_url}/api/v1/auth/token", data=data, timeout=30)


def bearer(base_url: str, value: str) -> httpx.Client:
    return httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {value}"}, timeout=30)


def audited(server, action: str, account_username: str | None = None) -> list[dict]:
    async def rows() -> list[dict]:
        async with server.core.read() as s:
            found = (await s.execute(sa.select(AuditEvent.detail, AuditEvent.account_id)
                                     .where(AuditEvent.action == action))).all()
        return [dict(d or {}, account_id=a) for d, a in found
                if account_username is None or (d or {}).get("username") == account_username]

    return server.call(rows)


def enrol(base_url: str, access: str) -> dict:
    with bearer(base_url, access) as c:
        r = c.post("/api/v1/me/totp")
        assert r.status_code == 200, r.text
        body = r.json()
        assert r.json()["otpauth_uri"].startswith("otpauth://totp/")
        r = c.post("/api/v1/me/totp/confirm", json={"otp": code_at(body["secret"])})
        assert r.status_code == 200 and r.json()["enabled"] is True, r.text
    return body


@pytest.fixture(scope="module")
def strict_server(server, database_url, tmp_path_factory, backend):
    """A second server on the same database with the platform's default policy: a second
    factor required, and small limits on wrong codes."""
    settings = make_settings(database_url, tmp_path_factory.mktemp(f"strict-{backend}"), smtp_enabled=False,
                             run_workers=False, totp_required=True, login_max_failures=4,
                             otp_account_max_failures=6)
    running = start_server(settings)
    yield running
    running.stop()


def test_enrol_confirm_then_the_token_needs_a_code_used_once(server, make_user):
    user, _, _ = make_user()
    first = token(server.base_url, user).json()["access_token"]
    with bearer(server.base_url, first) as c:
        assert c.get("/api/v1/me/totp").json()["enabled"] is False
        enrolment = c.post("/api/v1/me/totp").json()
        secret = enrolment["secret"]
        assert set(enrolment) == {"secret", "otpauth_uri", "recovery_codes"}
        assert len(enrolment["recovery_codes"]) == 10 and len(set(enrolment["recovery_codes"])) == 10
        assert f"secret={secret}" in enrolment["otpauth_uri"] and "issuer=MonSisra" in enrolment["otpauth_uri"]
        # Not active before a first code confirms it: the password alone still logs in.
        assert token(server.base_url, user).status_code == 200
        wrong = c.post("/api/v1/me/totp/confirm", json={"otp": "000000" if code_at(secret) != "000000" else "111111"})
        assert wrong.status_code == 401 and wrong.headers["content-type"].startswith("application/problem+json")
        assert c.post("/api/v1/me/totp/confirm", json={"otp": "12ab"}).status_code == 422
        # The steps are fixed here, not re-read from the clock: a step boundary between two calls
        # must not turn the replayed code into a fresh one.
        step = int(time.time()) // 30
        confirming = pyotp.TOTP(secret).generate_otp(step)
        confirmed = c.post("/api/v1/me/totp/confirm", json={"otp": confirming})
        assert confirmed.status_code == 200, confirmed.text
        assert confirmed.json()["enabled"] is True and confirmed.json()["recovery_codes_left"] == 10
    # Now the password alone is not enough, and says why.
    r = token(server.base_url, user)
    assert r.status_code == 401 and r.json()["otp_required"] is True and "code" in r.json()["detail"]
    # The code that confirmed was spent: the same step cannot be used again (replay).
    r = token(server.base_url, user, otp=confirming)
    assert r.status_code == 401 and "déjà servi" in r.json()["detail"]
    assert any(d["reason"] == "replay" for d in audited(server, "login.otp.failure", user))
    # The next step's code works once.
    later = pyotp.TOTP(secret).generate_otp(step + 1)
    r = token(server.base_url, user, otp=later)
    assert r.status_code == 200, r.text
    with bearer(server.base_url, r.json()["access_token"]) as c:
        assert c.get("/api/v1/mailboxes").status_code == 200
    assert token(server.base_url, user, otp=later).status_code == 401
    # A wrong password with a right-looking code: refused on the password, nothing spent.
    assert token(server.base_url, user, password="wrong-pass", otp=code_at(secret, +1)).status_code == 401
    # A recovery code works once, in any case and with or without its dash.
    recovery = enrolment["recovery_codes"][3]
    r = token(server.base_url, user, otp=recovery.upper().replace("-", " "))
    assert r.status_code == 200, r.text
    assert token(server.base_url, user, otp=recovery).status_code == 401
    assert audited(server, "login.recovery_code", user)
    with bearer(server.base_url, r.json()["access_token"]) as c:
        assert c.get("/api/v1/me/totp").json()["recovery_codes_left"] == 9
        # New recovery codes on a current code; the old ones stop working.
        fresh = c.post("/api/v1/me/totp/recovery-codes", json={"otp": enrolment["recovery_codes"][0]})
        assert fresh.status_code == 200 and len(fresh.json()["recovery_codes"]) == 10
    assert token(server.base_url, user, otp=enrolment["recovery_codes"][1]).status_code == 401
    assert token(server.base_url, user, otp=fresh.json()["recovery_codes"][1]).status_code == 200


def test_a_password_only_session_may_only_enrol_where_the_factor_is_required(strict_server, make_user):
    base = strict_server.base_url
    user, _, _ = make_user()
    r = token(base, user)
    assert r.status_code == 200
    limited = r.json()["access_token"]
    with bearer(base, limited) as c:
        for path in ("/api/v1/mailboxes", "/api/v1/me"):
            refused = c.get(path)
            assert refused.status_code == 403, path
            assert refused.json()["title"] == "Second facteur requis" and "/api/v1/me/totp" in refused.json()["detail"]
        assert c.get("/api/v1/me/totp").json()["required"] is True
    # Its live socket is refused as well (at the handshake, as without a session).
    ws_url = base.replace("http://", "ws://") + "/api/v1/events"
    headers = {"Authorization": f"Bearer {limited}"}
    with pytest.raises((ConnectionClosed, InvalidStatus)), connect(ws_url, additional_headers=headers) as ws:
        ws.recv(timeout=10)
    # Enrolling through that very session lifts the limit.
    enrol(base, limited)
    with bearer(base, limited) as c:
        assert c.get("/api/v1/mailboxes").status_code == 200
    # The demo accounts are exempt: `make run` logins keep working with a password alone.
    demo = token(base, "alice.martin", "demo")
    with bearer(base, demo.json()["access_token"]) as c:
        assert c.get("/api/v1/mailboxes").status_code == 200
        assert c.get("/api/v1/me/totp").json()["required"] is False
    # Where it is required, it cannot be turned off, only moved to another phone.
    with bearer(base, limited) as c:
        r = c.request("DELETE", "/api/v1/me/totp", json={"otp": "123456"})
        assert r.status_code == 409 and "obligatoire" in r.json()["detail"]


def test_wrong_codes_are_throttled_like_passwords(strict_server, make_user):
    base = strict_server.base_url
    user, _, _ = make_user()
    secret = enrol(base, token(base, user).json()["access_token"])["secret"]
    right = code_at(secret, +1)
    wrong = next(f"{n:06d}" for n in range(1000) if f"{n:06d}" not in {code_at(secret, k) for k in (-1, 0, 1)})
    statuses = [token(base, user, otp=wrong).status_code for _ in range(4)]
    assert statuses == [401] * 4
    r = token(base, user, otp=right)
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0 and "tentatives" in r.json()["detail"]
    assert audited(strict_server, "login.throttled", user)
    # From another address (a trusted proxy is not configured here: the account-wide ceiling is
    # what would stop a spread-out guesser), the owner's known browser is not locked out: see the
    # web test below, which logs in with its device cookie.


def _second_step(page: str) -> str:
    match = re.search(r'name="ticket" value="([^"]+)"', page)
    assert match, "no second step in the page"
    return match.group(1)


def test_the_web_login_asks_for_the_code_on_a_second_step_and_remembers_a_browser(server, make_user):
    user, _, _ = make_user()
    secret = enrol(server.base_url, token(server.base_url, user).json()["access_token"])["secret"]
    with httpx.Client(base_url=server.base_url, timeout=30, follow_redirects=False) as web:
        step = web.post("/connexion", data={"username": user, "password": "secret-pass", "suite": "/parametres"})
        assert step.status_code == 200 and "Validation en deux étapes" in step.text
        assert "monsisra_session" not in step.headers.get("set-cookie", "")  # no session yet
        ticket = _second_step(step.text)
        bad = web.post("/connexion/code", data={"ticket": ticket, "otp": "99999x", "suite": "/parametres"})
        assert bad.status_code == 400 and "incorrect" in bad.text and "monsisra_session" not in web.cookies
        # One character of the signature changed (not the last one: some of its bits are padding).
        forged_ticket = ticket[:-5] + ("A" if ticket[-5] != "A" else "B") + ticket[-4:]
        forged = web.post("/connexion/code", data={"ticket": forged_ticket, "otp": code_at(secret, +1)})
        assert forged.status_code == 400 and "expirée" in forged.text
        ok = web.post("/connexion/code", data={"ticket": ticket, "otp": code_at(secret, +1), "suite": "/parametres",
                                               "remember": "1"})
        assert ok.status_code == 303 and ok.headers["location"] == "/parametres"
        assert web.get("/boite").status_code == 200
        assert "monsisra_trusted" in web.cookies
        web.post("/deconnexion")
        # This browser is remembered: the password alone lets it in…
        again = web.post("/connexion", data={"username": user, "password": "secret-pass"})
        assert again.status_code == 303 and again.headers["location"] == "/boite"
        # …but not another one given the same "trusted" cookie without its device cookie.
        with httpx.Client(base_url=server.base_url, timeout=30, follow_redirects=False,
                          cookies={"monsisra_trusted": web.cookies["monsisra_trusted"]}) as thief:
            stolen = thief.post("/connexion", data={"username": user, "password": "secret-pass"})
            assert stolen.status_code == 200 and 'name="ticket"' in stolen.text
        # Forgetting the browsers (Paramètres › Sécurité) asks this one for a code again.
        page = web.get("/parametres/securite")
        csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text).group(1)
        assert web.post("/parametres/securite/oublier", data={"csrf": csrf}).status_code == 303
        web.post("/deconnexion")
        asked = web.post("/connexion", data={"username": user, "password": "secret-pass"})
        assert asked.status_code == 200 and 'name="ticket"' in asked.text


def test_no_code_ticket_or_logout_token_reaches_a_log_line():
    from monsisra.redaction import redact

    lines = {
        'POST /connexion/code body ticket=eyJhIjoxfQ.Zz.Yy&otp=123456&suite=/boite': ("eyJhIjoxfQ", "123456"),
        'GET /connexion/psc/retour?code=abc123secret&state=st4t3&iss=http://psc': ("abc123secret", "st4t3"),
        'POST /portail/oidc/token grant_type=authorization_code&code=c0de&code_verifier=v3rifier': ("c0de", "v3rifier"),
        'POST /backchannel logout_token=eyJhbGciOi.payload.sig': ("eyJhbGciOi",),
        'GET /portail/oidc/logout?id_token_hint=eyJraWQi.x.y&state=z': ("eyJraWQi",),
        'cookie: monsisra_trusted=signed-value; monsisra_psc=half-of-login': ("signed-value", "half-of-login"),
        '{"otp": "654321", "recovery_codes": "abcde-fghij"}': ("654321", "abcde-fghij"),
    }
    for line, secrets_ in lines.items():
        masked = redact(line)
        for secret in secrets_:
            assert secret not in masked, (line, masked)


def test_a_demo_database_from_before_keeps_its_demo_logins_exempt(server, database_url, tmp_path):
    """`make run` on a database loaded before the second factor existed: `demo --if-empty`
    does not reload it, but its demo accounts stay exempt."""
    import os
    import subprocess
    import sys

    from monsisra.store.identity import SecondFactor
    from monsisra.store.models import Account

    async def forget_exemptions() -> None:
        async with server.core.write() as tx:
            ids = sa.select(Account.id).where(Account.username.in_(["alice.martin", "admin"]))
            await tx.session.execute(sa.delete(SecondFactor).where(SecondFactor.account_id.in_(ids)))

    server.call(forget_exemptions)
    env = {**os.environ, "MONSISRA_DATABASE_URL": database_url, "MONSISRA_DATA_DIR": str(tmp_path),
           "MONSISRA_TOTP_REQUIRED": "true"}

    async def alice_exempt() -> bool:
        async with server.core.read() as s:
            return bool(await s.scalar(sa.select(SecondFactor.exempt)
                                       .join(Account, Account.id == SecondFactor.account_id)
                                       .where(Account.username == "alice.martin")))

    assert server.call(alice_exempt) is False
    r = subprocess.run([sys.executable, "-m", "monsisra.cli", "demo", "--if-empty"], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and "déjà remplie" in r.stdout + r.stderr, r.stdout + r.stderr
    assert server.call(alice_exempt) is True


def test_a_new_password_forgets_the_remembered_browsers(server, make_user):
    """Whoever knew the old password may have ticked « se souvenir de ce navigateur »: after a
    change, every browser is asked for a code again."""
    user, _, _ = make_user()
    enrolment = enrol(server.base_url, token(server.base_url, user).json()["access_token"])
    with httpx.Client(base_url=server.base_url, timeout=30, follow_redirects=False) as web:
        step = web.post("/connexion", data={"username": user, "password": "secret-pass"})
        ok = web.post("/connexion/code", data={"ticket": _second_step(step.text),
                                               "otp": code_at(enrolment["secret"], +1), "remember": "1"})
        assert ok.status_code == 303 and "monsisra_trusted" in web.cookies
        web.post("/deconnexion")
        assert web.post("/connexion", data={"username": user, "password": "secret-pass"}).status_code == 303
        web.post("/deconnexion")
        access = token(server.base_url, user, otp=enrolment["recovery_codes"][0]).json()["access_token"]
        new = "Quatre-chevaux-bleus-au-galop-2026"
        with bearer(server.base_url, access) as c:
            changed = c.post("/api/v1/me/password", json={"current": "secret-pass", "new": new})
            assert changed.status_code == 200, changed.text
        asked = web.post("/connexion", data={"username": user, "password": new})
        assert asked.status_code == 200 and 'name="ticket"' in asked.text
