"""The MSSanté gateway against real peers: smtplib and swaks sessions with STARTTLS, and a
private Postfix standing for another operator (it receives our mail and relays its own to us)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import smtplib
import socket
import ssl
import subprocess
import uuid
import warnings
import zipfile
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from monsisra.domain.mail import xdm
from monsisra.services import demo as demo_service
from tests.gateway_support import (
    DOMAIN,
    OTHER_DOMAIN,
    PKI,
    SWAKS,
    client_ssl,
    find,
    fixture,
    mailbox_id,
    smtp_send,
    unique_mail,
    wait_for,
)
from tests.support import FIXTURES

pytestmark = [
    pytest.mark.skipif(not Path("/usr/sbin/postfix").exists(),
                       reason="Debian postfix is not installed (.ci/run installs it)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="a private Postfix instance must be started as root"),
]

# --- inbound ---------------------------------------------------------------------------------------


def test_letter_with_xdm_is_linked_to_its_patient_and_stored_once(gw):
    raw = fixture("letter_with_xdm.eml")
    sender = "cardiologie.ch-vichy@ch-vichy.mssante.fr"
    assert gw.send(raw, sender, [f"alice.martin@{DOMAIN}"])[0] == 250
    # Same Message-ID again (a retry by the other operator): acknowledged, stored once.
    code, text = gw.send(raw, sender, [f"alice.martin@{DOMAIN}"])
    assert code == 250 and "deja recu" in text
    alice = gw.server.login("alice.martin")
    box = mailbox_id(alice, f"alice.martin@{DOMAIN}")
    found = find(alice, box, "CR consultation cardiologie - DUPONT Jeanne")
    assert len(found) == 1
    msg = alice.get(f"/api/v1/mailboxes/{box}/messages/{found[0]['id']}").json()
    assert msg["category"] == "letter"
    assert msg["patient"]["ins"] == "247101513112191"
    assert msg["patient"]["oid"] == "1.2.250.1.213.1.4.8"
    assert msg["patient"]["family_name"] == "DUPONT"
    assert {a["filename"] for a in msg["attachments"]} == {"CR_consultation_DUPONT.pdf", "IHE_XDM.ZIP"}
    pdf = next(a for a in msg["attachments"] if a["filename"].endswith(".pdf"))
    r = alice.get(f"/api/v1/attachments/{pdf['id']}")
    assert r.status_code == 200 and r.content.startswith(b"%PDF")
    assert "Veuillez trouver ci-joint" in msg["body"]
    assert msg["sender"]["address"] == sender
    # The raw form is kept for audit, byte for byte as received.
    wire = re.sub(rb"\r?\n", b"\r\n", raw)
    from monsisra.services import inbound

    assert gw.server.call(inbound.raw_message, gw.server.core, hashlib.sha256(wire).hexdigest()) == wire
    # The sender asked for a receipt with a different address than the envelope's? Here it is equal.
    mdn = alice.get(f"/api/v1/mailboxes/{box}/messages/{found[0]['id']}/mdn").json()
    assert mdn["requested"] is True and mdn["mdn_pending"] is False


def test_lab_result_is_a_result_with_sanitised_html(gw):
    sender = "resultats.labo-aurillac@labo-aurillac.mssante.fr"
    assert gw.send(fixture("lab_result.eml"), sender, [f"alice.martin@{DOMAIN}"])[0] == 250
    alice = gw.server.login("alice.martin")
    box = mailbox_id(alice, f"alice.martin@{DOMAIN}")
    [item] = find(alice, box, "Résultats biologiques - ROUX Pierre")
    msg = alice.get(f"/api/v1/mailboxes/{box}/messages/{item['id']}").json()
    assert msg["category"] == "result"
    assert "<b>biologie</b>" in msg["html"]
    assert [a["filename"] for a in msg["attachments"]] == ["Résultats ROUX Pierre.pdf"]


def test_patient_reply_lands_in_patient_exchanges_under_the_original(gw):
    alice = gw.server.login("alice.martin")
    box = mailbox_id(alice, f"alice.martin@{DOMAIN}")
    patient = "193083819580859@patient.mssante.fr"
    r = alice.post("/api/v1/messages", json={
        "from_mailbox": box, "to": [patient], "subject": "Résultats de votre prise de sang",
        "body": "Vos résultats sont normaux.", "category": "patient", "no_reply": False})
    assert r.status_code == 201, r.text
    original = r.json()
    raw = fixture("patient_reply.eml").replace(b"<res-193083@monsisra.localhost>", original["message_id"].encode())
    assert gw.send(raw, patient, [f"alice.martin@{DOMAIN}"])[0] == 250
    [item] = find(alice, box, "Re: Résultats de votre prise de sang")
    assert item["category"] == "patient"
    assert item["thread"]["id"] == original["thread"]["id"]
    assert item["thread"]["in_reply_to"] == original["id"]


def test_mdn_from_the_other_operator_updates_our_receipts(gw):
    alice = gw.server.login("alice.martin")
    box = mailbox_id(alice, f"alice.martin@{DOMAIN}")
    remote = f"secretariat@{OTHER_DOMAIN}"
    subject = f"Adressage patient {uuid.uuid4().hex[:6]}"
    r = alice.post("/api/v1/messages", json={"from_mailbox": box, "to": [remote], "subject": subject,
                                             "body": "Merci de recevoir Mme X.", "receipt_requested": True})
    assert r.status_code == 201, r.text
    sent = r.json()
    # Our mail reaches the other operator with the MSSanté headers.
    delivered = wait_for(lambda: [m for m in gw.postfix.maildir_messages("secretariat") if m["Subject"] == subject])
    assert delivered[0]["X-MSS-NIL"] == gw.server.settings.nil
    assert delivered[0]["Disposition-Notification-To"] == f"alice.martin@{DOMAIN}"
    assert delivered[0]["Message-ID"] == sent["message_id"]
    wait_for(lambda: alice.get(f"/api/v1/messages/{sent['id']}/delivery").json()["items"][0]["status"] == "sent")
    # Their MDN comes back (the sample, pointed at our message and their mailbox).
    raw = (fixture("mdn_displayed.eml").replace(b"<adressage-0001@monsisra.localhost>", sent["message_id"].encode())
           .replace(b"cardiologie.ch-vichy@ch-vichy.mssante.fr", remote.encode()))
    assert gw.send(raw, remote, [f"alice.martin@{DOMAIN}"])[0] == 250
    receipts = alice.get(f"/api/v1/messages/{sent['id']}/receipts").json()["items"]
    assert receipts[0]["address"] == remote and receipts[0]["read_at"]
    # The MDN itself is not a message in the inbox.
    assert not find(alice, box, "Accusé de lecture : Adressage patient")


def test_reading_a_message_sends_a_displayed_mdn_or_asks_first(gw):
    bruno = gw.server.login("bruno.petit")
    box = mailbox_id(bruno, f"bruno.petit@{DOMAIN}")
    remote = f"secretariat@{OTHER_DOMAIN}"
    # Receipt asked to the return path: sent at first reading.
    s1 = f"Demande avec accusé {uuid.uuid4().hex[:6]}"
    raw = unique_mail(remote, f"bruno.petit@{DOMAIN}", s1, Disposition_Notification_To=remote)
    assert gw.send(raw, remote, [f"bruno.petit@{DOMAIN}"])[0] == 250
    [item] = find(bruno, box, s1)
    bruno.get(f"/api/v1/mailboxes/{box}/messages/{item['id']}")
    mdns = wait_for(lambda: [m for m in gw.postfix.maildir_messages("secretariat")
                             if m.get_content_type() == "multipart/report" and s1 in str(m["Subject"])])
    report = next(p for p in mdns[0].walk() if p.get_content_type() == "message/disposition-notification")
    text = report.as_string()
    assert "Disposition: manual-action/MDN-sent-manually; displayed" in text
    assert f"Final-Recipient: rfc822; bruno.petit@{DOMAIN}" in text
    # Receipt asked to another address than the return path: the user is asked first.
    s2 = f"Demande détournée {uuid.uuid4().hex[:6]}"
    raw = unique_mail(remote, f"bruno.petit@{DOMAIN}", s2, Disposition_Notification_To=f"labo@{OTHER_DOMAIN}")
    assert gw.send(raw, remote, [f"bruno.petit@{DOMAIN}"])[0] == 250
    [item] = find(bruno, box, s2)
    read = bruno.get(f"/api/v1/mailboxes/{box}/messages/{item['id']}").json()
    assert read["mdn"]["mdn_pending"] is True  # the reading client learns it must ask the user
    state = bruno.get(f"/api/v1/mailboxes/{box}/messages/{item['id']}/mdn").json()
    assert state["mdn_pending"] is True and state["notify_to"] == f"labo@{OTHER_DOMAIN}"
    assert bruno.post(f"/api/v1/mailboxes/{box}/messages/{item['id']}/mdn", json={"send": True}).json()[
        "status"] == "queued"
    wait_for(lambda: [m for m in gw.postfix.maildir_messages("labo") if s2 in str(m["Subject"])])
    # Nobody else may answer for this mailbox.
    claire = gw.server.login("claire.roux")
    assert claire.post(f"/api/v1/mailboxes/{box}/messages/{item['id']}/mdn").status_code in (403, 404)


def test_postfix_relays_the_other_operators_mail_to_us(gw):
    subject = f"Via Postfix {uuid.uuid4().hex[:6]}"
    raw = unique_mail(f"secretariat@{OTHER_DOMAIN}", f"claire.roux@{DOMAIN}", subject)
    code, _ = smtp_send(gw.postfix.port, f"secretariat@{OTHER_DOMAIN}", [f"claire.roux@{DOMAIN}"], raw,
                        client_ssl(gw.pki))
    assert code == 250
    claire = gw.server.login("claire.roux")
    box = mailbox_id(claire, f"claire.roux@{DOMAIN}")
    wait_for(lambda: find(claire, box, subject))
    assert "TLS" in gw.postfix.log_text() or "tls" in gw.postfix.log_text().lower()


def test_swaks_session_with_starttls(gw):
    if not SWAKS.exists():
        pytest.skip("swaks is not installed (.ci/run installs it)")
    subject = f"Swaks {uuid.uuid4().hex[:6]}"
    result = subprocess.run(
        [str(SWAKS), "--server", "127.0.0.1", "--port", str(gw.port), "--tls", "--tls-verify",
         "--tls-ca-path", str(gw.pki.ca_cert), "--tls-sni", "localhost",
         "--from", f"secretariat@{OTHER_DOMAIN}", "--to", f"alice.martin@{DOMAIN}",
         "--header", f"Subject: {subject}", "--body", "Bonjour depuis swaks", "--helo", "client.test"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"<~\s+250 2\.0\.0", result.stdout)
    alice = gw.server.login("alice.martin")
    assert find(alice, mailbox_id(alice, f"alice.martin@{DOMAIN}"), subject)


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("bad_*.eml")))
def test_hostile_messages_are_refused_or_neutralised(gw, name):
    raw = fixture(name)
    code, text = gw.send(raw, "x@evil.mssante.fr", [f"dac63@{DOMAIN}"])
    assert code == 250 or (code >= 500 and len(text) > 10), (code, text)
    hemo = gw.server.login("dac63.admin")
    box = mailbox_id(hemo, f"dac63@{DOMAIN}")
    if code == 250:
        items = hemo.get(f"/api/v1/mailboxes/{box}/messages", params={"view": "all", "limit": 200}).json()["items"]
        for item in items:
            msg = hemo.get(f"/api/v1/mailboxes/{box}/messages/{item['id']}").json()
            html = msg.get("html") or ""
            assert "<script" not in html and "onerror" not in html and "javascript:" not in html
            assert "<iframe" not in html and "tracker" not in html
            for a in msg["attachments"]:
                assert "/" not in a["filename"] and "\\" not in a["filename"] and ".." not in a["filename"]
            assert "\n" not in msg["subject"]
    # The server keeps serving.
    assert gw.send(unique_mail(f"secretariat@{OTHER_DOMAIN}", f"dac63@{DOMAIN}", "encore là"),
                   f"secretariat@{OTHER_DOMAIN}", [f"dac63@{DOMAIN}"])[0] == 250


def test_zip_bomb_and_deep_nesting_are_refused_with_a_reason(gw):
    code, text = gw.send(fixture("bad_zip_bomb_xdm.eml"), "x@evil.mssante.fr", [f"alice.martin@{DOMAIN}"])
    assert code == 554 and "IHE_XDM" in text
    code, text = gw.send(fixture("bad_deep_nesting.eml"), "x@evil.mssante.fr", [f"alice.martin@{DOMAIN}"])
    assert code == 554 and "imbriquee" in text


def test_header_injection_bcc_is_not_a_recipient(gw):
    gw.send(fixture("bad_header_injection.eml"), "x@evil.mssante.fr", [f"claire.roux@{DOMAIN}"])
    # Nothing relayed to example.com: only the envelope's local recipients get mail.
    assert "victim@example.com" not in gw.postfix.log_text()


def test_smtp_refusals(gw):
    ctx = gw.ctx()
    ok_from = f"secretariat@{OTHER_DOMAIN}"
    msg = unique_mail(ok_from, f"alice.martin@{DOMAIN}", "refus")
    code, text = smtp_send(gw.port, ok_from, [f"personne@{DOMAIN}"], msg, ctx)
    assert code == 550 and "inconnue" in text
    code, text = smtp_send(gw.port, ok_from, ["someone@gmail.com"], msg, ctx)
    assert code == 550 and "relais" in text
    code, text = smtp_send(gw.port, "pirate@untrusted.example", [f"alice.martin@{DOMAIN}"], msg, ctx)
    assert code == 550 and "confiance" in text
    forged = unique_mail("pirate@untrusted.example", f"alice.martin@{DOMAIN}", "forgé")
    code, text = smtp_send(gw.port, ok_from, [f"alice.martin@{DOMAIN}"], forged, ctx)
    assert code == 550 and "confiance" in text
    big = unique_mail(ok_from, f"alice.martin@{DOMAIN}", "gros", body="x" * (4 * 1024 * 1024))
    with pytest.raises(smtplib.SMTPException) as exc:  # 552 (aiosmtpd may close after it)
        code, text = smtp_send(gw.port, ok_from, [f"alice.martin@{DOMAIN}"], big, ctx)
        assert code == 552
        raise smtplib.SMTPException("552")
    assert "552" in str(exc.value) or "closed" in str(exc.value).lower()
    # No MAIL before STARTTLS.
    code, text = smtp_send(gw.port, ok_from, [f"alice.martin@{DOMAIN}"], msg, ctx, starttls=False)
    assert code == 530
    # No From header: the same 550 5.1.7 whether the message is parsed here or, when large, in a
    # helper process (the refusal crosses the process boundary intact).
    for size in (10, 200_000):
        nameless = unique_mail(ok_from, f"alice.martin@{DOMAIN}", "sans expéditeur", body="y" * size)
        nameless = b"\n".join(line for line in nameless.split(b"\n") if not line.startswith(b"From:"))
        code, text = smtp_send(gw.port, ok_from, [f"alice.martin@{DOMAIN}"], nameless, ctx)
        assert (code, text.split()[0]) == (550, "5.1.7"), (size, code, text)


def test_connections_per_client_are_capped(gw):
    limit = gw.server.settings.smtp_max_connections_per_client
    # Connections of the previous tests are closed (the server notices a moment later).
    wait_for(lambda: not gw.server.app.state.smtp.limits.connections, timeout=30)
    held = []
    try:
        for _ in range(limit):
            c = smtplib.SMTP("127.0.0.1", gw.port, timeout=30)
            held.append(c)
        with socket.create_connection(("127.0.0.1", gw.port), timeout=30) as extra:
            assert extra.recv(200).startswith(b"421")
    finally:
        for c in held:
            c.close()
    # Once they are gone, the client is served again.
    wait_for(lambda: not gw.server.app.state.smtp.limits.connections, timeout=30)
    assert gw.send(unique_mail(f"secretariat@{OTHER_DOMAIN}", f"alice.martin@{DOMAIN}", "après"),
                   f"secretariat@{OTHER_DOMAIN}", [f"alice.martin@{DOMAIN}"])[0] == 250


def test_message_rate_per_client_is_limited(gw):
    limits = gw.server.app.state.smtp.limits
    saved = limits.max_per_minute
    limits.allow_message("127.0.0.1")  # prune the window of older entries
    limits.max_per_minute = len(limits.recent["127.0.0.1"]) + 2
    try:
        sender = f"secretariat@{OTHER_DOMAIN}"
        for n in range(2):
            raw = unique_mail(sender, f"alice.martin@{DOMAIN}", f"rafale {n}")
            assert gw.send(raw, sender, [f"alice.martin@{DOMAIN}"])[0] == 250
        code, text = gw.send(unique_mail(sender, f"alice.martin@{DOMAIN}", "de trop"), sender,
                             [f"alice.martin@{DOMAIN}"])
        assert code == 451 and "trop de messages" in text, (code, text)
    finally:
        limits.max_per_minute = saved


def test_tls_12_minimum_and_client_certificate_checked_against_the_trust_anchors(gw):
    old = ssl.create_default_context(cafile=str(gw.pki.ca_cert))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.1 is what we check is refused
        old.maximum_version = ssl.TLSVersion.TLSv1_1
        old.minimum_version = ssl.TLSVersion.TLSv1
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as c:
        c.ehlo("client.test")
        with pytest.raises((ssl.SSLError, smtplib.SMTPServerDisconnected, ConnectionError)):
            c.starttls(context=old)
    stranger_pki = PKI.create(Path(gw.server.settings.data_dir) / "stranger")
    stranger = client_ssl(gw.pki, stranger_pki.issue("stranger", ["stranger.example"]))
    with pytest.raises((ssl.SSLError, smtplib.SMTPServerDisconnected, ConnectionError)):
        smtp_send(gw.port, f"secretariat@{OTHER_DOMAIN}", [f"alice.martin@{DOMAIN}"],
                  unique_mail(f"secretariat@{OTHER_DOMAIN}", f"alice.martin@{DOMAIN}", "étranger"), stranger)


# --- outbound --------------------------------------------------------------------------------------


def test_letter_with_pdf_for_a_patient_leaves_with_an_ihe_xdm_archive(gw):
    alice = gw.server.login("alice.martin")
    box = mailbox_id(alice, f"alice.martin@{DOMAIN}")
    pdf = demo_service.minimal_pdf("Compte rendu de test") if hasattr(demo_service, "minimal_pdf") else (
        b"%PDF-1.4\n%%EOF\n")
    up = alice.post("/api/v1/attachments", files={"file": ("CR_test.pdf", pdf, "application/pdf")})
    assert up.status_code in (200, 201), up.text
    subject = f"CR pour le Dr Bob {uuid.uuid4().hex[:6]}"
    r = alice.post("/api/v1/messages", json={
        "from_mailbox": box, "to": [f"bob@{OTHER_DOMAIN}"], "subject": subject, "body": "Cher confrère,",
        "attachments": [up.json()["id"]],
        "patient": {"ins": "247101513112191", "oid": "1.2.250.1.213.1.4.8", "family_name": "DUPONT",
                    "given_names": "Jeanne", "birth_date": "1962-04-15", "sex": "F"}})
    assert r.status_code == 201, r.text
    sent = r.json()
    assert sent["to"][0]["status"] == "queued"
    [mail] = wait_for(lambda: [m for m in gw.postfix.maildir_messages("bob") if m["Subject"] == subject])
    assert mail["X-MSS-NIL"] == gw.server.settings.nil
    assert mail["X-MSS-CODECDA"] == "11488-4"
    assert mail["X-MSS-INS"] == "O"
    assert "Disposition-Notification-To" not in mail
    files = {p.get_filename(): p.get_content() for p in mail.iter_attachments()}
    assert files["CR_test.pdf"] == pdf
    content = xdm.read(files["IHE_XDM.ZIP"])
    assert content.patient.ins == "247101513112191" and content.patient.family_name == "DUPONT"
    with zipfile.ZipFile(io.BytesIO(files["IHE_XDM.ZIP"])) as zf:
        assert {"INDEX.HTM", "README.TXT", xdm.METADATA_PATH} <= set(zf.namelist())
    # The sender sees the delivery status per external recipient.
    wait_for(lambda: alice.get(f"/api/v1/mailboxes/{box}/messages/{sent['id']}").json()["to"][0]["status"] == "sent")


def test_a_send_to_another_operator_wakes_the_delivery_worker_after_commit(gw):
    """The worker is woken by the send itself (not left to its next poll); a local send and a
    draft do not wake it."""
    calls: list[int] = []
    listeners = gw.server.core.outbox_listeners
    assert any(getattr(f, "__self__", None).__class__.__name__ == "Worker" for f in listeners)
    listeners.append(lambda: calls.append(1))
    try:
        alice = gw.server.login("alice.martin")
        box = mailbox_id(alice, f"alice.martin@{DOMAIN}")
        for to, draft in (([f"bruno.petit@{DOMAIN}"], False), ([f"bob@{OTHER_DOMAIN}"], True)):
            r = alice.post("/api/v1/messages", json={"from_mailbox": box, "to": to, "subject": "local ou brouillon",
                                                     "body": "x", "draft": draft})
            assert r.status_code == 201, r.text
        assert calls == []
        subject = f"Réveil {uuid.uuid4().hex[:6]}"
        r = alice.post("/api/v1/messages", json={"from_mailbox": box, "to": [f"bob@{OTHER_DOMAIN}"],
                                                 "subject": subject, "body": "x"})
        assert r.status_code == 201, r.text
        assert calls == [1]  # called once the send had committed, before the reply
        wait_for(lambda: [m for m in gw.postfix.maildir_messages("bob") if m["Subject"] == subject])
    finally:
        listeners.pop()


def test_write_to_patient_without_reply_sets_mss_mes_fin(gw):
    alice = gw.server.login("alice.martin")
    box = mailbox_id(alice, f"alice.martin@{DOMAIN}")
    bad = alice.post("/api/v1/messages", json={"from_mailbox": box, "to": ["193083819580858@patient.mssante.fr"],
                                               "subject": "x", "body": "y", "category": "patient"})
    assert bad.status_code == 422  # wrong INS key
    # Corsica: 2A counts as 19 in the key.
    r = alice.post("/api/v1/messages", json={"from_mailbox": box, "to": ["275082A00412359@patient.mssante.fr"],
                                             "subject": "Ne pas répondre", "body": "Information",
                                             "category": "patient", "no_reply": True})
    assert r.status_code == 201, r.text
    from monsisra.services import outbound

    _, data = gw.server.call(outbound.render, gw.server.core, r.json()["id"])
    assert b"X-MSS-MES: FIN" in data


def test_permanent_failure_puts_a_french_notice_in_the_senders_mailbox(gw):
    alice = gw.server.login("alice.martin")
    box = mailbox_id(alice, f"alice.martin@{DOMAIN}")
    subject = f"Vers une adresse inconnue {uuid.uuid4().hex[:6]}"
    r = alice.post("/api/v1/messages", json={"from_mailbox": box, "to": [f"inconnu@{OTHER_DOMAIN}"],
                                             "subject": subject, "body": "?"})
    sent = r.json()
    [notice] = wait_for(lambda: find(alice, box, f"Non distribué : {subject}"))
    body = alice.get(f"/api/v1/mailboxes/{box}/messages/{notice['id']}").json()["body"]
    assert f"inconnu@{OTHER_DOMAIN}" in body and "n'a pas pu être remis" in body and "550" in body
    assert notice["thread"]["id"] == sent["thread"]["id"]
    status = alice.get(f"/api/v1/messages/{sent['id']}/delivery").json()["items"][0]
    assert status["status"] == "failed" and "550" in status["detail"]
    # Outside the trust space: refused at once when writing, nothing queued (issue 11, item 13).
    subject = f"Hors espace {uuid.uuid4().hex[:6]}"
    r = alice.post("/api/v1/messages", json={"from_mailbox": box, "to": ["x@gmail.com"], "subject": subject,
                                             "body": "?"})
    assert r.status_code == 422 and "espace de confiance" in r.json()["invalid_addresses"][0]["reason"]


def test_temporary_failures_are_retried_then_expire_with_a_notice(gw):
    alice = gw.server.login("alice.martin")
    box = mailbox_id(alice, f"alice.martin@{DOMAIN}")
    subject = f"Boîte pleine {uuid.uuid4().hex[:6]}"
    sent = alice.post("/api/v1/messages", json={"from_mailbox": box, "to": [f"plein@{OTHER_DOMAIN}"],
                                                "subject": subject, "body": "?"}).json()

    def status():
        return alice.get(f"/api/v1/messages/{sent['id']}/delivery").json()["items"][0]

    # 452: kept in the outbox and retried with back-off (1 s, then 2 s here).
    wait_for(lambda: status()["status"] == "retrying" and status()["attempts"] >= 2)
    assert "452" in status()["detail"]
    admin = gw.server.login("admin")
    assert any(i["message_id"] == sent["id"] and i["status"] == "retrying"
               for i in admin.get("/api/v1/admin/outbox").json()["items"])
    assert not find(alice, box, f"Non distribué : {subject}")

    # Past the retry period, the next failure is final and the sender is told.
    async def age(core, message_id):
        import sqlalchemy as sa

        from monsisra.domain.clock import utcnow
        from monsisra.store.models import Message

        async with core.write() as tx:
            await tx.session.execute(sa.update(Message).where(Message.id == message_id).values(
                sent_at=utcnow() - timedelta(seconds=core.settings.outbound_retry_seconds + 60)))

    gw.server.call(age, gw.server.core, sent["id"])
    wait_for(lambda: status()["status"] == "failed", timeout=60)
    [notice] = wait_for(lambda: find(alice, box, f"Non distribué : {subject}"))
    body = alice.get(f"/api/v1/mailboxes/{box}/messages/{notice['id']}").json()["body"]
    assert "délai de remise dépassé" in body and "452" in body


def test_admin_trust_and_outbox_api(gw):
    admin = gw.server.login("admin")
    r = admin.post("/api/v1/admin/trust", json={"domains": ["Nouveau-Operateur.MSSante.fr"], "note": "test"})
    assert r.status_code == 201 and r.json()["added"] == ["nouveau-operateur.mssante.fr"]
    assert any(i["domain"] == "nouveau-operateur.mssante.fr" for i in admin.get("/api/v1/admin/trust").json()["items"])
    assert admin.post("/api/v1/admin/trust", json={"domains": ["pas un domaine"]}).status_code == 422
    assert admin.delete("/api/v1/admin/trust/nouveau-operateur.mssante.fr").status_code == 204
    assert admin.delete("/api/v1/admin/trust/nouveau-operateur.mssante.fr").status_code == 404
    outbox = admin.get("/api/v1/admin/outbox").json()["items"]
    assert any(i["status"] == "failed" for i in outbox) or outbox == []
    alice = gw.server.login("alice.martin")
    assert alice.get("/api/v1/admin/trust").status_code == 403
    assert alice.get("/api/v1/admin/outbox").status_code == 403


def _browser(gw, username: str) -> httpx.Client:
    c = httpx.Client(base_url=gw.server.base_url, timeout=30, follow_redirects=True)
    r = c.post("/connexion", data={"username": username, "password": "demo", "suite": "/boite"})
    assert r.status_code == 200, r.text[:500]
    return c


def test_admin_pages_list_domains_and_outbox_and_edit_the_trust_list(gw):
    admin = _browser(gw, "admin")
    with contextlib.closing(admin):
        page = admin.get("/admin/mssante")
        assert page.status_code == 200
        assert OTHER_DOMAIN in page.text and "File d'envoi" in page.text
        csrf = re.search(r'name="csrf-token" content="([^"]+)"', page.text).group(1)
        r = admin.post("/admin/mssante/domaines", data={"csrf": csrf, "domains": "page-ajout.mssante.fr", "note": "x"},
                       headers={"Origin": gw.server.base_url})
        assert r.status_code == 200 and "page-ajout.mssante.fr" in r.text and "Domaines ajoutés" in r.text
        r = admin.post("/admin/mssante/domaines/supprimer", data={"csrf": csrf, "domain": "page-ajout.mssante.fr"},
                       headers={"Origin": gw.server.base_url})
        assert r.status_code == 200 and "page-ajout.mssante.fr" not in r.text
        r = admin.post("/admin/mssante/domaines", data={"csrf": "faux", "domains": "x.mssante.fr"},
                       headers={"Origin": gw.server.base_url})
        assert r.status_code == 403
    alice = _browser(gw, "alice.martin")
    with contextlib.closing(alice):
        r = alice.get("/admin/mssante")
        assert r.status_code == 403 and "administrateurs" in r.text


def test_trust_cli(gw, tmp_path):
    env = {"MONSISRA_DATABASE_URL": gw.server.settings.database_url,
           "MONSISRA_DATA_DIR": str(gw.server.settings.data_dir), "PATH": "/usr/bin:/bin"}
    exe = str(Path(__import__("sys").executable).parent / "monsisra")
    listing = tmp_path / "domains.txt"
    listing.write_text("# opérateurs\nhopital-a.mssante.fr\nlabo-b.mssante.fr ; commentaire\n")
    r = subprocess.run([exe, "trust", "import", str(listing)], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([exe, "trust", "list"], env=env, capture_output=True, text=True, timeout=60)
    assert "hopital-a.mssante.fr" in r.stdout and "labo-b.mssante.fr" in r.stdout
    r = subprocess.run([exe, "trust", "remove", "hopital-a.mssante.fr"], env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0
    r = subprocess.run([exe, "trust", "add", "pas un domaine"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "invalide" in r.stderr
