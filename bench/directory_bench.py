"""Directory at national scale: import wall time and peak memory, then search latency.

    .venv/bin/python -m bench.directory_bench [--people 500000] [--backends sqlite postgres] [--queries 1200]

1. Generates the extraction files with ``bench.directory_generate`` (unless already there).
2. For each backend, on a fresh database: runs ``monsisra directory import`` as a subprocess
   (wall time and peak RSS of that process, from ``wait4``), then the same import again (the
   idempotent case: nothing changes).
3. Runs a mixed set of realistic queries (names with and without accents, with typos, prefixes,
   "first last", specialty + city, service names, department and postcode filters, kinds) through
   ``services.directory.search`` — the function the HTTP route calls — and reports p50/p90/p99.

Results: ``bench/results/directory.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import unicodedata
from pathlib import Path
from typing import Any

from bench.common import fresh_database, header, new_meta, summary_ms, uptime, write_results
from bench.directory_generate import generate

SPECIALTY_WORDS = ["cardio", "pédiatrie", "dermato", "gériatrie", "psychiatrie", "radiologie", "ophtalmo",
                   "gynécologie", "médecine générale", "anesthésie", "pneumologie", "rhumatologie", "infirmier",
                   "kiné", "sage-femme", "pharmacien", "dentiste"]
SERVICE_WORDS = ["urgences", "imagerie", "laboratoire", "bureau des entrées", "avis hémostase", "endocrinologie",
                 "secrétariat cardiologie", "maternité", "oncologie", "pharmacie", "service social", "neurologie"]


def strip_accents(s: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", s) if not unicodedata.combining(c))


def typo(rng: random.Random, word: str) -> str:
    if len(word) < 5:
        return word
    i = rng.randrange(1, len(word) - 1)
    kind = rng.choice(("drop", "swap", "double", "replace"))
    if kind == "drop":
        return word[:i] + word[i + 1:]
    if kind == "swap":
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    if kind == "double":
        return word[:i] + word[i] + word[i:]
    return word[:i] + rng.choice("aeiou") + word[i + 1:]


def sample_lines(path: Path, n: int, rng: random.Random) -> list[list[str]]:
    """``n`` random lines (reservoir sampling: one pass, constant memory)."""
    out: list[list[str]] = []
    with open(path, encoding="utf-8") as f:
        f.readline()
        for i, line in enumerate(f):
            if len(out) < n:
                out.append(line.rstrip("\n").split("|"))
            else:
                j = rng.randrange(i + 1)
                if j < n:
                    out[j] = line.rstrip("\n").split("|")
    return out


def make_queries(ps: Path, mss: Path, n: int, seed: int = 7) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    people = sample_lines(ps, n, rng)
    orgs = [r for r in sample_lines(mss, n * 3, rng) if r[0] == "ORG"][:n]
    queries: list[dict[str, Any]] = []
    for i in range(n):
        p = people[i % len(people)]
        last, first, commune, dep, pc = p[7], p[8], p[37].title(), p[44], p[35]
        kind = i % 12
        if kind == 0:
            q = {"q": last}
        elif kind == 1:
            q = {"q": strip_accents(last).lower()}
        elif kind == 2:
            q = {"q": typo(rng, last.lower())}
        elif kind == 3:
            q = {"q": f"{first} {last}"}
        elif kind == 4:
            q = {"q": f"{last[:4]} {first[:3]}"}
        elif kind == 5:
            q = {"q": rng.choice(SPECIALTY_WORDS), "where": commune}
        elif kind == 6:
            q = {"q": f"{rng.choice(SPECIALTY_WORDS)} {commune}"}
        elif kind == 7 and orgs:
            o = orgs[i % len(orgs)]
            q = {"q": f"{o[7]} {o[18]}", "kind": "services"}
        elif kind == 8:
            q = {"q": rng.choice(SERVICE_WORDS), "where": commune}
        elif kind == 9:
            q = {"q": last, "where": dep}
        elif kind == 10:
            q = {"q": strip_accents(first).lower() + " " + typo(rng, strip_accents(last).lower()), "where": pc}
        else:
            q = {"q": rng.choice(SPECIALTY_WORDS), "kind": rng.choice(["professionals", "services", "all"])}
        queries.append(q)
    return queries


def run_import(url: str, data_dir: Path, files: list[Path]) -> dict[str, Any]:
    env = {**os.environ, "MONSISRA_DATABASE_URL": url, "MONSISRA_DATA_DIR": str(data_dir), "COLUMNS": "160"}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "monsisra.cli", "directory", "import", *map(str, files),
                                 "--json"], env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if proc.returncode != 0:
        Path("var/directory_bench_failure.log").write_text(stderr)
        reasons = [line for line in stderr.splitlines() if "Error" in line][:5]
        raise RuntimeError("import failed (var/directory_bench_failure.log): " + " | ".join(reasons))
    report = json.loads(stdout)
    report.pop("files", None)
    return {"wall_s": round(wall, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 1), "report": report}


async def run_searches(url: str, data_dir: Path, queries: list[dict[str, Any]]) -> dict[str, Any]:
    from monsisra.config import Settings
    from monsisra.services import directory
    from monsisra.services.core import Core

    core = Core(Settings(database_url=url, data_dir=data_dir))
    try:
        for q in queries[:50]:  # warm-up: caches, commune index
            await directory.search(core, None, **q)
        samples: list[float] = []
        by_kind: dict[str, list[float]] = {}
        empty = 0
        for i, q in enumerate(queries):
            t = time.perf_counter()
            r = await directory.search(core, None, **q)
            dt = time.perf_counter() - t
            samples.append(dt)
            by_kind.setdefault(f"k{i % 12}", []).append(dt)
            if r["professionals"]["total"] + r["services"]["total"] == 0:
                empty += 1
        return {"all": summary_ms(samples), "by_kind": {k: summary_ms(v) for k, v in sorted(by_kind.items())},
                "no_result": empty}
    finally:
        await core.close()


KIND_LABELS = {"k0": "surname as written", "k1": "surname, no accents, lower case", "k2": "surname with a typo",
               "k3": "first + last name", "k4": "name prefixes (4 + 3 letters)", "k5": "specialty + where=commune",
               "k6": "specialty + commune in q", "k7": "service + establishment (kind=services)",
               "k8": "service word + where=commune", "k9": "surname + where=department",
               "k10": "first + typo'd last, where=postcode", "k11": "specialty word alone, kind filter"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--people", type=int, default=500_000)
    parser.add_argument("--data", type=Path, default=Path("var/bench/directory"))
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgres"])
    parser.add_argument("--queries", type=int, default=1200)
    parser.add_argument("--name", default="directory")
    parser.add_argument("--merge", type=Path, help="results JSON of an earlier run whose other backends to keep")
    parser.add_argument("--search-only", metavar="URL", help="only the search part, on an already imported database")
    args = parser.parse_args()
    ps = next(args.data.glob("PS_LibreAcces_Personne_activite_*.txt"), None)
    mss = next(args.data.glob("Extraction_Correspondance_MSSante_*.txt"), None)
    if ps is None or mss is None:
        ps, mss = generate(args.people, args.data)
    n_people = sum(1 for _ in open(ps, encoding="utf-8")) - 1
    n_mss = sum(1 for _ in open(mss, encoding="utf-8")) - 1
    meta = new_meta()
    queries = make_queries(ps, mss, args.queries)
    results: dict[str, Any] = {"files": {"activity_lines": n_people, "mailbox_lines": n_mss,
                                         "ps_bytes": ps.stat().st_size, "mss_bytes": mss.stat().st_size},
                               "queries": len(queries), "backends": {}}
    if args.search_only:
        backend = "postgres" if args.search_only.startswith("postgresql") else "sqlite"
        search = asyncio.run(run_searches(args.search_only, Path("var"), queries))
        print(f"[{backend}] search {search['all']}", flush=True)
        results["backends"][backend] = {"search": search, "import": {"wall_s": "—", "cpu_s": "—", "peak_rss_mb": "—",
                                                                     "report": {}},
                                        "reimport": {"wall_s": "—", "report": {}}}
        args.backends = []
    for backend in args.backends:
        with tempfile.TemporaryDirectory(dir="var") as tmp, fresh_database(backend, Path(tmp)) as url:
            print(f"[{backend}] importing…", flush=True)
            first = run_import(url, Path(tmp) / "data", [ps, mss])
            print(f"[{backend}] first import {first['wall_s']} s, {first['peak_rss_mb']} MB", flush=True)
            again = run_import(url, Path(tmp) / "data", [ps, mss])
            print(f"[{backend}] same files again {again['wall_s']} s, {again['peak_rss_mb']} MB", flush=True)
            # Search in steady state, not while the kernel writes back the gigabyte just imported.
            os.sync()
            search = asyncio.run(run_searches(url, Path(tmp) / "data", queries))
            print(f"[{backend}] search {search['all']}", flush=True)
            results["backends"][backend] = {"import": first, "reimport": again, "search": search}
    if args.merge and args.merge.exists():
        earlier = json.loads(args.merge.read_text())
        for backend, r in earlier.get("backends", {}).items():
            results["backends"].setdefault(backend, {**r, "run": earlier["meta"]["date"]})
    meta["load_after"] = uptime()
    md = header("Directory at national scale: import and search", meta)
    md += [f"Data: generated by `bench/directory_generate.py` — {n_people:,} activity lines "
           f"({ps.stat().st_size / 1e6:.0f} MB), {n_mss:,} mailbox lines ({mss.stat().st_size / 1e6:.0f} MB).",
           "Import = `monsisra directory import` in a subprocess (parse, upsert, deactivate, rebuild the search "
           "index and typo vocabulary); peak RSS of that process from `wait4`.",
           f"Search = {len(queries)} mixed queries through `services.directory.search` (the function behind "
           "`GET /api/v1/directory/search`, both sections, limit 20), after 50 warm-up queries.", "",
           "| backend | import wall | import CPU | peak RSS | same files again | search p50 | p90 | p99 | max |"
           " no result |", "|---|---|---|---|---|---|---|---|---|---|"]
    for backend, r in results["backends"].items():
        s = r["search"]["all"]
        label = f"{backend} (run {r['run']})" if "run" in r else backend
        md.append(f"| {label} | {r['import']['wall_s']} s | {r['import']['cpu_s']} s | "
                  f"{r['import']['peak_rss_mb']} MB | {r['reimport']['wall_s']} s | {s['p50']} ms | {s['p90']} ms | "
                  f"{s['p99']} ms | {s['max']} ms | {r['search']['no_result']} |")
    md += ["", "Targets: import < 5 min and < 1 GB; search p99 < 50 ms.", "", "Per query family (p50 / p99 ms):", "",
           "| family | " + " | ".join(results["backends"]) + " |", "|---|" + "---|" * len(results["backends"])]
    for k, label in KIND_LABELS.items():
        cells = []
        for r in results["backends"].values():
            v = r["search"]["by_kind"].get(k)
            cells.append(f"{v['p50']} / {v['p99']}" if v else "—")
        md.append(f"| {label} | " + " | ".join(cells) + " |")
    md += ["", "Import reports:", ""]
    for backend, r in results["backends"].items():
        md.append(f"- {backend}: first {json.dumps(r['import']['report'])}; again "
                  f"{json.dumps(r['reimport']['report'])}")
    write_results(args.name, meta, md, results)
    print("\n".join(md))


if __name__ == "__main__":
    main()
