"""Every benchmark of ``bench/``, one after the other (``make bench``), each writing its results
to ``bench/results/``.

    .venv/bin/python -m bench.run_all [--list] [--only smtp,fanout] [--national]

By default the benchmarks that need no hour-long set-up run (about 45 minutes on 2 cores); with
``--national`` also those at national scale (the 500,000-person directory, the 10-million-message
store, four processes under load for 10 minutes), which take a few hours and tens of GB of disk.
Run them on a quiet machine: each records the load average before and after.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Bench:
    name: str
    module: str
    args: tuple[str, ...]
    about: str
    minutes: int
    national: bool = False


BENCHES = (
    Bench("audit", "bench.audit_append", (), "audit chain append, both engines", 2),
    Bench("delivery", "bench.core_delivery", (), "sends per second, service and HTTP, both engines", 6),
    Bench("read", "bench.core_read", (), "pages, counts and search in a 50,000-message mailbox", 8),
    Bench("web", "bench.web_bench", (), "inbox pages' server time and weight", 3),
    Bench("smtp", "bench.smtp_bench", (), "inbound SMTP beside Postfix", 3),
    Bench("submission", "bench.submission", (), "authenticated submission", 2),
    Bench("imap", "bench.imap_sync", (), "mbsync full sync beside Dovecot", 6),
    Bench("fanout", "bench.conversations_fanout", ("--posts", "60"), "conversation fan-out to 500 sockets", 3),
    Bench("chat", "bench.conversations_browser", (), "Entrée to bubble in Chromium", 2),
    Bench("video", "bench.video_calls", (), "call set-up in Chromium, direct and relayed", 5),
    Bench("directory", "bench.directory_bench", (), "national directory: import and search", 25, True),
    Bench("directory-serving", "bench.directory_serving", (), "search right after an import while serving", 15,
          True),
    Bench("read-10m", "bench.core_read", ("--scale", "10"), "a 500,000-message service mailbox in 10 M", 90, True),
    Bench("scale-out", "bench.scale_out", (), "four processes behind haproxy, 10 minutes", 20, True),
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument("--only", default="", help="comma-separated names (see --list)")
    parser.add_argument("--national", action="store_true", help="also the national-scale benchmarks")
    args = parser.parse_args()
    wanted = [n for n in args.only.split(",") if n]
    unknown = sorted(set(wanted) - {b.name for b in BENCHES})
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)} (see --list)")
    if wanted:
        chosen = [b for b in BENCHES if b.name in wanted]
    else:
        chosen = [b for b in BENCHES if args.national or not b.national]
    if args.list:
        for b in BENCHES:
            print(f"{b.name:18} ~{b.minutes:3d} min{' (national)' if b.national else '':11}  {b.about}")
        return 0
    failed = []
    for i, b in enumerate(chosen, 1):
        print(f"[{i}/{len(chosen)}] {b.name}: {b.about} (about {b.minutes} min)", flush=True)
        t0 = time.monotonic()
        code = subprocess.call([sys.executable, "-m", b.module, *b.args])
        print(f"[{i}/{len(chosen)}] {b.name}: {'done' if code == 0 else f'FAILED (exit {code})'} in "
              f"{(time.monotonic() - t0) / 60:.1f} min", flush=True)
        if code:
            failed.append(b.name)
    if failed:
        print("failed: " + ", ".join(failed), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
