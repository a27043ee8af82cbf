"""App passwords (« mots de passe d'application », issue 16) through the real boundaries, on both
engines: an account with a second factor is refused over IMAP and SMTP submission with its
password alone and let in with an app password; a revoked one, one of a disabled account, or one
given with another login is refused; an account without a second factor keeps logging in with
its password (the contract); the API only ever shows or revokes the caller's own; wrong secrets
are throttled like the web login; ``curl`` logs in with one."""

from __future__ import annotations

import imaplib
import re
import shutil
import smtplib
import subprocess
from email.message import EmailMessage

import httpx
import pyotp
import pytest
import sqlalchemy as sa

from monsisra.services import totp
from monsisra.store.reach import AppPassword
from tests.imap_support import DOMAIN, imap, new_account, smtp
from tests.support import unique

SHAPE = re.compile(r"^[a-z2-9]{4}(-[a-z2-9]{4}){6}$")
REFUSAL = "second facteur"


def api_token(server, username: str, password: str, otp_secret: str | None = None) -> str:
    data = {"username": username, "password": password}
    if otp_secret:
        data["otp"] = pyotp.TOTP(otp_secret).now()
    r = httpx.post(f"{server.base_url}/api/v1/auth/token", data=data, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["access_token"]


def with_second_factor(server) -> tuple[str, str, httpx.Client]:
    """A new account that enrolled TOTP, and the API client of the session that confirmed it
    (no longer limited once confirmed)."""
    username, address, _ = new_account(server)
    api = server.client(api_token(server, username, "secret-pass-16"))
    secret = api.post("/api/v1/me/totp").json()["secret"]
    r = api.post("/api/v1/me/totp/confirm", json={"otp": pyotp.TOTP(secret).now()})
    assert r.status_code == 200 and r.json()["enabled"] is True, r.text
    return username, address, api


def without_second_factor(server) -> tuple[str, str, httpx.Client]:
    """A new account held to no second factor (like the demo's), and its API client."""
    username, address, _ = new_account(server)
    account_id = server.call(_account_id, server, username)
    server.call(totp.set_exempt, server.core, [account_id])
    return username, address, server.client(api_token(server, username, "secret-pass-16"))


async def _account_id(server, username: str) -> int:
    from monsisra.store.models import Account

    async with server.core.read() as s:
        return await s.scalar(sa.select(Account.id).where(Account.username == username))


def letter(sender: str, subject: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, f"bruno.petit@{DOMAIN}", subject
    msg.set_content("Envoyé par un logiciel de messagerie.\n")
    return msg


def imap_refused(server, username: str, password: str) -> str:
    c = imap(server, None)
    with pytest.raises(imaplib.IMAP4.error) as exc:
        c.login(username, password)
    c.logout()
    return str(exc.value)


def smtp_refused(server, username: str, password: str) -> smtplib.SMTPAuthenticationError:
    with smtp(server, None) as c, pytest.raises(smtplib.SMTPAuthenticationError) as exc:
        c.login(username, password)
    return exc.value


def test_second_factor_account_needs_an_app_password(mail_server):
    username, address, api = with_second_factor(mail_server)
    # The password alone is refused, saying what to do.
    text = imap_refused(mail_server, username, "secret-pass-16")
    assert "AUTHENTICATIONFAILED" in text and REFUSAL in text and "mot de passe d'application" in text
    err = smtp_refused(mail_server, username, "secret-pass-16")
    assert err.smtp_code == 535 and REFUSAL.encode() in err.smtp_error
    # An app password, shown once, typed as given or without dashes in capitals.
    r = api.post("/api/v1/me/app-passwords", json={"label": "Thunderbird cabinet"})
    assert r.status_code == 201, r.text
    created = r.json()
    assert set(created) == {"id", "label", "password", "created_at"} and SHAPE.match(created["password"])
    secret = created["password"]
    c = imap(mail_server, username, secret)
    assert c.select("INBOX")[0] == "OK"
    c.logout()
    c = imap(mail_server, username, secret.replace("-", "").upper(), implicit=False)
    c.logout()
    subject = unique("Par mot de passe d'application ")
    with smtp(mail_server, username, secret, implicit=True) as s:
        assert s.send_message(letter(address, subject)) == {}
    bruno = mail_server.login("bruno.petit")
    got = bruno.get("/api/v1/mailboxes").json()
    bruno_box = next(m["id"] for m in got if m["address"] == f"bruno.petit@{DOMAIN}")
    items = bruno.get(f"/api/v1/mailboxes/{bruno_box}/messages", params={"limit": 50}).json()["items"]
    assert any(i["subject"] == subject for i in items)
    # The list shows it with its last use, never the secret.
    listed = api.get("/api/v1/me/app-passwords").json()
    assert [i["label"] for i in listed] == ["Thunderbird cabinet"]
    assert listed[0]["last_used_at"] and listed[0]["last_used_via"] in ("imap", "submission")
    assert "password" not in listed[0] and secret not in str(listed)
    # Only the hash is stored.
    stored = mail_server.call(_stored, mail_server, created["id"])
    assert secret not in stored and len(stored) == 64
    # Revoked: refused everywhere, and gone from the list.
    assert api.delete(f"/api/v1/me/app-passwords/{created['id']}").status_code == 204
    assert "AUTHENTICATIONFAILED" in imap_refused(mail_server, username, secret)
    assert smtp_refused(mail_server, username, secret).smtp_code == 535
    assert api.get("/api/v1/me/app-passwords").json() == []
    assert api.delete(f"/api/v1/me/app-passwords/{created['id']}").status_code == 404
    api.close()


async def _stored(server, app_password_id: int) -> str:
    async with server.core.read() as s:
        return await s.scalar(sa.select(AppPassword.secret_hash).where(AppPassword.id == app_password_id))


def test_without_second_factor_the_password_still_works(mail_server):
    username, address, api = without_second_factor(mail_server)
    c = imap(mail_server, username, "secret-pass-16")
    assert c.select("INBOX")[0] == "OK"
    c.logout()
    with smtp(mail_server, username, "secret-pass-16") as s:
        assert s.send_message(letter(address, unique("Mot de passe "))) == {}
    # An app password works too.
    secret = api.post("/api/v1/me/app-passwords", json={"label": "mbsync"}).json()["password"]
    imap(mail_server, username, secret).logout()
    api.close()


def test_only_the_owner_sees_and_revokes_its_app_passwords(mail_server):
    alice, _, alice_api = without_second_factor(mail_server)
    bruno, _, bruno_api = without_second_factor(mail_server)
    mine = alice_api.post("/api/v1/me/app-passwords", json={"label": "Poste d'Alice"}).json()
    assert bruno_api.get("/api/v1/me/app-passwords").json() == []
    assert bruno_api.delete(f"/api/v1/me/app-passwords/{mine['id']}").status_code == 404
    # Her secret is no key to his account.
    assert "AUTHENTICATIONFAILED" in imap_refused(mail_server, bruno, mine["password"])
    imap(mail_server, alice, mine["password"]).logout()
    assert [i["id"] for i in alice_api.get("/api/v1/me/app-passwords").json()] == [mine["id"]]
    alice_api.close()
    bruno_api.close()


def test_bad_labels_are_refused_in_french_and_change_nothing(mail_server):
    _, _, api = without_second_factor(mail_server)
    for label in ("", "   ", "ligne\u0007cachée"):
        r = api.post("/api/v1/me/app-passwords", json={"label": label})
        assert r.status_code in (400, 422), r.text
    r = api.post("/api/v1/me/app-passwords", json={"label": ""})
    assert "nom" in r.json()["detail"]
    r = api.post("/api/v1/me/app-passwords", json={"label": "x" * 121})
    assert r.status_code == 422
    assert api.get("/api/v1/me/app-passwords").json() == []
    api.close()


def test_a_disabled_account_cannot_use_its_app_passwords(mail_server):
    username, _, api = with_second_factor(mail_server)
    secret = api.post("/api/v1/me/app-passwords", json={"label": "Portable"}).json()["password"]
    imap(mail_server, username, secret).logout()
    admin = mail_server.login("admin")
    assert admin.post(f"/api/v1/admin/accounts/{username}/deactivate").status_code == 204
    assert "AUTHENTICATIONFAILED" in imap_refused(mail_server, username, secret)
    assert admin.post(f"/api/v1/admin/accounts/{username}/activate").status_code == 204
    imap(mail_server, username, secret).logout()
    admin.close()
    api.close()


def test_wrong_app_passwords_are_throttled_like_passwords(mail_server):
    username, _, api = with_second_factor(mail_server)
    wrong = "-".join(["abcd"] * 7)
    for _ in range(mail_server.settings.login_max_failures):
        assert "AUTHENTICATIONFAILED" in imap_refused(mail_server, username, wrong)
    text = imap_refused(mail_server, username, wrong)
    assert "UNAVAILABLE" in text and "tentatives" in text
    err = smtp_refused(mail_server, username, "secret-pass-16")
    assert err.smtp_code == 454  # submission shares the throttle
    api.close()


def test_curl_logs_in_with_an_app_password(mail_server):
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed (Debian package: curl)")
    username, _, api = with_second_factor(mail_server)
    secret = api.post("/api/v1/me/app-passwords", json={"label": "curl"}).json()["password"]
    cert = str(mail_server.settings.data_dir / "tls" / "dev-cert.pem")
    url = f"imaps://127.0.0.1:{mail_server.settings.imaps_port}/INBOX"
    ok = subprocess.run([curl, "-sS", "--cacert", cert, "-u", f"{username}:{secret}", url, "-X",
                         "STATUS INBOX (MESSAGES)"], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "MESSAGES" in ok.stdout, ok.stderr
    refused = subprocess.run([curl, "-sS", "--cacert", cert, "-u", f"{username}:secret-pass-16", url, "-X",
                              "STATUS INBOX (MESSAGES)"], capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0
    api.close()
