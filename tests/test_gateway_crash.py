"""Durability of ``250``: SIGKILL ``monsisra serve`` during a burst of 200 inbound messages.

After a restart every message that got ``250`` is there; when the other operator retries the
whole burst (as it does for unacknowledged mail), each message is stored exactly once.
"""

from __future__ import annotations

import contextlib
import email
import os
import signal
import smtplib
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import httpx

from tests.gateway_support import OTHER_DOMAIN, PKI, client_ssl, smtp_send, wait_for
from tests.support import free_port, fresh_database

DOMAIN = "monsisra.localhost"
BURST = 200
EXE = str(Path(sys.executable).parent / "monsisra")


def _mail(i: int, run: str) -> tuple[str, bytes]:
    msg = EmailMessage()
    msg["From"] = f"secretariat@{OTHER_DOMAIN}"
    msg["To"] = f"crash.test@{DOMAIN}"
    subject = f"burst-{run}-{i:03d}"
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{run}.{i}@{OTHER_DOMAIN}>"
    msg.set_content(f"Message {i} de la rafale.\n" + "Ligne de texte.\n" * 200)
    # Each letter carries its own PDF, as real ones do: its blob must be on disk before the 250.
    msg.add_attachment(b"%PDF-1.4\n" + os.urandom(30_000) + b"\n%%EOF\n", maintype="application", subtype="pdf",
                       filename=f"cr-{i:03d}.pdf")
    return subject, msg.as_bytes()


class Serve:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log = env, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        out = self.log.open("ab")
        self.proc = subprocess.Popen([EXE, "serve"], env=self.env, stdout=out, stderr=out)
        port = int(self.env["MONSISRA_SMTP_PORT"])

        def up() -> bool:
            assert self.proc and self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                with smtplib.SMTP("127.0.0.1", port, timeout=5) as c:
                    return c.noop()[0] == 250
            except OSError:
                return False

        wait_for(up, timeout=90)

    def kill(self) -> None:
        assert self.proc
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def _cli(env: dict[str, str], *args: str) -> str:
    r = subprocess.run([EXE, *args], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout + r.stderr


def _subjects(base_url: str) -> list[str]:
    with httpx.Client(base_url=base_url, timeout=30) as c:
        token = c.post("/api/v1/auth/token", data={"username": "crash.test", "password": "secret-pass"}).json()[
            "access_token"]
        c.headers["Authorization"] = f"Bearer {token}"
        box = c.get("/api/v1/mailboxes").json()[0]["id"]
        out, cursor = [], None
        for _ in range(20):
            params = {"view": "all", "limit": 200, **({"cursor": cursor} if cursor else {})}
            page = c.get(f"/api/v1/mailboxes/{box}/messages", params=params).json()
            out += [m["subject"] for m in page["items"]]
            cursor = page["next_cursor"]
            if not cursor:
                break
        return out


def _pdfs_of(base_url: str, subjects: set[str]) -> dict[str, bytes]:
    """subject → the bytes of its attachment, for the stored messages with these subjects."""
    with httpx.Client(base_url=base_url, timeout=30) as c:
        token = c.post("/api/v1/auth/token", data={"username": "crash.test", "password": "secret-pass"}).json()[
            "access_token"]
        c.headers["Authorization"] = f"Bearer {token}"
        box = c.get("/api/v1/mailboxes").json()[0]["id"]
        out, cursor = {}, None
        for _ in range(20):
            params = {"view": "all", "limit": 200, **({"cursor": cursor} if cursor else {})}
            page = c.get(f"/api/v1/mailboxes/{box}/messages", params=params).json()
            for m in page["items"]:
                if m["subject"] in subjects:
                    detail = c.get(f"/api/v1/mailboxes/{box}/messages/{m['id']}").json()
                    for a in detail["attachments"]:
                        got = c.get(f"/api/v1/attachments/{a['id']}")
                        assert got.status_code == 200, got.text
                        out[m["subject"]] = got.content
            cursor = page["next_cursor"]
            if not cursor:
                break
        return out


def _children_of(tmp_path) -> list[int]:
    """Processes still running with this test's data directory on their command line."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "turnserver" in cmdline and str(tmp_path) in cmdline:
            found.append(int(pid))
    return found


def _descendants(pid: int) -> list[int]:
    """Processes started by ``pid`` (its pools' helpers, coturn), at any depth."""
    parents = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            parents[int(entry)] = int(open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    out, todo = [], [pid]
    while todo:
        parent = todo.pop()
        kids = [c for c, p in parents.items() if p == parent]
        out += kids
        todo += kids
    return out


def _running(pid: int) -> bool:
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except OSError:
        return False


@contextlib.contextmanager
def serve_env(backend: str, tmp_path: Path) -> Iterator[tuple[dict[str, str], PKI]]:
    """The environment of a ``monsisra serve`` subprocess on a fresh database: every listener on
    a free port, the gateway's certificate from a test PKI, account ``crash.test`` and the other
    operator trusted."""
    pki = PKI.create(tmp_path / "pki")
    with fresh_database(backend, tmp_path / "db") as url:
        yield _env(tmp_path, url, pki), pki


def _env(tmp_path: Path, url: str, pki: PKI) -> dict[str, str]:
    cert, key = pki.issue("monsisra", ["localhost", DOMAIN, "127.0.0.1"])
    ports = {name: str(free_port()) for name in ("HTTP", "HTTPS", "SMTP", "IMAP", "IMAPS", "SUBMISSION",
                                                  "SUBMISSIONS")}
    env = {**os.environ, **{f"MONSISRA_{name}_PORT": port for name, port in ports.items()},
           "MONSISRA_DATABASE_URL": url, "MONSISRA_DATA_DIR": str(tmp_path / "data"),
           "MONSISRA_DOMAIN": DOMAIN, "MONSISRA_TLS_CERT": str(cert), "MONSISRA_TLS_KEY": str(key),
           "MONSISRA_TLS_TRUST": str(pki.ca_cert), "MONSISRA_RUN_WORKERS": "false",
           "MONSISRA_SECRET_KEY": "crash-test-secret-" + "x" * 32}
    _cli(env, "account", "create", "crash.test", "--first-name", "Crash", "--last-name", "Test",
         "--password", "secret-pass")
    _cli(env, "trust", "add", OTHER_DOMAIN)
    return env


def test_sigkill_during_a_burst_loses_no_acknowledged_message(backend, tmp_path):
    with serve_env(backend, tmp_path) as (env, pki):
        http_port, smtp_port = int(env["MONSISRA_HTTP_PORT"]), int(env["MONSISRA_SMTP_PORT"])
        serve = Serve(env, tmp_path / "serve.log")
        serve.start()
        run = uuid.uuid4().hex[:8]
        mails = [_mail(i, run) for i in range(BURST)]
        acked: list[str] = []
        lock = threading.Lock()
        ctx = client_ssl(pki)
        # A letter large enough to be parsed in a helper process (over 2 MB): the pool is running at the kill.
        big = EmailMessage()
        big["From"], big["To"], big["Subject"] = f"secretariat@{OTHER_DOMAIN}", f"crash.test@{DOMAIN}", f"gros-{run}"
        big.set_content("Compte rendu.\n" * 6000)
        big.add_attachment(os.urandom(2_200_000), maintype="application", subtype="pdf", filename="scan.pdf")
        assert smtp_send(smtp_port, f"secretariat@{OTHER_DOMAIN}", [f"crash.test@{DOMAIN}"], big.as_bytes(),
                         ctx)[0] == 250

        def sender(worker: int) -> None:
            for i in range(worker, BURST, 10):
                subject, raw = mails[i]
                try:
                    code, _ = smtp_send(smtp_port, f"secretariat@{OTHER_DOMAIN}", [f"crash.test@{DOMAIN}"], raw, ctx)
                except (OSError, smtplib.SMTPException):
                    return  # the server died under us
                if code == 250:
                    with lock:
                        acked.append(subject)

        try:
            threads = [threading.Thread(target=sender, args=(w,)) for w in range(10)]
            for t in threads:
                t.start()
            wait_for(lambda: len(acked) >= 40, timeout=120, interval=0.01)
            assert serve.proc is not None
            started = _descendants(serve.proc.pid)
            assert started, "the parsing helpers run"
            serve.kill()
            # What serve started (coturn, when installed; the parsing helpers) does not outlive it.
            wait_for(lambda: not _children_of(tmp_path), timeout=30, interval=0.1)
            wait_for(lambda: not [p for p in started if _running(p)], timeout=30, interval=0.1)
            for t in threads:
                t.join(timeout=120)
            killed_after = len(acked)
            assert 40 <= killed_after < BURST, "the kill must land in the middle of the burst"
            print(f"SIGKILL after {killed_after} acknowledged messages")

            serve.start()
            subjects = _subjects(f"http://127.0.0.1:{http_port}")
            burst = [s for s in subjects if s.startswith(f"burst-{run}-")]
            assert set(acked) <= set(burst), f"lost after 250: {sorted(set(acked) - set(burst))[:5]}"
            assert len(burst) == len(set(burst)), "a message was stored twice"
            # Every acknowledged letter's PDF is there, byte for byte.
            pdfs = _pdfs_of(f"http://127.0.0.1:{http_port}", set(acked))
            sent = {s: email.message_from_bytes(raw).get_payload()[1].get_payload(decode=True) for s, raw in mails}
            assert {s: pdfs.get(s) for s in acked} == {s: sent[s] for s in acked}

            # The other operator retries everything it is unsure of: still one copy each.
            for _subject, raw in mails:
                code, _ = smtp_send(smtp_port, f"secretariat@{OTHER_DOMAIN}", [f"crash.test@{DOMAIN}"], raw, ctx)
                assert code == 250
            burst = [s for s in _subjects(f"http://127.0.0.1:{http_port}") if s.startswith(f"burst-{run}-")]
            assert sorted(burst) == sorted(s for s, _ in mails)
        finally:
            serve.stop()
            time.sleep(0.2)
