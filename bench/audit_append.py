"""Cost of the audit chain's append (issue 15): the same small write transaction (one INSERT) with
and without one audit entry (chained at commit: head locked, entry numbered and hashed, inserted, head moved),
CPU and wall time per transaction, on SQLite and PostgreSQL; and concurrent writers on one chain.

The send path pays exactly this once per message (``message.send``); ``bench/core_delivery.py``
measures the whole send.

Run: ``.venv/bin/python -m bench.audit_append [--n 400] [--engines sqlite,postgres]``
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bench.common import fresh_database, header, new_meta, write_results
from monsisra.config import Settings
from monsisra.domain.clock import utcnow
from monsisra.services import audit
from monsisra.services.core import Core
from monsisra.store.models import LoginThrottle


async def _run(core: Core, n: int, with_audit: bool, tasks: int = 1) -> dict[str, float]:
    async def one(offset: int) -> None:
        for i in range(n // tasks):
            async with core.write() as tx:
                # A real write in both variants: the commit is durable (fsync) either way, as a send's is.
                key = f"bench:{with_audit}:{offset + i}:{time.perf_counter_ns()}"
                await tx.session.execute(sa.insert(LoginThrottle).values(key=key, failures=0, window_start=utcnow()))
                if with_audit:
                    audit.record(tx.session, None, "message.send", object_type="message", object_id=offset + i,
                                 mailbox_id=1, client="127.0.0.1", detail={"recipients": 1})

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(one(t * n) for t in range(tasks)))
    return {"cpu_ms": (time.process_time() - cpu) / n * 1000, "wall_ms": (time.perf_counter() - wall) / n * 1000}


async def measure(url: str, n: int) -> dict[str, Any]:
    core = Core(Settings(database_url=url, data_dir=Path(tempfile.mkdtemp()), secret_key="bench-" + "x" * 40,
                         smtp_enabled=False, run_workers=False))
    try:
        await _run(core, 50, True)  # warm-up
        rows: dict[str, Any] = {}
        for label, flag in (("without", False), ("with", True)):
            runs = [await _run(core, n, flag) for _ in range(3)]
            rows[label] = {k: min(r[k] for r in runs) for k in ("cpu_ms", "wall_ms")}
        rows["concurrent_4"] = await _run(core, n, True, tasks=4)
        verdict = await audit.verify(core)
        rows["chain_ok"], rows["entries"] = verdict.ok, verdict.entries
        return rows
    finally:
        await core.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=400, help="transactions per run")
    parser.add_argument("--engines", default="sqlite,postgres")
    args = parser.parse_args()
    meta = new_meta()
    results: dict[str, Any] = {}
    for engine in [e for e in args.engines.split(",") if e]:
        with tempfile.TemporaryDirectory() as tmp, fresh_database(engine, Path(tmp)) as url:
            results[engine] = asyncio.run(measure(url, args.n))
            print(engine, results[engine])
    md = header("Audit log — cost of the chained append", meta)
    md += ["", "Same write transaction (one small INSERT, durable commit), without and with one audit entry; "
           f"best of 3 runs of {args.n} transactions; then 4 concurrent writers on one chain (verified after).", "",
           "| engine | CPU ms/tx without | with | added | wall ms/tx without | with | added | 4 writers wall ms/tx | "
           "chain intact |", "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for engine, r in results.items():
        md.append(f"| {engine} | {r['without']['cpu_ms']:.2f} | {r['with']['cpu_ms']:.2f} | "
                  f"{r['with']['cpu_ms'] - r['without']['cpu_ms']:.2f} | {r['without']['wall_ms']:.2f} | "
                  f"{r['with']['wall_ms']:.2f} | {r['with']['wall_ms'] - r['without']['wall_ms']:.2f} | "
                  f"{r['concurrent_4']['wall_ms']:.2f} | {'yes' if r['chain_ok'] else 'NO'} ({r['entries']}) |")
    write_results("audit_append", meta, md, {"results": results})


if __name__ == "__main__":
    main()
