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


def run_engine(engine: str, url: str, iterations: int, warmup: int) -> dict[str, Any]:
    out: dict[str, Any] = {"load_at_start": uptime()}
    queries = core_read.QUERIES
    try:
        core_read.QUERIES = SEARCHES
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


def main() -> None:
    import sqlalchemy.ext.asyncio  # noqa: F401

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=10.0)
    parser.add_argument("--target", type=int, default=None, help="deliveries in the measured mailbox")
    parser.add_argument("--engines", default="sqlite,postgres")
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--merge", action="store_true", help="keep the last results of the engines not run now")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="core_read_10m.json of an earlier run (e.g. the code before a change, same store): "
                             "the page gets a previous → this run table of every query")
    args = parser.parse_args()
    plan = core_read_store.make_plan(args.scale, args.target)
    meta = new_meta()
    meta["plan"] = vars(plan)
    meta["iterations"], meta["warmup"] = args.iterations, args.warmup
    meta["windows"] = {k: getattr(search, k) for k in ("WINDOW_FIRST", "WINDOW_MAX", "WINDOW_BUDGET", "MIN_SAMPLE")}
    if args.baseline:
        meta["baseline"] = baseline_of(json.loads(args.baseline.read_text()))
    runs = []
    if args.merge and (RESULTS / "core_read_10m.json").exists():
        old = json.loads((RESULTS / "core_read_10m.json").read_text())
        runs = [r for r in old["runs"] if r["engine"] not in args.engines.split(",")]
    for engine in args.engines.split(","):
        if engine == "sqlite":
            url, info = core_read_store.sqlite_store(plan)
        else:
            url, info = core_read_store.pg_store(plan)
        info["facts"] = asyncio.run(core_read.mailbox_facts(url))
        print(f"[{time.strftime('%H:%M:%S')}] {engine}: {info}", flush=True)
        runs.append({"engine": engine, "store": info, **run_engine(engine, url, args.iterations, args.warmup)})
        if not args.no_write:  # what is measured is kept, even if a later engine fails
            write_results("core_read_10m", meta, report(meta, runs), {"runs": runs})
    for line in report(meta, runs):
        print(line)


def baseline_of(data: dict[str, Any]) -> dict[str, Any]:
    """What the comparison table needs of an earlier run's JSON: its commit, date, load and
    per engine and query p50 / p99 / CPU p50 (« after »: what that code served)."""
    meta = data.get("meta", {})
    return {"commit": meta.get("commit"), "date": meta.get("date"), "plan": meta.get("plan"),
            "runs": {r["engine"]: {"load": [r["load_at_start"], r["load_at_end"]],
                                   "queries": {q["query"]: {k: q[k] for k in ("p50", "p99", "cpu_p50")}
                                               for q in r["after"]}}
                     for r in data["runs"]}}


def _baseline_table(base: dict[str, Any], run: dict[str, Any]) -> list[str]:
    old = base["runs"].get(run["engine"])
    if not old:
        return []
    md = [f"### Previous code (git {base['commit']}, {base['date']}) → this run, same store", "",
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
    p = meta["plan"]
    md += [
        f"Store: {p['n_messages']:,} messages between {p['n_mailboxes']:,} mailboxes, {p['n_target']:,} "
        "deliveries in the measured mailbox (generator of `bench.core_read`, store built and kept by "
        "`bench.core_read_store`).",
        f"Each query: {meta['warmup']} warm-up calls, then {meta['iterations']} timed calls of the service "
        "function (`messages.list_messages(limit=50)` / `messages.counts`). Target: p99 < 20 ms for every query.",
        "« before » = the search driven by the text index alone (previous release); « after » = windowed "
        f"search (`services/messages/search.py`, {meta['windows']}).",
        "",
    ]
    for run in runs:
        f = run["store"].get("facts", {})
        md += [f"## {run['engine']}", "",
               f"Rows: {f.get('messages', 0):,} messages, {f.get('deliveries', 0):,} deliveries; measured mailbox "
               f"{f.get('target_deliveries', 0):,} deliveries, {f.get('target_unread', 0):,} unread. "
               f"Store: {run['store'].get('load', '')}",
               f"Load average at start: `{run['load_at_start']}`; at end: `{run['load_at_end']}`", "",
               *(_baseline_table(meta["baseline"], run) if meta.get("baseline") else []),
               "### Search: before → after", "",
               "| query | before p50 / p99 ms | after p50 / p99 ms | after met (< 20 ms p99) |",
               "|---|---:|---:|---|"]
        after = {q["query"]: q for q in run["after"]}
        for b in run["before"]:
            a = after[b["query"]]
            md.append(f"| {b['query']} | {b['p50']:.1f} / {b['p99']:.1f} | {a['p50']:.1f} / **{a['p99']:.1f}** | "
                      f"{'yes' if a['met'] else '**NO**'} |")
        md += ["", "### After: every query", "",
               "| query | p50 ms | p99 ms | max ms | met | CPU p50 / p99 ms | items | SQL stmts | "
               "traced call: in SQL / slowest stmt ms |", "|---|---:|---:|---:|---|---:|---:|---:|---:|"]
        md += [_row(q) for q in run["after"]]
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
