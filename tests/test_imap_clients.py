"""Real mail clients against MonSisra (issue 16): ``mbsync`` (Debian isync) syncs the demo
mailbox into a Maildir, ``mutt`` reads a message and saves one to Archivés, ``curl`` speaks imap:// and smtp://."""

from __future__ import annotations

import os
import pty
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.imap_support import DOMAIN, imap, mailbox_id, new_account
from tests.support import unique

ALICE = f"alice.martin@{DOMAIN}"


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed (Debian package: isync / mutt / curl)")
    return path


def cert_of(mail_server) -> Path:
    return mail_server.settings.data_dir / "tls" / "dev-cert.pem"


def exists_of(mail_server, folder: str) -> int:
    c = imap(mail_server)
    typ, data = c.select(folder, readonly=True)
    c.logout()
    assert typ == "OK"
    return int(data[0])


def test_mbsync_full_sync(mail_server, tmp_path):
    mbsync = need("mbsync")
    maildir = tmp_path / "Mail"
    maildir.mkdir()
    rc = tmp_path / "mbsyncrc"
    rc.write_text(f"""IMAPAccount monsisra
Host 127.0.0.1
Port {mail_server.settings.imap_port}
User alice.martin
Pass demo
SSLType STARTTLS
CertificateFile {cert_of(mail_server)}

IMAPStore remote
Account monsisra

MaildirStore local
Path {maildir}/
Inbox {maildir}/INBOX
SubFolders Verbatim

Channel all
Far :remote:
Near :local:
Patterns *
Create Near
Sync Pull
SyncState *
""")
    done = subprocess.run([mbsync, "-c", str(rc), "-a"], capture_output=True, text=True, timeout=300)
    if done.returncode != 0:  # the protocol trace, to see what the client could not read
        trace = subprocess.run([mbsync, "-D", "-c", str(rc), "-a"], capture_output=True, text=True, timeout=300)
        lines = (trace.stdout + trace.stderr).splitlines()
        bad = [i for i, ln in enumerate(lines) if "bogus" in ln or "error" in ln.lower()]
        context = "\n".join(lines[max(0, bad[0] - 15):bad[0] + 3]) if bad else "\n".join(lines[-40:])
        raise AssertionError(f"{done.stderr}\n{context}")
    for folder, local in (("INBOX", "INBOX"), ("Envoy&AOk-s", "Envoy&AOk-s"), ("Archiv&AOk-s", "Archiv&AOk-s")):
        files = [p for sub in ("cur", "new") for p in (maildir / local / sub).iterdir()]
        assert len(files) == exists_of(mail_server, folder), folder
    assert exists_of(mail_server, "INBOX") > 5
    # A second run finds nothing new and changes nothing.
    again = subprocess.run([mbsync, "-c", str(rc), "-a"], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr


def run_in_pty(argv: list[str], timeout: float = 60) -> bytes:
    """A terminal program (mutt) run to its end in a pseudo-terminal; its screen output."""
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover (the child)
        os.environ["TERM"] = "xterm"
        os.execvp(argv[0], argv)
    out = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.5)
            if ready:
                try:
                    data = os.read(fd, 65536)
                except OSError:
                    break
                if not data:
                    break
                out += data
            if os.waitpid(pid, os.WNOHANG)[0]:
                break
    finally:
        try:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        except (ChildProcessError, ProcessLookupError):
            pass
        os.close(fd)
    return out


def test_mutt_reads_the_inbox(mail_server, tmp_path):
    mutt = need("mutt")
    subject = unique("Pour mutt ")
    bruno = mail_server.login("bruno.petit")
    r = bruno.post("/api/v1/messages", json={"from_mailbox": mailbox_id(bruno, f"bruno.petit@{DOMAIN}"),
                                             "to": [ALICE], "subject": subject, "body": "Lu par mutt.",
                                             "category": "letter"})
    assert r.status_code == 201
    out = tmp_path / "message.txt"
    rc = tmp_path / "muttrc"
    rc.write_text(f"""set imap_user=alice.martin
set imap_pass=demo
set ssl_starttls=yes
set ssl_force_tls=yes
set certificate_file={cert_of(mail_server)}
set ssl_verify_host=no
set folder=imap://127.0.0.1:{mail_server.settings.imap_port}/
set spoolfile=+INBOX
set header_cache=
set mail_check=0
set pipe_decode=yes
set wait_key=no
set sort=date
set record=
""")
    # The newest message (sorted by date, last), piped to a file, then quit.
    screen = run_in_pty([mutt, "-n", "-F", str(rc), "-e",
                         f'push "<last-entry><pipe-message>cat > {out}<enter><quit>"'])
    assert out.exists(), screen[-2000:]
    text = out.read_text()
    assert subject in text and "Lu par mutt." in text
    assert b"Mutt: =INBOX" in screen


def test_curl_imap_and_smtp(mail_server, tmp_path):
    curl = need("curl")
    port = mail_server.settings.imap_port
    common = [curl, "-sS", "--ssl-reqd", "--cacert", str(cert_of(mail_server)), "-u", "alice.martin:demo"]
    listing = subprocess.run([*common, f"imap://127.0.0.1:{port}/"], capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0, listing.stderr
    assert '"INBOX"' in listing.stdout and "\\Sent" in listing.stdout
    first = subprocess.run([*common, f"imap://127.0.0.1:{port}/INBOX;MAILINDEX=1"], capture_output=True,
                           timeout=60)
    assert first.returncode == 0 and b"Subject:" in first.stdout
    subject = unique("Par curl ")
    mail = tmp_path / "lettre.eml"
    mail.write_bytes(f"From: Dr Alice MARTIN <{ALICE}>\r\nTo: bruno.petit@{DOMAIN}\r\nSubject: {subject}\r\n"
                     f"\r\nEnvoye avec curl.\r\n".encode())
    sent = subprocess.run([*common, f"smtp://127.0.0.1:{mail_server.settings.submission_port}",
                           "--mail-from", ALICE, "--mail-rcpt", f"bruno.petit@{DOMAIN}", "-T", str(mail)],
                          capture_output=True, text=True, timeout=60)
    assert sent.returncode == 0, sent.stderr
    bruno = mail_server.login("bruno.petit")
    r = bruno.get(f"/api/v1/mailboxes/{mailbox_id(bruno, f'bruno.petit@{DOMAIN}')}/messages")
    assert any(i["subject"] == subject for i in r.json()["items"])
    # Implicit TLS (imaps://), and a From that is not hers refused (curl exits non-zero).
    tls = subprocess.run([*common, f"imaps://127.0.0.1:{mail_server.settings.imaps_port}/INBOX", "-X",
                          "STATUS INBOX (MESSAGES)"], capture_output=True, text=True, timeout=60)
    assert tls.returncode == 0 and "MESSAGES" in tls.stdout, tls.stderr
    refused = subprocess.run([*common, f"smtps://127.0.0.1:{mail_server.settings.submissions_port}",
                              "--mail-from", f"bruno.petit@{DOMAIN}", "--mail-rcpt", ALICE, "-T", str(mail)],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0


def test_mutt_save_to_archives_archives_the_message(mail_server, tmp_path):
    """mutt's « save » (COPY into Archivés, then \\Deleted and EXPUNGE of the source) archives
    the message: it is in Archivés once, no longer in INBOX, and not in the bin."""
    mutt = need("mutt")
    username, address, box = new_account(mail_server)
    subject = unique("A archiver par mutt ")
    bruno = mail_server.login("bruno.petit")
    r = bruno.post("/api/v1/messages", json={"from_mailbox": mailbox_id(bruno, f"bruno.petit@{DOMAIN}"),
                                             "to": [address], "subject": subject, "body": "A ranger.",
                                             "category": "letter"})
    assert r.status_code == 201
    rc = tmp_path / "muttrc"
    rc.write_text(f"""set imap_user={username}
set imap_pass=secret-pass-16
set ssl_starttls=yes
set ssl_force_tls=yes
set certificate_file={cert_of(mail_server)}
set ssl_verify_host=no
set folder=imaps://127.0.0.1:{mail_server.settings.imaps_port}/
set spoolfile=+INBOX
set header_cache=
set mail_check=0
set wait_key=no
set charset=utf-8
set confirmappend=no
set confirmcreate=no
set delete=yes
set record=
""")
    # Save the only message to =Archivés (mutt writes it Archiv&AOk-s), write the mailbox, quit.
    screen = run_in_pty([mutt, "-n", "-F", str(rc), "-e",
                         'push "<first-entry><save-message>=Archivés<enter><sync-mailbox><quit>"'])
    api = mail_server.login(username, "secret-pass-16")

    def subjects(view: str) -> list[str]:
        got = api.get(f"/api/v1/mailboxes/{box}/messages", params={"view": view, "limit": 50})
        assert got.status_code == 200, got.text
        return [i["subject"] for i in got.json()["items"]]

    assert subjects("archived") == [subject], (subjects("inbox"), subjects("trash"), screen[-6000:])
    assert subject not in subjects("inbox") and subject not in subjects("trash")
    assert exists_of_user(mail_server, username, "INBOX") == 0
    assert exists_of_user(mail_server, username, "Archiv&AOk-s") == 1


def exists_of_user(mail_server, username: str, folder: str) -> int:
    c = imap(mail_server, username, "secret-pass-16")
    typ, data = c.select(folder, readonly=True)
    c.logout()
    assert typ == "OK"
    return int(data[0])
