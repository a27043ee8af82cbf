"""Where the inbound gateway's CPU goes, without TLS or SMTP: ``services.inbound.receive`` called
in process (10 concurrent senders, SQLite or PostgreSQL, the bench letter with its 100 KB PDF), whole, then with
one part of the work left out, to attribute the CPU per message. For tuning, not a figure to
publish: the variants that skip work break durability on purpose.

Run (under the bench lock): ``.venv/bin/python -m bench.smtp_receive_parts [--messages 120] [--repeat 2]
[--backend sqlite|postgres] [--variants base,nofsync]`` (PostgreSQL: a fresh database on
``MONSISRA_TEST_POSTGRES_URL``'s server, dropped after each measurement).

Variants: ``base`` (everything), ``noraw`` (the raw form is not written to the database),
``nofsync`` (``os.fsync`` does nothing: blobs, their directories; SQLite syncs through its own C code
and is not affected). The CPU counted is the whole process's (every thread): on PostgreSQL the
server's own work is not in it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.gateway_support import OTHER_DOMAIN

from bench.common import fresh_database
from bench.smtp_bench import DOMAIN, make_messages

VARIANTS = ("base", "noraw", "nofsync")


def child(variant: str, n: int, backend: str = "sqlite") -> None:
    """One measurement in this (fresh) process; prints CPU ms per message."""
    tmp = Path(tempfile.mkdtemp(prefix="monsisra-receive-parts-"))
    try:
        with fresh_database(backend, tmp) as url:
            _measure(variant, n, url, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # ~60 MB of store per measurement


def _measure(variant: str, n: int, url: str, tmp: Path) -> None:
    os.environ.update({"MONSISRA_DATABASE_URL": url,
                       "MONSISRA_DATA_DIR": str(tmp / "data"), "MONSISRA_DOMAIN": DOMAIN,
                       "MONSISRA_SECRET_KEY": "bench-secret-" + "x" * 40})
    exe = str(Path(sys.executable).parent / "monsisra")
    for cmd in (["account", "create", "bench.user", "--first-name", "Bench", "--last-name", "User",
                 "--password", "bench-pass"], ["trust", "add", OTHER_DOMAIN]):
        subprocess.run([exe, *cmd], check=True, capture_output=True, timeout=120)
    from monsisra.config import Settings
    from monsisra.services import inbound
    from monsisra.services.core import Core

    if variant == "noraw":
        inbound._keep_raw = lambda s, jobs, now: None  # type: ignore[assignment]
    elif variant == "nofsync":
        os.fsync = lambda fd: None  # type: ignore[assignment]
    rcpt = f"bench.user@{DOMAIN}"

    async def main() -> float:
        core = Core(Settings())

        async def send(mails: list[bytes]) -> None:
            async def one(share: list[bytes]) -> None:
                for raw in share:
                    reply = await inbound.receive(core, inbound.Envelope(
                        "127.0.0.1", f"secretariat@{OTHER_DOMAIN}", [rcpt], raw))
                    assert reply.startswith("250"), reply

            await asyncio.gather(*(one(mails[i::10]) for i in range(10)))

        await send(make_messages(20, rcpt, "warm"))
        mails = make_messages(n, rcpt, "m")
        start = time.process_time()
        await send(mails)
        cpu = time.process_time() - start
        await inbound.stop(core)
        return cpu * 1000 / n

    print(f"{asyncio.run(main()):.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--messages", type=int, default=120)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, among " + ", ".join(VARIANTS))
    ap.add_argument("--child", choices=VARIANTS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.messages, args.backend)
        return
    variants = [v for v in args.variants.split(",") if v]
    if unknown := set(variants) - set(VARIANTS):
        ap.error(f"unknown variants: {', '.join(sorted(unknown))}")
    for rnd in range(args.repeat):
        for variant in variants:
            out = subprocess.run([sys.executable, "-m", "bench.smtp_receive_parts", "--child", variant,
                                  "--messages", str(args.messages), "--backend", args.backend],
                                 capture_output=True, text=True, check=True)
            print(f"round {rnd} {args.backend} {variant:8s} {out.stdout.strip()} ms CPU/msg (process, all threads)",
                  flush=True)


if __name__ == "__main__":
    main()
