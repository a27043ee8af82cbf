"""Mailboxes of a hospital service (issue 18, item 4): pages, category views, counts and search
in a mailbox of 500,000 deliveries inside a store of 10,000,000 messages, on both engines.

The store comes from ``bench.core_read_store`` (built once, kept). The queries are those of
``bench.core_read`` through the service layer; every search runs twice: « before » with the
text index alone (the search of the previous release: FTS5 / GIN for every match of the
mailbox, then the first page), « after » with the windowed search the service now uses
(``services/messages/search.py``). Target: p99 < 20 ms for every query. ``--baseline`` adds a
table comparing every query with an earlier run's JSON (the code before a change, run from an
export against the same store).

Run: ``.venv/bin/python -m bench.core_read_10m [--scale 10] [--target N] [--engines sqlite,postgres]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from pathlib import Path
from typing import Any

from bench import core_read, core_read_store
from bench.common import RESULTS, header, new_meta, uptime, write_results
from monsisra.services.messages import reading, search

TARGET_MS = 20.0
SEARCHES = [q for q in core_read.QUERIES if q[1] == "search"]


@contextlib.contextmanager
def index_only():
    """The search as it was: the text index for every match, no windows."""
    original = reading.search_rows

    async def forced(*args, **kw):
        kw["strategy"] = "index"
        return await original(*args, **kw)

    reading.search_rows = forced
    try:
        yield
    finally:
        reading.search_rows = original


def run_engine(engine: str, url: str, iterations: int, warmup: int, before: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {"load_at_start": uptime(), "before": []}
    queries = core_read.QUERIES
    try:
        core_read.QUERIES = SEARCHES
        if before:
            print(f"[{time.strftime('%H:%M:%S')}] {engine}: before (text index only)", flush=True)
            with index_only():
                out["before"] = asyncio.run(core_read.measure(url, engine, iterations, warmup))
        core_read.QUERIES = queries
        print(f"[{time.strftime('%H:%M:%S')}] {engine}: after (windows)", flush=True)
        out["after"] = asyncio.run(core_read.measure(url, engine, iterations, warmup))
    finally:
        core_read.QUERIES = queries
    out["load_at_end"] = uptime()
    for row in out["before"] + out["after"]:
        row["target_p99_ms"] = TARGET_MS
        row["met"] = row["p99"] < TARGET_MS
    return out


def _key(engine: str, plan: dict[str, Any]) -> str:
    return f"{engine}:{plan['n_messages']}:{plan['n_target']}"


def _with_meta(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The runs of a results JSON, each with its own ``meta`` (date, commit, command, plan…) and
    ``baseline``: files written before runs of several store sizes were kept side by side had
    one meta for all their runs."""
    meta = data.get("meta", {})
    base = meta.get("baseline")
    runs = []
    for run in data.get("runs", []):
        if "meta" not in run:
            run = {**run, "meta": {k: meta.get(k) for k in ("date", "commit", "command", "plan", "iterations",
                                                            "warmup", "windows", "load_before", "load_after")}}
            if base and run["engine"] in base.get("runs", {}):
                run["baseline"] = {"commit": base["commit"], "date": base["date"], **base["runs"][run["engine"]]}
        runs.append(run)
    return runs


def main() -> None:
    import sqlalchemy.ext.asyncio  # noqa: F401

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=10.0)
    parser.add_argument("--target", type=int, default=None, help="deliveries in the measured mailbox")
    parser.add_argument("--engines", default="sqlite,postgres")
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--merge", action="store_true",
                        help="keep the earlier runs on the page (every engine and store size), below the new ones")
    parser.add_argument("--no-before", action="store_true",
                        help="skip the searches by the text index alone (already measured by the --baseline run)")
    parser.add_argument("--render", action="store_true",
                        help="measure nothing: write the page again from core_read_10m.json (edited analysis)")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="core_read_10m.json of an earlier run (e.g. the code before a change, same store): "
                             "the page gets a previous → this run table of every query")
    args = parser.parse_args()
    if args.render:
        data = json.loads((RESULTS / "core_read_10m.json").read_text())
        write_results("core_read_10m", data["meta"], report(data["meta"], _with_meta(data)),
                      {"runs": _with_meta(data)})
        return
    plan = core_read_store.make_plan(args.scale, args.target)
    meta = new_meta()
    meta["plan"] = vars(plan)
    meta["iterations"], meta["warmup"] = args.iterations, args.warmup
    meta["windows"] = {k: getattr(search, k) for k in ("WINDOW_FIRST", "WINDOW_MAX", "WINDOW_BUDGET", "MIN_SAMPLE")}
    baseline = baseline_of(json.loads(args.baseline.read_text())) if args.baseline else {}
    engines = args.engines.split(",")
    kept = []
    if args.merge and (RESULTS / "core_read_10m.json").exists():
        old = json.loads((RESULTS / "core_read_10m.json").read_text())
        meta["analysis"] = old.get("meta", {}).get("analysis", [])
        kept = _with_meta(old)  # earlier runs stay on the page, dated, below the newer ones
    runs: list[dict[str, Any]] = []
    for engine in engines:
        if engine == "sqlite":
            url, info = core_read_store.sqlite_store(plan)
        else:
            url, info = core_read_store.pg_store(plan)
        info["facts"] = asyncio.run(core_read.mailbox_facts(url))
        print(f"[{time.strftime('%H:%M:%S')}] {engine}: {info}", flush=True)
        run_meta = {k: meta[k] for k in ("date", "commit", "command", "plan", "iterations", "warmup", "windows",
                                         "load_before")}
        run = {"engine": engine, "store": info, "meta": run_meta,
               **run_engine(engine, url, args.iterations, args.warmup, not args.no_before)}
        if _key(engine, meta["plan"]) in baseline:
            run["baseline"] = baseline[_key(engine, meta["plan"])]
        runs.append(run)
        if not args.no_write:  # what is measured is kept, even if a later engine fails
            write_results("core_read_10m", meta, report(meta, runs + kept), {"runs": runs + kept})
    for line in report(meta, runs + kept):
        print(line)


def baseline_of(data: dict[str, Any]) -> dict[str, Any]:
    """What the comparison table needs of an earlier run's JSON, per engine and store size: its
    commit, date, load and per query p50 / p99 / CPU p50 (« after »: what that code served)."""
    # Oldest first, so that the newest run of each engine and store size is the one kept (a file
    # written with --merge lists the new run first).
    runs = sorted(_with_meta(data), key=lambda r: r["meta"].get("date") or "")
    return {_key(r["engine"], r["meta"]["plan"]): {
        "commit": r["meta"].get("commit"), "date": r["meta"].get("date"),
        "load": [r["load_at_start"], r["load_at_end"]],
        "queries": {q["query"]: {k: q[k] for k in ("p50", "p99", "cpu_p50")} for q in r["after"]}}
        for r in runs}


def _baseline_table(old: dict[str, Any], run: dict[str, Any]) -> list[str]:
    md = [f"### Previous code (git {old['commit']}, {old['date']}) → this run, same store", "",
          f"Load average of the previous run: `{old['load'][0]}` … `{old['load'][1]}`", "",
          "| query | previous p50 / p99 ms | this run p50 / p99 ms | CPU p50 ms previous → this run "
          "| met (< 20 ms p99) |",
          "|---|---:|---:|---:|---|"]
    for q in run["after"]:
        b = old["queries"].get(q["query"])
        if b:
            md.append(f"| {q['query']} | {b['p50']:.1f} / {b['p99']:.1f} | {q['p50']:.1f} / **{q['p99']:.1f}** | "
                      f"{b['cpu_p50']:.1f} → {q['cpu_p50']:.1f} | {'yes' if q['met'] else '**NO**'} |")
    return [*md, ""]


def _row(q: dict[str, Any]) -> str:
    return (f"| {q['query']} | {q['p50']:.2f} | **{q['p99']:.2f}** | {q['max']:.2f} | "
            f"{'yes' if q['met'] else '**NO**'} | {q['cpu_p50']:.1f} / {q['cpu_p99']:.1f} | {q['items']} | "
            f"{q['statements']} | {q['traced_sql_ms']:.1f} / {q['slowest_statement_ms']:.1f} |")


def report(meta: dict[str, Any], runs: list[dict[str, Any]]) -> list[str]:
    md = header("Mailboxes of a hospital service — reading a very large mailbox", meta)
    md += [
        "Store: messages between mailboxes, one measured mailbox (generator of `bench.core_read`, store built "
        "and kept by `bench.core_read_store`); one section per run, engine and store size, largest store first, "
        "newest run first, each with its own date, commit and command.",
        "Each query: warm-up calls, then timed calls of the service function (`messages.list_messages(limit=50)` "
        "/ `messages.counts`). Target: p99 < 20 ms for every query.",
        "« before » = the search driven by the text index alone (previous release, prefix query); « after » = "
        "the service's search (`services/messages/search.py`).",
        "",
    ]
    # Largest store first; for one store, the newest run first (``sorted`` is stable).
    runs = sorted(runs, key=lambda r: r["meta"]["date"] or "", reverse=True)
    for run in sorted(runs, key=lambda r: (-r["meta"]["plan"]["n_messages"], r["engine"])):
        f, m = run["store"].get("facts", {}), run["meta"]
        p = m["plan"]
        md += [f"## {run['engine']} — {p['n_messages']:,} messages, {p['n_target']:,} deliveries in the mailbox", "",
               f"Measured {m['date']} (git {m['commit']}): `{m['command']}`; {m['warmup']} warm-up calls, "
               f"{m['iterations']} timed calls per query; windows {m['windows']}.",
               f"Rows: {f.get('messages', 0):,} messages, {f.get('deliveries', 0):,} deliveries; measured mailbox "
               f"{f.get('target_deliveries', 0):,} deliveries, {f.get('target_unread', 0):,} unread. "
               f"Store: {run['store'].get('load', '')}",
               f"Load average at start: `{run['load_at_start']}`; at end: `{run['load_at_end']}`", "",
               *(_baseline_table(run["baseline"], run) if run.get("baseline") else [])]
        after = {q["query"]: q for q in run["after"]}
        if run["before"]:
            md += ["### Search: before → after", "",
                   "| query | before p50 / p99 ms | after p50 / p99 ms | after met (< 20 ms p99) |",
                   "|---|---:|---:|---|"]
        for b in run["before"]:
            a = after[b["query"]]
            md.append(f"| {b['query']} | {b['p50']:.1f} / {b['p99']:.1f} | {a['p50']:.1f} / **{a['p99']:.1f}** | "
                      f"{'yes' if a['met'] else '**NO**'} |")
        md += ["", "### After: every query", "",
               "| query | p50 ms | p99 ms | max ms | met | CPU p50 / p99 ms | items | SQL stmts | "
               "traced call: in SQL / slowest stmt ms |", "|---|---:|---:|---:|---|---:|---:|---:|---:|"]
        md += [_row(q) for q in run["after"]]
        if run["before"]:
            md += ["", "### Before: search by the text index alone", "",
                   "| query | p50 ms | p99 ms | max ms | met | CPU p50 / p99 ms | items | SQL stmts | "
                   "traced call: in SQL / slowest stmt ms |", "|---|---:|---:|---:|---|---:|---:|---:|---:|"]
            md += [_row(q) for q in run["before"]]
        md += ["", "<details><summary>Plans of the slowest statement (after)</summary>", ""]
        for q in run["after"]:
            md += [f"**{q['query']}** ({q['slowest_statement_ms']:.2f} ms)", "", "```sql", q["slowest_sql"].strip(),
                   "```", "```", q["plan"], "```", ""]
        md += ["</details>", ""]
    if meta.get("analysis"):
        md += ["## Analysis", "", *meta["analysis"], ""]
    return md


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
