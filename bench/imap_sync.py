"""IMAP full sync: ``mbsync`` pulls a mailbox of N messages with attachments (default 10,000)
into an empty Maildir, from MonSisra (``monsisra serve`` in a subprocess, SQLite) and from
Dovecot (``dovecot-imapd`` started here with a temporary configuration, serving the very same
messages from a Maildir), same run, both over STARTTLS. Reported: time, messages/s, the ratio
MonSisra/Dovecot speed, and the peak resident memory of each server during the sync.

The mailbox is filled as mail from another operator would be (raw MIME kept as a blob, the
message and its delivery rows), in batches, before the servers start.

Run: ``.venv/bin/python -m bench.imap_sync [--messages 10000]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bench.common import free_port, fresh_database, header, new_meta, uptime, write_results
from monsisra.config import Settings
from monsisra.domain.clock import utcnow
from monsisra.services import accounts, demo, messages
from monsisra.services.core import Core
from monsisra.store.models import Message

PASSWORD = "bench-password-imap"
USER = "bench.imap"


def make_raw(i: int, pdf: bytes) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"Laboratoire {i % 37} <labo{i % 37}@autre-operateur.mssante.fr>"
    msg["To"] = f"{USER}@bench.localhost"
    msg["Subject"] = f"Résultats d'analyses n° {i}"
    msg["Date"] = format_datetime(utcnow())
    msg["Message-ID"] = f"<bench-{i}@autre-operateur.mssante.fr>"
    msg.set_content(f"Bonjour,\n\nveuillez trouver les résultats du dossier {i}.\n\nCordialement\n" * 3)
    msg.add_attachment(pdf, maintype="application", subtype="pdf", filename=f"resultats-{i}.pdf")
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


async def fill(settings: Settings, n: int, maildir: Path) -> dict[str, Any]:
    core = Core(settings)
    await core.start()
    try:
        _account, mailbox = await accounts.create_account(core, accounts.NewAccount(
            username=USER, password=PASSWORD, first_name="Banc", last_name="IMAP"))
        pdf = demo.minimal_pdf("Résultats " + "x" * 2000) * 8  # ~ 20-30 KB attachment
        for sub in ("cur", "new", "tmp"):
            (maildir / sub).mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        total = 0
        batch = 500
        for first in range(0, n, batch):
            async with core.write() as tx:
                rows = []
                for i in range(first, min(n, first + batch)):
                    raw = make_raw(i, pdf)
                    total += len(raw)
                    digest, _ = core.blobs.put_bytes(raw)
                    (maildir / "cur" / f"{1700000000 + i}.M{i}P1.bench:2,").write_bytes(raw.replace(b"\r\n", b"\n"))
                    now = utcnow()
                    rows.append({"message_id": f"<bench-{i}@autre-operateur.mssante.fr>",
                                 "sender_address": f"labo{i % 37}@autre-operateur.mssante.fr",
                                 "sender_name": f"Laboratoire {i % 37}", "subject": f"Résultats d'analyses n° {i}",
                                 "body": "Bonjour", "preview": "Bonjour", "category": "result", "created_at": now,
                                 "sent_at": now, "has_attachments": True, "origin": "smtp", "raw_sha256": digest,
                                 "search_text": f"resultats {i}"})
                ids = list((await tx.session.execute(sa.insert(Message).returning(Message.id), rows)).scalars())
                await messages.place(tx, [messages.Placement(mid, mailbox.id, "in", "result", utcnow())
                                          for mid in ids])
        return {"messages": n, "bytes": total, "fill_s": round(time.perf_counter() - start, 1)}
    finally:
        await core.close()


class RssWatch:
    """Peak VmRSS of a process (and its children) sampled every 50 ms."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.peak_kb = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _rss(self) -> int:
        total = 0
        for pid in self.pids + [c for p in self.pids for c in _children(p)]:
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            except OSError:
                pass
        return total

    def _run(self) -> None:
        while not self.stop.is_set():
            self.peak_kb = max(self.peak_kb, self._rss())
            time.sleep(0.05)

    def __enter__(self) -> RssWatch:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def _children(pid: int) -> list[int]:
    try:
        out = []
        for task in Path(f"/proc/{pid}/task").iterdir():
            text = (task / "children").read_text().split()
            out += [int(c) for c in text]
        return out + [g for c in out for g in _children(c)]
    except OSError:
        return []


def wait_port(port: int, timeout: float = 120) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"port {port} did not open")


def mbsync(port: int, user: str, password: str, cert: Path, target: Path, work: Path) -> float:
    target.mkdir(parents=True)
    rc = work / f"mbsyncrc-{port}"
    rc.write_text(f"""IMAPAccount a
Host 127.0.0.1
Port {port}
User {user}
Pass {password}
SSLType STARTTLS
CertificateFile {cert}
PipelineDepth 50

IMAPStore r
Account a

MaildirStore l
Path {target}/
Inbox {target}/INBOX

Channel c
Far :r:
Near :l:
Patterns INBOX
Create Near
Sync Pull
SyncState *
""")
    start = time.perf_counter()
    done = subprocess.run(["mbsync", "-c", str(rc), "-a"], capture_output=True, text=True, timeout=3600)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"mbsync failed: {done.stderr[-2000:]}")
    return elapsed


def count(target: Path) -> int:
    return sum(1 for sub in ("cur", "new") for _ in (target / "INBOX" / sub).iterdir())


def start_dovecot(work: Path, maildir: Path, cert: Path, key: Path, port: int) -> subprocess.Popen:
    conf = work / "dovecot.conf"
    (work / "run").mkdir()
    conf.write_text(f"""protocols = imap
listen = 127.0.0.1
base_dir = {work}/run
state_dir = {work}/state
log_path = {work}/dovecot.log
ssl = required
ssl_cert = <{cert}
ssl_key = <{key}
ssl_min_protocol = TLSv1.2
disable_plaintext_auth = yes
auth_mechanisms = plain
first_valid_uid = 100
mail_location = maildir:{maildir}
passdb {{
  driver = static
  args = password={PASSWORD}
}}
userdb {{
  driver = static
  args = uid=dovecot gid=dovecot home={work}/home
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
  chroot =
}}
service anvil {{
  chroot =
}}
""")
    (work / "state").mkdir()
    (work / "home").mkdir()
    # Dovecot's mail processes run as its own user: it must reach and own the mail.
    subprocess.run(["chown", "-R", "dovecot:dovecot", str(maildir), str(work / "home")], check=True)
    for parent in (maildir.parent, work):
        parent.chmod(0o711)
    proc = subprocess.Popen(["dovecot", "-F", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_port(port)
    return proc


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=10_000)
    args = ap.parse_args()
    for tool in ("mbsync", "dovecot"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is missing: apt-get install isync dovecot-imapd")
    meta = new_meta()
    with tempfile.TemporaryDirectory(prefix="bench-imap-") as tmp_name:
        tmp = Path(tmp_name)
        with fresh_database("sqlite", tmp) as url:
            data = tmp / "data"
            settings = Settings(database_url=url, data_dir=data, domain="bench.localhost", smtp_enabled=False,
                                secret_key="bench-" + "k" * 40, run_workers=False)
            maildir = tmp / "source-maildir"
            filled = asyncio.run(fill(settings, args.messages, maildir))
            print(f"filled {filled}", flush=True)
            from monsisra.gateway.tls import certificate_paths

            cert, key = certificate_paths(settings)
            imap_port, http_port = free_port(), free_port()
            env = {**os.environ, "MONSISRA_DATABASE_URL": url, "MONSISRA_DATA_DIR": str(data),
                   "MONSISRA_DOMAIN": "bench.localhost", "MONSISRA_SMTP_ENABLED": "false",
                   "MONSISRA_SECRET_KEY": "bench-" + "k" * 40, "MONSISRA_IMAP_PORT": str(imap_port),
                   "MONSISRA_IMAPS_PORT": "0", "MONSISRA_SUBMISSION_PORT": "0", "MONSISRA_SUBMISSIONS_PORT": "0",
                   "MONSISRA_HTTP_PORT": str(http_port), "MONSISRA_HTTPS_PORT": "0", "MONSISRA_RUN_WORKERS": "false"}
            server = subprocess.Popen([sys.executable, "-m", "monsisra.cli", "serve"], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            results: dict[str, Any] = {}
            try:
                wait_port(imap_port)
                with RssWatch([server.pid]) as watch:
                    t = mbsync(imap_port, USER, PASSWORD, cert, tmp / "out-monsisra", tmp)
                results["monsisra"] = {"seconds": round(t, 2), "messages": count(tmp / "out-monsisra"),
                                       "peak_rss_mb": round(watch.peak_kb / 1024, 1)}
                # A second full sync: the rendering and shape caches are warm.
                with RssWatch([server.pid]) as watch:
                    t = mbsync(imap_port, USER, PASSWORD, cert, tmp / "out-monsisra-2", tmp)
                results["monsisra_again"] = {"seconds": round(t, 2), "messages": count(tmp / "out-monsisra-2"),
                                             "peak_rss_mb": round(watch.peak_kb / 1024, 1)}
            finally:
                server.terminate()
                server.wait(30)
            dport = free_port()
            (tmp / "dovecot").mkdir()
            dovecot = start_dovecot(tmp / "dovecot", maildir, cert, key, dport)
            try:
                with RssWatch([dovecot.pid]) as watch:
                    try:
                        t = mbsync(dport, USER, PASSWORD, cert, tmp / "out-dovecot", tmp)
                    except RuntimeError:
                        print((tmp / "dovecot" / "dovecot.log").read_text()[-3000:])
                        raise
                results["dovecot"] = {"seconds": round(t, 2), "messages": count(tmp / "out-dovecot"),
                                      "peak_rss_mb": round(watch.peak_kb / 1024, 1)}
            finally:
                dovecot.terminate()
                dovecot.wait(30)
    meta["load_after"] = uptime()
    n = args.messages
    for r in results.values():
        r["msgs_per_s"] = round(r["messages"] / r["seconds"], 1)
    ratio = results["monsisra"]["msgs_per_s"] / results["dovecot"]["msgs_per_s"]
    ratio_again = results["monsisra_again"]["msgs_per_s"] / results["dovecot"]["msgs_per_s"]
    md = header(f"IMAP full sync with mbsync ({n} messages with a PDF attachment)", meta)
    md += [f"Mailbox: {n} messages, {filled['bytes'] / 1e6:.0f} MB of MIME, each with a PDF attachment; "
           "mbsync (isync) `Sync Pull` of INBOX into an empty Maildir over STARTTLS, PipelineDepth 50.", "",
           "| server | time (s) | messages | msgs/s | peak server RSS (MB) |", "|---|---|---|---|---|"]
    for name, label in (("monsisra", "MonSisra (first sync)"), ("monsisra_again", "MonSisra (second sync)"),
                        ("dovecot", "Dovecot 2.3 (Maildir)")):
        r = results[name]
        md.append(f"| {label} | {r['seconds']} | {r['messages']} | {r['msgs_per_s']} | {r['peak_rss_mb']} |")
    md += ["", f"Ratio MonSisra / Dovecot speed: **{ratio:.2f}×** (first sync), {ratio_again:.2f}× (second) — "
           "target ≥ 0.5×.", "",
           "MonSisra serves each message from its stored raw MIME file in slices (the server's memory stays "
           "flat whatever the mailbox size); a message's MIME shape is parsed only when a client asks "
           "for its structure or a part (then kept beside the file)."]
    write_results("imap_sync", meta, md, {"results": results, "ratio": ratio, "ratio_again": ratio_again,
                                          "fill": filled})
    print("\n".join(md))


if __name__ == "__main__":
    main()
