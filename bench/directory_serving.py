"""Directory search in a running server right after a national import made by another process,
against the same server freshly restarted (issue 18, item 1).

    .venv/bin/python -m bench.directory_serving [--backends sqlite postgres] [--queries 1000]

For each backend, on a fresh database: ``monsisra serve`` starts on an empty directory and answers
searches (its connections, caches and plans are those of the old index, as on the night of an
import); ``monsisra directory import`` then loads the national files (``bench.directory_generate``)
in another process while the server runs; the same queries go through HTTP
(``GET /api/v1/directory/search``) to that server; then the server is restarted and they go again.
Results: ``bench/results/directory_serving.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from bench.common import (
    free_port,
    fresh_database,
    header,
    new_meta,
    start_serve,
    stop_serve,
    summary_ms,
    uptime,
    write_results,
)
from bench.directory_bench import make_queries, run_import
from bench.directory_generate import generate


def _searches(port: int, token: str, queries: list[dict[str, Any]]) -> dict[str, Any]:
    samples = []
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"},
                      timeout=30) as c:
        # A whole pass first, not measured: both servers then read from the same warm caches
        # (PostgreSQL's buffers, the page cache), and what differs is what the process holds.
        for q in queries:
            c.get("/api/v1/directory/search", params={**q, "limit": 20})
        for q in queries:
            t = time.perf_counter()
            r = c.get("/api/v1/directory/search", params={**q, "limit": 20})
            samples.append(time.perf_counter() - t)
            assert r.status_code == 200, r.text
    return summary_ms(samples)


def _token(env: dict[str, str], port: int) -> str:
    subprocess.run([sys.executable, "-m", "monsisra.cli", "account", "create", "bench.search", "--first-name",
                    "Banc", "--last-name", "Recherche", "--password", "bench-pass"], env=env, check=True,
                   capture_output=True)
    r = httpx.post(f"http://127.0.0.1:{port}/api/v1/auth/token",
                   data={"username": "bench.search", "password": "bench-pass"}, timeout=30)
    r.raise_for_status()
    return r.json()["access_token"]


def _wal_mb(url: str) -> float | None:
    if not url.startswith("sqlite"):
        return None
    wal = Path(sa.make_url(url).database + "-wal")
    return round(wal.stat().st_size / 1e6, 1) if wal.exists() else 0.0


def run_backend(backend: str, ps: Path, mss: Path, queries: list[dict[str, Any]]) -> dict[str, Any]:
    Path("var").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir="var") as tmp, fresh_database(backend, Path(tmp)) as url:
        data = Path(tmp) / "data"
        env = {**os.environ, "MONSISRA_DATABASE_URL": url, "MONSISRA_DATA_DIR": str(data),
               "MONSISRA_SMTP_ENABLED": "false", "MONSISRA_LOGIN_MAX_FAILURES": "1000"}
        port, log = free_port(), Path(tmp) / "serve.log"
        server = start_serve(env, port, log)
        try:
            token = _token(env, port)
            _searches(port, token, queries[:100])  # the server has read the old (empty) index
            print(f"[{backend}] importing while serving…", flush=True)
            imported = run_import(url, data, [ps, mss])
            wal_after_import = _wal_mb(url)
            os.sync()
            running = _searches(port, token, queries)
            wal_after_search = _wal_mb(url)
            print(f"[{backend}] same process after the import: {running}", flush=True)
        finally:
            stop_serve(server)
        server = start_serve(env, port, log)
        try:
            fresh = _searches(port, token, queries)
            print(f"[{backend}] after a restart: {fresh}", flush=True)
        finally:
            stop_serve(server)
        return {"import": {k: imported[k] for k in ("wall_s", "cpu_s", "peak_rss_mb")}, "running": running,
                "restarted": fresh, "wal_mb_after_import": wal_after_import,
                "wal_mb_after_first_searches": wal_after_search}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--people", type=int, default=500_000)
    parser.add_argument("--data", type=Path, default=Path("var/bench/directory"))
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgres"])
    parser.add_argument("--queries", type=int, default=1000)
    args = parser.parse_args()
    ps = next(args.data.glob("PS_LibreAcces_Personne_activite_*.txt"), None)
    mss = next(args.data.glob("Extraction_Correspondance_MSSante_*.txt"), None)
    if ps is None or mss is None:
        ps, mss = generate(args.people, args.data)
    meta = new_meta()
    queries = make_queries(ps, mss, args.queries)
    results: dict[str, Any] = {"queries": len(queries), "backends": {}}
    for backend in args.backends:
        results["backends"][backend] = run_backend(backend, ps, mss, queries)
    meta["load_after"] = uptime()
    md = header("Directory search right after an import made while serving", meta)
    md += [f"Data: {ps.name} and {mss.name} (`bench/directory_generate.py`). `monsisra serve` starts on an empty "
           "directory and answers searches; `monsisra directory import` runs in another process while it serves; "
           f"then {len(queries)} mixed queries (those of `bench/directory_bench.py`) go through HTTP to the same "
           "server, then to the same server restarted, each time after one unmeasured pass of the same queries "
           "(equally warm caches). Latency measured by the client.",
           "", "| backend | import wall | same process p50 | p99 | restarted p50 | p99 | log after import | "
           "log after searches |", "|---|---|---|---|---|---|---|---|"]
    for backend, r in results["backends"].items():
        run, fresh = r["running"], r["restarted"]
        log = (f"{r['wal_mb_after_import']} MB", f"{r['wal_mb_after_first_searches']} MB") \
            if r["wal_mb_after_import"] is not None else ("—", "—")
        md.append(f"| {backend} | {r['import']['wall_s']} s | {run['p50']} ms | {run['p99']} ms | {fresh['p50']} ms | "
                  f"{fresh['p99']} ms | {log[0]} | {log[1]} |")
    md += ["", "Goal: the same process right after the import answers within the machine's noise of a fresh start.",
           "(Before the fix, on SQLite: p50 98–101 ms / p99 312–340 ms in the running server, the write-ahead log "
           "at 528 MB; 13–15 ms / 25–30 ms after a restart.)"]
    write_results("directory_serving", meta, md, results)
    print("\n".join(md))


if __name__ == "__main__":
    main()
