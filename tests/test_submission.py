"""SMTP submission (issue 16) with smtplib: STARTTLS and implicit TLS, AUTH only inside TLS, a
From the account may not use refused, the copy in Envoyés, the local recipient sees it."""

from __future__ import annotations

import smtplib
from email.message import EmailMessage

import pytest

from monsisra.services.demo import minimal_pdf
from tests.imap_support import DOMAIN, imap, mailbox_id, smtp
from tests.support import unique

ALICE = f"alice.martin@{DOMAIN}"
BRUNO = f"bruno.petit@{DOMAIN}"


def letter(subject: str, sender: str = ALICE, to: str = BRUNO, pdf: bool = False) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = f"Dr Alice MARTIN <{sender}>"
    msg["To"] = to
    msg["Subject"] = subject
    msg.set_content("Cher confrère,\nvoici le compte rendu.\n")
    if pdf:
        msg.add_attachment(minimal_pdf("Compte rendu"), maintype="application", subtype="pdf",
                           filename="compte-rendu.pdf")
    return msg


def inbox_of(mail_server, username: str, address: str) -> list[dict]:
    api = mail_server.login(username)
    r = api.get(f"/api/v1/mailboxes/{mailbox_id(api, address)}/messages", params={"view": "all", "limit": 50})
    assert r.status_code == 200, r.text
    return r.json()["items"]


@pytest.mark.parametrize("implicit", [False, True], ids=["starttls", "implicit-tls"])
def test_submission_reaches_the_recipient_with_a_copy_in_sent(mail_server, implicit):
    subject = unique("Soumission ")
    with smtp(mail_server, implicit=implicit) as c:
        refused = c.send_message(letter(subject, pdf=True))
    assert refused == {}
    got = [i for i in inbox_of(mail_server, "bruno.petit", BRUNO) if i["subject"] == subject]
    assert got and got[0]["attachments"][0]["filename"] == "compte-rendu.pdf"
    api = mail_server.login("alice.martin")
    r = api.get(f"/api/v1/mailboxes/{mailbox_id(api, ALICE)}/messages", params={"view": "sent"})
    assert any(i["subject"] == subject for i in r.json()["items"])
    # The copy in Envoyés, over IMAP too.
    c = imap(mail_server)
    c.select("Envoy&AOk-s", readonly=True)
    typ, data = c.uid("SEARCH", None, "SUBJECT", f'"{subject}"')
    assert typ == "OK" and data[0].strip()
    c.logout()


def test_bcc_recipients_receive_it(mail_server):
    subject = unique("Copie cachee ")
    with smtp(mail_server) as c:
        c.send_message(letter(subject), to_addrs=[BRUNO, f"claire.roux@{DOMAIN}"])
    assert any(i["subject"] == subject for i in inbox_of(mail_server, "claire.roux", f"claire.roux@{DOMAIN}"))


def test_auth_is_refused_before_tls(mail_server):
    with smtplib.SMTP("127.0.0.1", mail_server.settings.submission_port, timeout=30) as c:
        c.ehlo("client.test")
        assert not c.has_extn("auth") and c.has_extn("starttls")
        code, text = c.docmd("AUTH", "PLAIN AGFsaWNlLm1hcnRpbgBkZW1v")
        assert code in (530, 538), text  # STARTTLS first
        code, text = c.docmd("MAIL", f"FROM:<{ALICE}>")
        assert code >= 500, text


def test_mail_without_auth_is_refused(mail_server):
    with smtp(mail_server, None) as c:
        assert c.has_extn("auth")
        code, text = c.docmd("MAIL", f"FROM:<{ALICE}>")
        assert code == 530, text


def test_a_from_the_account_may_not_use_is_refused(mail_server):
    subject = unique("Usurpation ")
    with smtp(mail_server) as c:
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            c.send_message(letter(subject, sender=BRUNO, to=ALICE), from_addr=BRUNO)
        assert refused.value.smtp_code == 550 and b"5.7.1" in refused.value.smtp_error
        # The envelope sender is hers but the From header is not: refused at DATA.
        with pytest.raises(smtplib.SMTPDataError) as refused_data:
            c.send_message(letter(subject, sender=BRUNO, to=ALICE), from_addr=ALICE)
        assert refused_data.value.smtp_code == 550
    assert not any(i["subject"] == subject for i in inbox_of(mail_server, "alice.martin", ALICE))


def test_a_delegate_sends_from_the_mailbox_she_may_use(mail_server):
    subject = unique("Secretariat ")
    with smtp(mail_server, "sophie.blanc") as c:
        assert c.send_message(letter(subject)) == {}
    assert any(i["subject"] == subject for i in inbox_of(mail_server, "bruno.petit", BRUNO))


def test_wrong_password_is_refused(mail_server):
    with smtp(mail_server, None) as c:
        with pytest.raises(smtplib.SMTPAuthenticationError):
            c.login("alice.martin", "not-the-password")
