"""Where the inbound gateway's CPU goes, without TLS or SMTP: ``services.inbound.receive`` called
in process (10 concurrent senders, SQLite, the bench letter with its 100 KB PDF), whole, then with
one part of the work left out, to attribute the CPU per message. For tuning, not a figure to
publish: the variants that skip work break durability on purpose.

Run (under the bench lock): ``.venv/bin/python -m bench.smtp_receive_parts [--messages 120] [--repeat 2]``.

Variants: ``base`` (everything), ``noraw`` (the raw form is not written to the database),
``nofsync`` (``os.fsync`` does nothing: blobs, their directories; SQLite syncs through its own C code
and is not affected).
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

from bench.smtp_bench import DOMAIN, make_messages

VARIANTS = ("base", "noraw", "nofsync")


def child(variant: str, n: int) -> None:
    """One measurement in this (fresh) process; prints CPU ms per message."""
    tmp = Path(tempfile.mkdtemp(prefix="monsisra-receive-parts-"))
    os.environ.update({"MONSISRA_DATABASE_URL": f"sqlite+aiosqlite:///{tmp}/db.sqlite",
                       "MONSISRA_DATA_DIR": str(tmp / "data"), "MONSISRA_DOMAIN": DOMAIN,
                       "MONSISRA_SECRET_KEY": "bench-secret-" + "x" * 40})
    from monsisra.store.migrate import upgrade

    upgrade(os.environ["MONSISRA_DATABASE_URL"])
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

    try:
        print(f"{asyncio.run(main()):.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # ~60 MB of store per measurement


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--messages", type=int, default=120)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--child", choices=VARIANTS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.messages)
        return
    for rnd in range(args.repeat):
        for variant in VARIANTS:
            out = subprocess.run([sys.executable, "-m", "bench.smtp_receive_parts", "--child", variant,
                                  "--messages", str(args.messages)], capture_output=True, text=True, check=True)
            print(f"round {rnd} {variant:8s} {out.stdout.strip()} ms CPU/msg (process, all threads)", flush=True)


if __name__ == "__main__":
    main()
