"""Directory search latency at national scale, in process and through HTTP, on two query sets
(issue 18, item 2: p99 under 20 ms on both engines).

    .venv/bin/python -m bench.directory_search --label after [--backends sqlite postgres] [--queries 600]

Two data sets of 500,000 people (``bench.directory_generate``): the benchmark's (a long tail of
surnames) and ``--common-surnames`` (a few hundred surnames: every name query matches thousands
of people and must still answer its first page as fast). Each is imported once per backend into
a database that is kept (``var/bench/directory_search_dbs.json``), so that a run ``--label
before`` with the old code and a run ``--label after`` with the new one measure the same data in
the same conditions (``--reindex`` rebuilds the kept databases' index with the current code).

For each backend and data set, the queries of ``bench/directory_bench.py`` (same families) go
through ``services.directory.search`` in this process, then through ``GET
/api/v1/directory/search`` to a ``monsisra serve`` started here (latency seen by the client),
each after one unmeasured pass. The slowest queries are listed, to say what makes the p99.
Results: ``bench/results/directory_search.md`` and ``.json`` (runs under other labels are kept).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import (
    RESULTS,
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
from bench.directory_bench import KIND_LABELS, make_queries, run_import
from bench.directory_generate import generate

DBS = Path("var/bench/directory_search_dbs.json")
SETS = {"benchmark": (Path("var/bench/directory"), False), "common": (Path("var/bench/directory_common"), True)}
FAMILIES = len(KIND_LABELS)


def _files(data: Path, common: bool, people: int) -> tuple[Path, Path]:
    ps = next(data.glob("PS_LibreAcces_Personne_activite_*.txt"), None)
    mss = next(data.glob("Extraction_Correspondance_MSSante_*.txt"), None)
    if ps is None or mss is None:
        ps, mss = generate(people, data, common_surnames=common)
    return ps, mss


def _database(backend: str, name: str, ps: Path, mss: Path, reindex: bool) -> tuple[str, Path]:
    """The kept database of this backend and data set: imported on first use."""
    known = json.loads(DBS.read_text()) if DBS.exists() else {}
    key = f"{backend}/{name}"
    if key in known:
        url, data = known[key]["url"], Path(known[key]["data"])
        env = {**os.environ, "MONSISRA_DATABASE_URL": url, "MONSISRA_DATA_DIR": str(data)}
        if reindex:
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "monsisra.cli", "directory", "reindex"], env=env, check=True,
                           capture_output=True)
            print(f"[{key}] reindexed in {time.perf_counter() - t:.1f} s", flush=True)
        return url, data
    tmp = Path(tempfile.mkdtemp(dir="var/bench", prefix=f"search_{backend}_{name}_"))
    with fresh_database(backend, tmp, keep=True) as url:
        pass
    data = tmp / "data"
    print(f"[{key}] importing…", flush=True)
    imported = run_import(url, data, [ps, mss])
    print(f"[{key}] imported in {imported['wall_s']} s", flush=True)
    known[key] = {"url": url, "data": str(data), "import": imported}
    DBS.write_text(json.dumps(known, indent=2))
    return url, data


def _summarise(samples: list[tuple[int, float]], queries: list[dict[str, Any]]) -> dict[str, Any]:
    by_family: dict[str, list[float]] = {}
    for i, dt in samples:
        by_family.setdefault(f"k{i % FAMILIES}", []).append(dt)
    slowest = sorted(samples, key=lambda x: -x[1])[:12]
    return {"all": summary_ms([dt for _, dt in samples]),
            "by_family": {k: summary_ms(v) for k, v in sorted(by_family.items())},
            "slowest": [{"ms": round(dt * 1000, 1), "family": KIND_LABELS[f"k{i % FAMILIES}"], **queries[i]}
                        for i, dt in slowest]}


def _answer(got: dict[str, Any]) -> dict[str, Any]:
    """What must not change between two versions of the search code: each section's ids, total,
    capped flag and next offset, and the typos taken."""
    out: dict[str, Any] = {"typos": got["query"].get("typos")}
    for section in ("professionals", "services"):
        s = got[section]
        out[section] = [[i["id"] for i in s["items"]], s["total"], s["total_capped"], s["next_offset"]]
    return out


async def _in_process(url: str, data: Path, queries: list[dict[str, Any]],
                      dump: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    from monsisra.config import Settings
    from monsisra.services import directory
    from monsisra.services.core import Core

    core = Core(Settings(database_url=url, data_dir=data))
    try:
        answers = []
        for q in queries:  # one unmeasured pass: the same warm caches as the HTTP pass
            answers.append(_answer(await directory.search(core, None, **q)))
        samples = []
        for i, q in enumerate(queries):
            t = time.perf_counter()
            await directory.search(core, None, **q)
            samples.append((i, time.perf_counter() - t))
        if dump is not None:
            dump.extend({"i": i, "query": queries[i], "ms": round(dt * 1000, 2), "answer": answers[i]}
                        for i, dt in samples)
        return _summarise(samples, queries)
    finally:
        await core.close()


def _over_http(url: str, data: Path, queries: list[dict[str, Any]],
               dump: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    env = {**os.environ, "MONSISRA_DATABASE_URL": url, "MONSISRA_DATA_DIR": str(data),
           "MONSISRA_SMTP_ENABLED": "false", "MONSISRA_LOGIN_MAX_FAILURES": "1000",
           # No mail-client listeners: their fixed ports may be another server's on this machine.
           **{f"MONSISRA_{n}_PORT": "0" for n in ("IMAP", "IMAPS", "SUBMISSION", "SUBMISSIONS")}}
    port = free_port()
    # The account may be there from an earlier run on this kept database.
    subprocess.run([sys.executable, "-m", "monsisra.cli", "account", "create", "bench.search", "--first-name",
                    "Banc", "--last-name", "Recherche", "--password", "bench-pass"], env=env, capture_output=True)
    server = start_serve(env, port, data.parent / "serve.log")
    try:
        r = httpx.post(f"http://127.0.0.1:{port}/api/v1/auth/token",
                       data={"username": "bench.search", "password": "bench-pass"}, timeout=30)
        r.raise_for_status()
        samples = []
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30,
                          headers={"Authorization": f"Bearer {r.json()['access_token']}"}) as c:
            for q in queries:
                c.get("/api/v1/directory/search", params={**q, "limit": 20})
            for i, q in enumerate(queries):
                t = time.perf_counter()
                got = c.get("/api/v1/directory/search", params={**q, "limit": 20})
                samples.append((i, time.perf_counter() - t))
                assert got.status_code == 200, got.text
        if dump is not None:
            for i, dt in samples:
                dump[i]["http_ms"] = round(dt * 1000, 2)
        return _summarise(samples, queries)
    finally:
        stop_serve(server)


def _markdown(results: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    md = header("Directory search p99 at national scale: in process and through HTTP, two query sets", meta)
    md += ["Data: 500,000 people (`bench/directory_generate.py`), twice: the benchmark's long tail of surnames, and "
           "`--common-surnames` (300 surnames over 500,000 people: every name query matches ~1,700 people or "
           "more). Queries: the families of `bench/directory_bench.py`, drawn from each data set. In process = "
           "`services.directory.search`; HTTP = `GET /api/v1/directory/search` to a `monsisra serve` started by "
           "the bench, latency seen by the client. Each measured pass follows one unmeasured pass.", "",
           "| run | load before → after | backend | query set | in process p50 | p99 | HTTP p50 | p99 |",
           "|---|---|---|---|---|---|---|---|"]
    for label, run in results["runs"].items():
        for key, r in run["results"].items():
            load = f"{r.get('load_before', run['load_before']).split('load average:')[-1].strip()} → " \
                   f"{r.get('load_after', run['load_after']).split('load average:')[-1].strip()}"
            backend, name = key.split("/")
            ip, http = r["in_process"]["all"], r["http"]["all"] if r.get("http") else {}
            md.append(f"| {label} ({r.get('code', run['commit'])}) | {load} | {backend} | {name} | {ip['p50']} | "
                      f"{ip['p99']} | {http.get('p50', '—')} | {http.get('p99', '—')} |")
    for label, run in results["runs"].items():
        md += ["", f"### {label}: per family, in process p50 / p99 (ms)", "",
               "| family | " + " | ".join(run["results"]) + " |", "|---|" + "---|" * len(run["results"])]
        for k, name in KIND_LABELS.items():
            cells = [f"{r['in_process']['by_family'][k]['p50']} / {r['in_process']['by_family'][k]['p99']}"
                     if k in r["in_process"]["by_family"] else "—" for r in run["results"].values()]
            md.append(f"| {name} | " + " | ".join(cells) + " |")
        md += ["", f"Slowest queries in process ({label}):", ""]
        for key, r in run["results"].items():
            shown = [(s["ms"], {k: v for k, v in s.items() if k not in ("ms", "family")})
                     for s in r["in_process"]["slowest"][:6]]
            md.append(f"- {key}: " + "; ".join(f"{ms} ms {json.dumps(q, ensure_ascii=False)}" for ms, q in shown))
    return [*md, "", *results.get("notes", [])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--label", default="after")
    parser.add_argument("--people", type=int, default=500_000)
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgres"])
    parser.add_argument("--sets", nargs="+", default=list(SETS))
    parser.add_argument("--queries", type=int, default=600)
    parser.add_argument("--no-http", action="store_true")
    parser.add_argument("--reindex", action="store_true", help="rebuild the kept databases' index first")
    parser.add_argument("--import-only", action="store_true")
    parser.add_argument("--code", help="the commit of the code measured, when not HEAD (PYTHONPATH=old/src)")
    parser.add_argument("--render", action="store_true", help="only write the results page from the JSON")
    parser.add_argument("--dump", type=Path, help="a directory for each query's times and answer "
                        "(<backend>_<set>.json: ids, totals, capped flags, next offsets, typos), to diff two versions")
    args = parser.parse_args()
    if args.render:
        path = RESULTS / "directory_search.json"
        saved = json.loads(path.read_text())
        meta = saved.pop("meta")
        write_results("directory_search", meta, _markdown(saved, meta), saved)
        return
    Path("var/bench").mkdir(parents=True, exist_ok=True)
    meta = new_meta()
    run: dict[str, Any] = {"commit": meta["commit"], "date": meta["date"], "load_before": meta["load_before"],
                           "queries": args.queries, "results": {}}
    for name in args.sets:
        data, common = SETS[name]
        ps, mss = _files(data, common, args.people)
        queries = make_queries(ps, mss, args.queries)
        for backend in args.backends:
            url, data_dir = _database(backend, name, ps, mss, args.reindex)
            if args.import_only:
                continue
            key = f"{backend}/{name}"
            r: dict[str, Any] = {"load_before": uptime(), "code": args.code or meta["commit"]}
            dump: list[dict[str, Any]] | None = [] if args.dump else None
            r["in_process"] = asyncio.run(_in_process(url, data_dir, queries, dump))
            print(f"[{key}] in process {r['in_process']['all']} ({uptime()})", flush=True)
            if not args.no_http:
                r["http"] = _over_http(url, data_dir, queries, dump)
                print(f"[{key}] HTTP {r['http']['all']} ({uptime()})", flush=True)
            if args.dump:
                args.dump.mkdir(parents=True, exist_ok=True)
                (args.dump / f"{backend}_{name}.json").write_text(json.dumps(dump, ensure_ascii=False, indent=0))
            r["load_after"] = uptime()
            run["results"][key] = r
    if args.import_only:
        return
    run["load_after"] = meta["load_after"] = uptime()
    path = RESULTS / "directory_search.json"
    earlier = json.loads(path.read_text()) if path.exists() else {}
    runs = earlier.get("runs", {})
    if args.label in runs:  # the same code on other backends or sets: one run, its results merged
        run["results"] = {**runs[args.label]["results"], **run["results"]}
        run["load_before"] = runs[args.label]["load_before"]
    runs[args.label] = run
    saved = {"runs": runs, "notes": earlier.get("notes", [])}  # the reading, written by hand after the runs
    write_results("directory_search", meta, _markdown(saved, meta), saved)
    md = _markdown(saved, meta)
    print("\n".join(md))


if __name__ == "__main__":
    main()
