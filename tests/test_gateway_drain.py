"""A stopping ``monsisra serve`` (SIGTERM) lets an SMTP transaction in progress finish.

The message being sent when the stop comes gets its ``250`` and is stored; a session with no
transaction gets ``421`` at once (the inbound gateway and the submission port alike); IMAP
sessions, waiting for a command or in IDLE, get ``* BYE``; new connections are refused; the
process then exits cleanly.
"""

from __future__ import annotations

import imaplib
import os
import signal
import smtplib
import socket
import uuid
from email.message import EmailMessage

from tests.gateway_support import OTHER_DOMAIN, client_ssl
from tests.test_gateway_crash import DOMAIN, Serve, _subjects, serve_env


def _letter(subject: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"secretariat@{OTHER_DOMAIN}"
    msg["To"] = f"crash.test@{DOMAIN}"
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{uuid.uuid4().hex}@{OTHER_DOMAIN}>"
    msg.set_content("Compte rendu de consultation.\n" * 400)
    msg.add_attachment(os.urandom(30_000), maintype="application", subtype="pdf", filename="cr.pdf")
    return msg.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _session(port: int, ctx) -> smtplib.SMTP:
    c = smtplib.SMTP("127.0.0.1", port, timeout=60)
    c.ehlo("client.test")
    c.starttls(context=ctx)
    c.ehlo("client.test")
    return c


def test_sigterm_lets_the_transaction_in_progress_end(backend, tmp_path):
    with serve_env(backend, tmp_path) as (env, pki):
        http_port, smtp_port = int(env["MONSISRA_HTTP_PORT"]), int(env["MONSISRA_SMTP_PORT"])
        imaps_port, submission_port = int(env["MONSISRA_IMAPS_PORT"]), int(env["MONSISRA_SUBMISSION_PORT"])
        serve = Serve(env, tmp_path / "serve.log")
        serve.start()
        ctx = client_ssl(pki)
        subject = f"arret-{uuid.uuid4().hex[:8]}"
        raw = _letter(subject)
        try:
            idle = _session(smtp_port, ctx)
            submitting = _session(submission_port, ctx)
            submitting.login("crash.test", "secret-pass")
            reading = imaplib.IMAP4_SSL("127.0.0.1", imaps_port, ssl_context=ctx, timeout=60)
            reading.login("crash.test", "secret-pass")
            reading.select("INBOX")
            idling = imaplib.IMAP4_SSL("127.0.0.1", imaps_port, ssl_context=ctx, timeout=60)
            idling.login("crash.test", "secret-pass")
            idling.select("INBOX")
            idling.send(b"I1 IDLE\r\n")
            assert idling.readline().startswith(b"+")
            busy = _session(smtp_port, ctx)
            assert busy.mail(f"secretariat@{OTHER_DOMAIN}")[0] == 250
            assert busy.rcpt(f"crash.test@{DOMAIN}")[0] == 250
            busy.putcmd("data")
            assert busy.getreply()[0] == 354
            half = len(raw) // 2
            busy.send(raw[:half])

            assert serve.proc is not None
            serve.proc.send_signal(signal.SIGTERM)

            # The idle session is told at once; the listener no longer accepts.
            code, text = idle.getreply()
            assert code == 421, text
            assert b"arret" in text
            assert submitting.getreply()[0] == 421
            assert b"* BYE" in reading.readline()
            assert b"* BYE" in idling.readline()
            with socket.socket() as probe:
                probe.settimeout(5)
                assert probe.connect_ex(("127.0.0.1", smtp_port)) != 0, "still accepting while stopping"

            # The message in progress completes and is acknowledged, then the session is closed.
            busy.send(raw[half:] + b"\r\n.\r\n")
            code, text = busy.getreply()
            assert code == 250, text
            assert busy.getreply()[0] == 421
            assert serve.proc.wait(timeout=60) == 0, (tmp_path / "serve.log").read_text()[-2000:]

            serve.start()
            assert subject in _subjects(f"http://127.0.0.1:{http_port}")
        finally:
            serve.stop()
