"""Conversation fan-out: one conversation with 50 participants, 500 live WebSocket clients (10 per
participant), p50/p99 from post to delivery on every socket.

Two set-ups, each on a fresh database, the app in its own process(es) as in production:

* ``one process``: SQLite, one uvicorn process holding all 500 sockets;
* ``two processes + Redis``: PostgreSQL, two processes behind no proxy, half of each
  participant's sockets on each; events cross through Redis pub/sub.

One participant posts ``--posts`` messages over HTTP (one after the other, a short pause between
them); for each, the time from just before the POST to the arrival of ``conversation.message`` on
each of the 500 sockets is one sample (so 500 × posts samples). The clients run in this process
on one asyncio loop: their own parsing is part of the figure (an upper bound). Target: p99 <
100 ms.

Run: ``.venv/bin/python -m bench.conversations_fanout [--posts 40] [--setups one,two]``
(``two`` needs MONSISRA_BENCH_POSTGRES_URL or the local PostgreSQL, and MONSISRA_TEST_REDIS_URL
or redis://127.0.0.1:6379/0).
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
from websockets.asyncio.client import connect

from bench.common import free_port, fresh_database, header, new_meta, percentile, summary_ms, write_results
from monsisra.config import Settings
from monsisra.services import accounts
from monsisra.services.core import Core

PARTICIPANTS = 50
SOCKETS_PER = 10
PASSWORD = "bench-password"
TARGET_P99_MS = 100.0
SERVE = """
import uvicorn
from monsisra.api.app import create_app
from monsisra.config import Settings
settings = Settings()
uvicorn.run(create_app(settings), host="127.0.0.1", port=settings.http_port, log_level="warning",
            ws="websockets-sansio")
"""


def start_server(url: str, data_dir: Path, redis: str | None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "MONSISRA_DATABASE_URL": url, "MONSISRA_DATA_DIR": str(data_dir),
           "MONSISRA_HTTP_PORT": str(port), "MONSISRA_SMTP_ENABLED": "false", "MONSISRA_RUN_WORKERS": "false",
           "MONSISRA_SECRET_KEY": "bench-secret-" + "k" * 32, "MONSISRA_TOTP_REQUIRED": "false",
           "MONSISRA_WS_MAX_PER_ACCOUNT": "50"}
    if redis:
        env["MONSISRA_REDIS_URL"] = redis
    proc = subprocess.Popen([sys.executable, "-c", SERVE], env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None or time.monotonic() > deadline:
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


async def run(bases: list[str], users: list[str], posts: int) -> dict[str, Any]:
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

        arrivals: dict[int, list[float]] = {}
        sockets = []
        for i, u in enumerate(users):
            for k in range(SOCKETS_PER):
                base = bases[(i * SOCKETS_PER + k) % len(bases)]
                ws = await connect(base.replace("http://", "ws://") + f"/api/v1/events?access_token={tokens[u]}",
                                   max_queue=None)
                hello = json.loads(await ws.recv())
                assert hello["type"] == "hello"
                sockets.append(ws)

        pending: dict[int, asyncio.Future] = {}
        waiting: dict[str, int] = {}

        async def reader(ws) -> None:
            async for raw in ws:
                now = time.perf_counter()
                if '"conversation.message"' not in raw:
                    continue
                event = json.loads(raw)
                if event.get("conversation_id") != conv_id:
                    continue
                body = event["message"]["body"]
                arrivals.setdefault(waiting.get(body, -1), []).append(now)
                idx = waiting.get(body)
                if idx is not None and len(arrivals[idx]) == len(sockets) and not pending[idx].done():
                    pending[idx].set_result(None)

        readers = [asyncio.create_task(reader(ws)) for ws in sockets]
        await asyncio.sleep(1.0)
        samples: list[float] = []
        post_ms: list[float] = []
        for n in range(posts):
            body = f"message {n}"
            waiting[body] = n
            pending[n] = asyncio.get_running_loop().create_future()
            t0 = time.perf_counter()
            r = await http.post(f"{bases[n % len(bases)]}/api/v1/conversations/{conv_id}/messages", headers=poster,
                                json={"body": body})
            post_ms.append((time.perf_counter() - t0) * 1000)
            r.raise_for_status()
            await asyncio.wait_for(pending[n], timeout=30)
            samples += [(t - t0) for t in arrivals[n]]
            await asyncio.sleep(0.05)
        for t in readers:
            t.cancel()
        for ws in sockets:
            await ws.close()
    return {"sockets": len(sockets), "posts": posts, "deliveries": len(samples),
            "post_to_delivery": summary_ms(samples), "p99_ms": percentile(samples, 99) * 1000,
            "http_post": summary_ms([m / 1000 for m in post_ms])}


def setup(kind: str, posts: int) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-fanout-"))
    backend = "sqlite" if kind == "one" else "postgres"
    redis = None if kind == "one" else os.environ.get("MONSISRA_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    with fresh_database(backend, tmp) as url:
        users = asyncio.run(make_people(url, tmp / "data"))
        procs = [start_server(url, tmp / "data", redis) for _ in range(1 if kind == "one" else 2)]
        try:
            result = asyncio.run(run([b for _, b in procs], users, posts))
        finally:
            for p, _ in procs:
                p.terminate()
            for p, _ in procs:
                p.wait(timeout=30)
    return {"setup": "one process (SQLite)" if kind == "one" else "two processes + Redis (PostgreSQL)", **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--posts", type=int, default=40)
    parser.add_argument("--setups", default="one,two")
    args = parser.parse_args()
    meta = new_meta()
    runs = [setup(kind, args.posts) for kind in args.setups.split(",")]
    out = header("Conversation fan-out: 50 participants, 500 WebSocket clients", meta)
    out += [f"Target: p99 from post to delivery on every socket < {TARGET_P99_MS:.0f} ms. Samples: one per socket "
            "per message (the clients share one asyncio loop in the bench process: their parsing is included).", "",
            "| set-up | sockets | messages | deliveries | p50 | p90 | p99 | max | HTTP POST p50 | verdict |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        d, h = r["post_to_delivery"], r["http_post"]
        out.append(f"| {r['setup']} | {r['sockets']} | {r['posts']} | {r['deliveries']} | {d['p50']:.1f} ms | "
                   f"{d['p90']:.1f} ms | {d['p99']:.1f} ms | {d['max']:.1f} ms | {h['p50']:.1f} ms | "
                   f"{'ok' if r['p99_ms'] < TARGET_P99_MS else 'over target'} |")
    write_results("conversations_fanout", meta, out, {"runs": runs})
    print("\n".join(out))


if __name__ == "__main__":
    main()
