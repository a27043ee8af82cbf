"""Conversation fan-out: one conversation with 50 participants, 500 live WebSocket clients (10 per
participant), p50/p99 from post to delivery on every socket.

Two set-ups, each on a fresh database, the app in its own process(es) as in production:

* ``one process``: SQLite, one uvicorn process holding all 500 sockets;
* ``two processes + Redis``: PostgreSQL, two processes behind no proxy, half of each
  participant's sockets on each; events cross through Redis pub/sub.

One participant posts ``--posts`` messages over HTTP (one after the other, a short pause between
them); for each, the time from just before the POST to the arrival of ``conversation.message`` on
each of the 500 sockets is one sample (so 500 × posts samples). The sockets are read by
``--clients`` processes (default 4), each on its own asyncio loop, so that 500 sockets parsed on
one loop do not measure the bench rather than the server; arrival times are read on the
system-wide monotonic clock, comparable between processes. Each post is also split: HTTP answer,
first and last socket reached. Before measuring, each server takes ``WARM_UP_POSTS`` posts in
another conversation (its first posts prepare its database connections). Target: p99 < 100 ms.

``--profile DIR`` runs each server under cProfile and writes ``DIR/<setup>-<pid>.prof``.

Run: ``.venv/bin/python -m bench.conversations_fanout [--posts 40] [--setups one,two] [--clients 4]``
(``one-deflate`` / ``two-deflate``: the servers with permessage-deflate, as ``monsisra serve`` ran
them before, to see what per-socket compression costs)
(``two`` needs MONSISRA_BENCH_POSTGRES_URL or the local PostgreSQL, and MONSISRA_TEST_REDIS_URL
or redis://127.0.0.1:6379/0).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import connect

from bench.common import (
    free_port,
    fresh_database,
    header,
    new_meta,
    percentile,
    summary_ms,
    uptime,
    write_results,
)
from monsisra.config import Settings
from monsisra.services import accounts
from monsisra.services.core import Core

PARTICIPANTS = 50
SOCKETS_PER = 10
PASSWORD = "bench-password"
TARGET_P99_MS = 100.0
SERVE = """
import os
import uvicorn
from monsisra.api.app import create_app
from monsisra.config import Settings
from monsisra.serving import settle_heap
settings = Settings()
async def settle(app, core):  # as `monsisra serve` does once it is up
    settle_heap()
def serve():
    app = create_app(settings)
    app.state.startup_hooks.append(settle)
    uvicorn.run(app, host="127.0.0.1", port=settings.http_port, log_level="warning",
                ws="websockets-sansio", ws_per_message_deflate=os.environ.get("BENCH_DEFLATE") == "1")
if os.environ.get("BENCH_PROFILE"):
    import cProfile
    import signal
    import sys
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # uvicorn re-raises it: leave cProfile a chance to write
    cProfile.run("serve()", os.environ["BENCH_PROFILE"] + f"-{os.getpid()}.prof")
else:
    serve()
"""


def start_server(url: str, data_dir: Path, redis: str | None, profile: str | None = None, deflate: bool = False
                 ) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "MONSISRA_DATABASE_URL": url, "MONSISRA_DATA_DIR": str(data_dir),
           "MONSISRA_HTTP_PORT": str(port), "MONSISRA_SMTP_ENABLED": "false", "MONSISRA_RUN_WORKERS": "false",
           "MONSISRA_SECRET_KEY": "bench-secret-" + "k" * 32, "MONSISRA_TOTP_REQUIRED": "false",
           "MONSISRA_WS_MAX_PER_ACCOUNT": "50"}
    if redis:
        env["MONSISRA_REDIS_URL"] = redis
    if profile:
        env["BENCH_PROFILE"] = profile
    env["BENCH_DEFLATE"] = "1" if deflate else "0"
    proc = subprocess.Popen([sys.executable, "-c", SERVE], env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 240  # a loaded machine takes its time to import the app
    while True:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.terminate()
            proc.wait(timeout=30)
            raise RuntimeError("server did not start")
        try:
            httpx.get(base + "/openapi.json", timeout=2)
            return proc, base
        except httpx.TransportError:
            time.sleep(0.1)


async def make_people(url: str, data_dir: Path) -> list[str]:
    core = Core(Settings(database_url=url, data_dir=data_dir, secret_key="bench-secret-" + "k" * 32,
                         smtp_enabled=False, run_workers=False))
    names = []
    try:
        for i in range(PARTICIPANTS):
            username = f"bench.p{i:02d}"
            await accounts.create_account(core, accounts.NewAccount(
                username=username, password=PASSWORD, first_name="Pro", last_name=f"Numero{i:02d}", civility="Dr"))
            names.append(username)
    finally:
        await core.close()
    return names


WARM_UP_POSTS = 5  # per server, in another conversation, not measured


def _message_number(raw: str) -> int | None:
    """The N of ``message N`` in a ``conversation.message`` event, read without parsing the JSON
    (the bench's own cost per socket stays small next to the server's)."""
    if '"conversation.message"' not in raw:
        return None
    at = raw.find(BODY_MARK)
    if at < 0:
        return None
    start = at + len(BODY_MARK)
    return int(raw[start:raw.index('"', start)])


BODY_MARK = '"body":"message '


async def _read_sockets(pairs: list[tuple[str, str]], ready: Any, progress: Any, stop: Any) -> None:
    """One client process: open its sockets, then note each message's arrival on each of them."""
    sockets = []
    for base, token in pairs:
        ws = await connect(base.replace("http://", "ws://") + f"/api/v1/events?access_token={token}", max_queue=None)
        hello = json.loads(await ws.recv())
        assert hello["type"] == "hello"
        sockets.append(ws)
    arrivals: dict[int, list[float]] = {}

    async def reader(ws) -> None:
        async for raw in ws:
            now = time.monotonic()
            n = _message_number(raw)
            if n is None:
                continue
            got = arrivals.setdefault(n, [])
            got.append(now)
            if len(got) == len(sockets):
                progress.put(("done", n))

    readers = [asyncio.create_task(reader(ws)) for ws in sockets]
    # The client's own full collections (its 125 sockets' objects) would add their pauses to the
    # measured latency: a browser holds one socket, not 125.
    gc.collect()
    gc.freeze()
    ready.put(len(sockets))
    await asyncio.get_running_loop().run_in_executor(None, stop.wait)
    for t in readers:
        t.cancel()
    for ws in sockets:
        await ws.close()
    progress.put(("arrivals", arrivals))


def client_process(pairs: list[tuple[str, str]], ready: Any, progress: Any, stop: Any) -> None:
    asyncio.run(_read_sockets(pairs, ready, progress, stop))


async def run(bases: list[str], users: list[str], posts: int, clients: int) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=60) as http:
        tokens = {}
        for u in users:
            r = await http.post(bases[0] + "/api/v1/auth/token", data={"username": u, "password": PASSWORD})
            r.raise_for_status()
            tokens[u] = r.json()["access_token"]
        poster = {"Authorization": f"Bearer {tokens[users[0]]}"}
        addresses = []
        for u in users:
            me = (await http.get(bases[0] + "/api/v1/me", headers={"Authorization": f"Bearer {tokens[u]}"})).json()
            addresses.append(me["mailboxes"][0]["address"])
        r = await http.post(bases[0] + "/api/v1/conversations", headers=poster,
                            json={"title": "Fan-out", "participants": addresses[1:]})
        r.raise_for_status()
        conv_id = r.json()["id"]
        # Each server's first posts open and prepare its database connections (asyncpg prepares
        # and introspects per connection: 70–290 ms once); steady state is what is measured.
        r = await http.post(bases[0] + "/api/v1/conversations", headers=poster,
                            json={"title": "Échauffement", "participants": addresses[1:2]})
        r.raise_for_status()
        warm_id = r.json()["id"]

        # Socket k of user i goes to server (i*10+k) % servers, and to client process (i*10+k) % clients.
        shares: list[list[tuple[str, str]]] = [[] for _ in range(clients)]
        for i, u in enumerate(users):
            for k in range(SOCKETS_PER):
                n = i * SOCKETS_PER + k
                shares[n % clients].append((bases[n % len(bases)], tokens[u]))
        mp = multiprocessing.get_context("spawn")
        ready, progress, stop = mp.Queue(), mp.Queue(), mp.Event()
        procs = [mp.Process(target=client_process, args=(share, ready, progress, stop), daemon=True)
                 for share in shares]
        for p in procs:
            p.start()
        loop = asyncio.get_running_loop()
        total = 0
        for _ in procs:
            total += await loop.run_in_executor(None, ready.get, True, 120)
        for base in bases:
            for _ in range(WARM_UP_POSTS):
                (await http.post(f"{base}/api/v1/conversations/{warm_id}/messages", headers=poster,
                                 json={"body": "échauffement"})).raise_for_status()
        await asyncio.sleep(1.0)
        starts: list[float] = []
        post_ms: list[float] = []
        try:
            for n in range(posts):
                t0 = time.monotonic()
                starts.append(t0)
                r = await http.post(f"{bases[n % len(bases)]}/api/v1/conversations/{conv_id}/messages",
                                    headers=poster, json={"body": f"message {n}"})
                post_ms.append((time.monotonic() - t0) * 1000)
                r.raise_for_status()
                for _ in procs:  # every client process has it on all its sockets
                    kind, got = await loop.run_in_executor(None, progress.get, True, 30)
                    assert kind == "done" and got == n, (kind, got)
                await asyncio.sleep(0.05)
        finally:
            stop.set()
        arrivals: dict[int, list[float]] = {}
        for _ in procs:
            kind, part = await loop.run_in_executor(None, progress.get, True, 60)
            assert kind == "arrivals"
            for n, times in part.items():
                arrivals.setdefault(n, []).extend(times)
        for p in procs:
            p.join(timeout=30)
    samples = [t - starts[n] for n in range(posts) for t in arrivals[n]]
    first = [min(arrivals[n]) - starts[n] for n in range(posts)]
    spread = [max(arrivals[n]) - min(arrivals[n]) for n in range(posts)]
    return {"sockets": total, "clients": clients, "posts": posts, "deliveries": len(samples),
            "post_to_delivery": summary_ms(samples), "p99_ms": percentile(samples, 99) * 1000,
            "http_post": summary_ms([m / 1000 for m in post_ms]), "first_socket": summary_ms(first),
            "first_to_last_socket": summary_ms(spread), "http_post_ms_each": [round(m, 1) for m in post_ms]}


def setup(kind: str, posts: int, clients: int, profile: str | None = None, deflate: bool = False) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-fanout-"))
    backend = "sqlite" if kind == "one" else "postgres"
    redis = None if kind == "one" else os.environ.get("MONSISRA_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    with fresh_database(backend, tmp) as url:
        users = asyncio.run(make_people(url, tmp / "data"))
        prof = f"{profile}/{kind}" if profile else None
        procs = [start_server(url, tmp / "data", redis, prof, deflate) for _ in range(1 if kind == "one" else 2)]
        try:
            result = asyncio.run(run([b for _, b in procs], users, posts, clients))
        finally:
            for p, _ in procs:
                p.terminate()
            for p, _ in procs:
                p.wait(timeout=30)
    name = "one process (SQLite)" if kind == "one" else "two processes + Redis (PostgreSQL)"
    return {"setup": name + (", with permessage-deflate" if deflate else ""), "deflate": deflate, **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--posts", type=int, default=40)
    parser.add_argument("--setups", default="one,two")
    parser.add_argument("--clients", type=int, default=4, help="client processes reading the 500 sockets")
    parser.add_argument("--profile", default=None, help="directory for the servers' cProfile output")
    args = parser.parse_args()
    meta = new_meta()
    # A set-up ending in "-deflate" runs its servers with permessage-deflate, as ``monsisra serve``
    # did before (uvicorn's default: each socket compresses each event on its own).
    runs: list[dict[str, Any]] = []
    for kind in args.setups.split(","):
        runs.append(setup(kind.removesuffix("-deflate"), args.posts, args.clients, args.profile,
                          kind.endswith("-deflate")))
        report(meta, runs, args.clients)  # after each set-up: a slow machine may not see the end


def report(meta: dict[str, Any], runs: list[dict[str, Any]], clients: int) -> None:
    meta["load_after"] = uptime()
    out = header("Conversation fan-out: 50 participants, 500 WebSocket clients", meta)
    out += [f"Target: p99 from post to delivery on every socket < {TARGET_P99_MS:.0f} ms. Samples: one per socket "
            f"per message; the sockets are read by {clients} client processes on the same machine.", "",
            "| set-up | sockets | messages | deliveries | p50 | p90 | p99 | max | HTTP POST p50 | first socket p50 | "
            "first→last socket p50 / p99 | verdict |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        d, h, f, sp = r["post_to_delivery"], r["http_post"], r["first_socket"], r["first_to_last_socket"]
        out.append(f"| {r['setup']} | {r['sockets']} | {r['posts']} | {r['deliveries']} | {d['p50']:.1f} ms | "
                   f"{d['p90']:.1f} ms | {d['p99']:.1f} ms | {d['max']:.1f} ms | {h['p50']:.1f} ms | "
                   f"{f['p50']:.1f} ms | {sp['p50']:.1f} / {sp['p99']:.1f} ms | "
                   f"{'ok' if r['p99_ms'] < TARGET_P99_MS else 'over target'} |")
    write_results("conversations_fanout", meta, out, {"runs": runs})
    print("\n".join(out))


if __name__ == "__main__":
    main()
