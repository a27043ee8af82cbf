"""SMTP submission throughput: messages/s over 10 concurrent authenticated connections (STARTTLS),
each message a letter with a 100 KB PDF, from one local account to another, against
``monsisra serve`` in a subprocess (SQLite). Each ``250`` means stored: message, attachment blob
(fsynced), deliveries, copy in Envoyés. Beside it: the gateway's inbound figure from
``bench/results/smtp.md`` when present.

Run: ``.venv/bin/python -m bench.submission [--messages 500] [--connections 10]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import smtplib
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from email.message import EmailMessage
from pathlib import Path

from bench.common import RESULTS, free_port, fresh_database, header, new_meta, uptime, write_results
from bench.imap_sync import RssWatch, wait_port
from monsisra.config import Settings
from monsisra.services import accounts
from monsisra.services.core import Core

PASSWORD = "bench-password-smtp"


async def make_accounts(settings: Settings) -> tuple[str, str]:
    core = Core(settings)
    await core.start()
    try:
        _, sender = await accounts.create_account(core, accounts.NewAccount(
            username="bench.sender", password=PASSWORD, first_name="Banc", last_name="Envoi"))
        _, rcpt = await accounts.create_account(core, accounts.NewAccount(
            username="bench.rcpt", password=PASSWORD, first_name="Banc", last_name="Reception"))
        return sender.address, rcpt.address
    finally:
        await core.close()


def letter(sender: str, rcpt: str, i: int, pdf: bytes) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = rcpt
    msg["Subject"] = f"Compte rendu n° {i}"
    msg.set_content("Cher confrère,\nveuillez trouver le compte rendu ci-joint.\n")
    msg.add_attachment(pdf, maintype="application", subtype="pdf", filename=f"cr-{i}.pdf")
    return msg


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=500)
    ap.add_argument("--connections", type=int, default=10)
    args = ap.parse_args()
    meta = new_meta()
    pdf = b"%PDF-1.4\n" + os.urandom(100 * 1024) + b"\n%%EOF\n"
    with tempfile.TemporaryDirectory(prefix="bench-sub-") as tmp_name, \
            fresh_database("sqlite", Path(tmp_name)) as url:
        data = Path(tmp_name) / "data"
        settings = Settings(database_url=url, data_dir=data, domain="bench.localhost", smtp_enabled=False,
                            secret_key="bench-" + "k" * 40, run_workers=False)
        sender, rcpt = asyncio.run(make_accounts(settings))
        port, http_port = free_port(), free_port()
        env = {**os.environ, "MONSISRA_DATABASE_URL": url, "MONSISRA_DATA_DIR": str(data),
               "MONSISRA_DOMAIN": "bench.localhost", "MONSISRA_SMTP_ENABLED": "false",
               "MONSISRA_SECRET_KEY": "bench-" + "k" * 40, "MONSISRA_IMAP_PORT": "0", "MONSISRA_IMAPS_PORT": "0",
               "MONSISRA_SUBMISSION_PORT": str(port), "MONSISRA_SUBMISSIONS_PORT": "0",
               "MONSISRA_HTTP_PORT": str(http_port), "MONSISRA_HTTPS_PORT": "0", "MONSISRA_RUN_WORKERS": "false"}
        server = subprocess.Popen([sys.executable, "-m", "monsisra.cli", "serve"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_port(port)
            ctx = ssl.create_default_context(cafile=str(data / "tls" / "dev-cert.pem"))
            ctx.check_hostname = False
            per = args.messages // args.connections
            errors: list[str] = []
            latencies: list[float] = []

            def worker(w: int) -> None:
                try:
                    with smtplib.SMTP("127.0.0.1", port, timeout=120) as c:
                        c.starttls(context=ctx)
                        c.login("bench.sender", PASSWORD)
                        for i in range(per):
                            t0 = time.perf_counter()
                            c.send_message(letter(sender, rcpt, w * per + i, pdf))
                            latencies.append(time.perf_counter() - t0)
                except Exception as exc:  # reported, not hidden
                    errors.append(repr(exc))

            threads = [threading.Thread(target=worker, args=(w,)) for w in range(args.connections)]
            with RssWatch([server.pid]) as watch:
                start = time.perf_counter()
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                elapsed = time.perf_counter() - start
        finally:
            server.terminate()
            server.wait(30)
    meta["load_after"] = uptime()
    sent = len(latencies)
    latencies.sort()
    result = {"messages": sent, "connections": args.connections, "seconds": round(elapsed, 2),
              "msgs_per_s": round(sent / elapsed, 1), "p50_ms": round(latencies[len(latencies) // 2] * 1000, 1),
              "p95_ms": round(latencies[int(len(latencies) * 0.95)] * 1000, 1), "errors": errors[:5],
              "peak_rss_mb": round(watch.peak_kb / 1024, 1)}
    inbound = RESULTS / "smtp.md"
    md = header("SMTP submission throughput (10 connections, 100 KB PDF)", meta)
    md += [f"{sent} letters with a 100 KB PDF, {args.connections} concurrent STARTTLS + AUTH PLAIN connections, "
           "local recipient (SQLite, one process).", "",
           "| messages | seconds | msgs/s | p50 (ms) | p95 (ms) | peak server RSS (MB) | errors |",
           "|---|---|---|---|---|---|---|",
           f"| {sent} | {result['seconds']} | {result['msgs_per_s']} | {result['p50_ms']} | {result['p95_ms']} | "
           f"{result['peak_rss_mb']} | {len(errors)} |", "",
           "Each reply `250` is given once the message, its attachment (blob fsynced), the recipient's delivery "
           "and the copy in Envoyés are committed — the web page's send path."]
    if inbound.exists():
        md += ["", f"The gateway's inbound figure (other operators → MonSisra): see `{inbound.name}`."]
    write_results("submission", meta, md, {"result": result})
    print("\n".join(md))


if __name__ == "__main__":
    main()
