"""Four ``monsisra serve`` processes behind haproxy under a mixed load, with a crash and a restart.

What runs:
- PostgreSQL (a database of its own, ``monsisra_bench_core_<random>``, dropped at the end) and
  Redis (``redis://127.0.0.1:6379/<--redis-db>``), shared by four ``monsisra serve`` processes,
  each with its HTTP port and its SMTP gateway (STARTTLS, a test CA standing for IGC-Santé);
- Debian's haproxy in the foreground with a generated configuration: HTTP and WebSocket in
  ``mode http`` (``timeout tunnel``, ``X-Forwarded-For`` believed by the apps through
  ``MONSISRA_TRUSTED_PROXIES=127.0.0.1``), SMTP in ``mode tcp`` with a PROXY v2 header
  (``MONSISRA_SMTP_PROXY_PROTOCOL``: per-client limits see the client); health checks every 0.5 s,
  a request that could not connect to a server is tried on another (``retries``, ``redispatch``);
- the load (``bench.scale_out_client``, three processes): inbound SMTP letters with a 100 KB PDF
  from a trusted operator, ``POST /api/v1/messages`` sends (one To, one Cc), inbox reads,
  directory searches, and 1,000 WebSockets on ``/api/v1/events`` (10 per account) that reconnect
  when their server goes away, as the web page does.

During the run, at 40 % of it, one process is killed with SIGKILL and never restarted; at 65 %,
another is stopped gracefully (SIGTERM) and started again. At the end, every ``250`` and every
``201`` is looked up in the database (by Message-ID, by returned id) with its deliveries; every
request that failed is looked up too (refused, or delivered anyway: never acknowledged and
lost). Events: a socket that was connected from before a send until 30 s after its
acknowledgement is expected to have received its ``message.new``.

Run (as root, from the worktree; about duration + 2 minutes):
``.venv/bin/python -m bench.scale_out [--duration 600]`` — ``--duration 60`` to try it.
Writes ``bench/results/scale_out.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from bench.common import FIRST_NAMES, LAST_NAMES, fresh_database, header, new_meta, percentile, uptime, write_results

DOMAIN = "monsisra.localhost"
EXE = str(Path(sys.executable).parent / "monsisra")
PY = sys.executable
PROCESSES = 4
ACCOUNTS = 100
SOCKETS_PER_ACCOUNT = 10
WS_PROCESSES = 2  # generator processes holding the sockets (one fell minutes behind reading 1,000)
PEAK_FACTOR = 10
EVENT_WINDOW = 30.0  # seconds after an acknowledgement within which its event must reach a socket
CPU_TARGET = 0.7  # share of one core a process may use at peak
MESSAGES_PER_MAILBOX_DAY = 20  # received letters per mailbox and day, for the sizing table


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.2)


# --- processes -----------------------------------------------------------------------------------

def descendants(pid: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, parent in parents.items() if parent == p]
        out += kids
        todo += kids
    return out


def running(pid: int) -> bool:
    with contextlib.suppress(OSError, IndexError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return False


def proc_usage(pid: int) -> tuple[float, int]:
    """(CPU seconds, RSS bytes) of a process and its descendants (helpers included)."""
    tick = os.sysconf("SC_CLK_TCK")
    cpu, rss = 0.0, 0
    for p in [pid, *descendants(pid)]:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            cpu += sum(int(f) for f in fields[11:15]) / tick
            rss += int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    return cpu, rss


class Serve:
    """One ``monsisra serve`` process (restartable on the same ports)."""

    def __init__(self, index: int, env: dict[str, str], logdir: Path) -> None:
        self.index = index
        self.http_port, self.smtp_port = free_port(), free_port()
        self.env = {**env, "MONSISRA_HTTP_PORT": str(self.http_port), "MONSISRA_SMTP_PORT": str(self.smtp_port)}
        self.log = logdir / f"serve{index}.log"
        self.proc: subprocess.Popen | None = None
        self.cpu_done = 0.0  # CPU of earlier incarnations
        self.last_cpu = 0.0
        self.helpers: list[int] = []
        self.rss_max = 0

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([EXE, "serve", "--no-migrate"], env=self.env, stdout=log, stderr=log,
                                         start_new_session=True)

    def wait_up(self, timeout: float = 120) -> None:
        wait_until(lambda: port_open(self.http_port) and port_open(self.smtp_port), timeout,
                   f"serve {self.index}")

    def sample(self) -> tuple[float, int]:
        if self.proc is None or self.proc.poll() is not None:
            return self.cpu_done, 0
        cpu, rss = proc_usage(self.proc.pid)
        self.last_cpu = cpu
        self.rss_max = max(self.rss_max, rss)
        self.helpers = descendants(self.proc.pid)
        return self.cpu_done + cpu, rss

    def kill(self) -> None:
        assert self.proc is not None
        self.sample()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.cpu_done += self.last_cpu

    def stop(self, timeout: float = 60) -> float:
        """Graceful stop; returns the seconds it took."""
        assert self.proc is not None
        self.sample()
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.cpu_done += self.last_cpu
        return time.monotonic() - t0

    def leftovers(self) -> list[int]:
        return [p for p in self.helpers if running(p)]


def haproxy_config(serves: list[Serve], http_port: int, smtp_port: int) -> str:
    http_servers = "\n".join(f"    server s{s.index} 127.0.0.1:{s.http_port} check inter 500ms fall 2 rise 2"
                             for s in serves)
    # The gateways learn each client's address from a PROXY v2 header (MONSISRA_SMTP_PROXY_PROTOCOL):
    # their per-client limits count the operator, not the balancer.
    smtp_servers = "\n".join(f"    server s{s.index} 127.0.0.1:{s.smtp_port} send-proxy-v2 check check-send-proxy "
                             "inter 500ms fall 2 rise 2" for s in serves)
    return f"""global
    maxconn 8000
    log stdout format raw local0 err

defaults
    log global
    timeout connect 2s
    timeout client 120s
    timeout server 120s
    timeout tunnel 1h
    timeout client-fin 5s
    retries 3
    option redispatch
    retry-on conn-failure empty-response 503

frontend web
    mode http
    bind 127.0.0.1:{http_port}
    option forwardfor
    default_backend apps

backend apps
    mode http
    balance leastconn
{http_servers}

frontend mail
    mode tcp
    bind 127.0.0.1:{smtp_port}
    default_backend gateways

backend gateways
    mode tcp
    balance leastconn
{smtp_servers}
"""


# --- set-up --------------------------------------------------------------------------------------

async def populate(url: str, data_dir: Path, run: str) -> list[dict[str, Any]]:
    """The demo data (directory entries to search), the bench accounts and the trusted operator."""
    from monsisra.config import Settings
    from monsisra.services import accounts, demo, trust
    from monsisra.services.core import Core

    core = Core(Settings(database_url=url, data_dir=data_dir, domain=DOMAIN, smtp_enabled=False,
                         run_workers=False, secret_key="bench-secret-" + "x" * 40))
    await core.start()
    try:
        await demo.load(core)
        await trust.add(core, ["autre-operateur.localhost"], "bench")
        out = []
        for i in range(ACCOUNTS):
            first, last = FIRST_NAMES[i % len(FIRST_NAMES)], LAST_NAMES[(i * 7) % len(LAST_NAMES)]
            username = f"charge{run}{i}"
            # No password (argon2 a hundred times is minutes on this loaded box): a token issued here.
            account, box = await accounts.create_account(core, accounts.NewAccount(
                username=username, password=None, first_name=first, last_name=f"{last}{i}",
                civility="Dr", profession="Médecin"))
            assert box is not None
            out.append({"username": username, "account_id": account.id, "mailbox_id": box.id,
                        "address": box.address, "token": await accounts.issue_token(core, account)})
        return out
    finally:
        await core.close()


# --- accounting ----------------------------------------------------------------------------------

async def look_up(url: str, api_ids: list[int], subjects: list[str], message_ids: list[str]) -> dict[str, Any]:
    """Deliveries (role ``in``) per message, by returned id, by subject and by Message-ID."""
    import asyncpg
    import sqlalchemy as sa

    u = sa.make_url(url)
    conn = await asyncpg.connect(user=u.username or "postgres", host=u.host, port=u.port or 5432,
                                 database=u.database)
    try:
        base = ("SELECT {key}, count(d.id) FROM messages m LEFT JOIN deliveries d ON d.message_id = m.id "
                "AND d.role = 'in' WHERE {key} = ANY($1) GROUP BY {key}")
        by_id = dict(await conn.fetch(base.format(key="m.id"), api_ids))
        by_subject = dict(await conn.fetch(base.format(key="m.subject"), subjects))
        by_mid = dict(await conn.fetch(base.format(key="m.message_id"), message_ids))
        messages = await conn.fetchval("SELECT count(*) FROM messages")
    finally:
        await conn.close()
    return {"by_id": by_id, "by_subject": by_subject, "by_mid": by_mid, "messages": messages}


def account_for(records: list[list[Any]], lookup: dict[str, Any]) -> dict[str, Any]:
    """Acknowledged and stored, acknowledged and lost, failed but stored, failed and not stored."""
    out: dict[str, Any] = {}
    for op in ("smtp", "send"):
        rows = [r for r in records if r[0] == op]
        acked = [r for r in rows if r[3] == "ok"]
        failed = [r for r in rows if r[3] != "ok"]

        def stored(r: list[Any], op: str = op) -> int:
            if op == "smtp":
                return lookup["by_mid"].get(r[4], 0)
            return lookup["by_id"].get(r[4], 0) if r[4] is not None else lookup["by_subject"].get(r[5], 0)

        lost = [r for r in acked if stored(r) < len(r[6])]
        out[op] = {"acknowledged": len(acked), "acknowledged_and_stored": len(acked) - len(lost),
                   "acknowledged_and_lost": len(lost), "lost_examples": [r[4:6] for r in lost[:5]],
                   "failed": len(failed), "failed_but_delivered": sum(1 for r in failed if stored(r) > 0),
                   "failed_not_delivered": sum(1 for r in failed if stored(r) == 0)}
    return out


def events_check(ws: dict[str, Any], records: list[list[Any]], accounts: list[dict[str, Any]],
                 start_at: float) -> dict[str, Any]:
    """Expected: each socket of a recipient connected from before the request until EVENT_WINDOW
    after its acknowledgement. Received: that socket got ``message.new`` naming the message."""
    by_address = {a["address"]: i for i, a in enumerate(accounts)}
    sockets_of: dict[int, list[int]] = {}
    for sock in range(ws["sockets"]):
        sockets_of.setdefault(sock % len(accounts), []).append(sock)
    intervals: dict[int, list[tuple[float, float]]] = {}
    for sock, _ai, opened, closed, _why in ws["intervals"]:
        intervals.setdefault(sock, []).append((opened, closed))
    got: set[tuple[int, Any]] = set()
    for sock, _ai, mid, subject, _t in ws["events"]:
        got.add((sock, mid))
        got.add((sock, subject))
    expected = received = 0
    missed_by_minute: dict[str, int] = {}
    latency: list[float] = []
    first_seen: dict[tuple[int, Any], float] = {}
    for sock, _ai, _mid, subject, t in ws["events"]:
        first_seen.setdefault((sock, subject), t)
    for r in records:
        if r[0] not in ("smtp", "send") or r[3] != "ok":
            continue
        t_start, t_ack = r[1], r[1] + r[2]
        key = r[4] if r[0] == "send" else r[5]
        for address in r[6]:
            for sock in sockets_of.get(by_address[address], []):
                if any(o <= t_start and c >= t_ack + EVENT_WINDOW for o, c in intervals.get(sock, [])):
                    expected += 1
                    if (sock, key) not in got:
                        minute = str(int((t_start - start_at) // 60))
                        missed_by_minute[minute] = missed_by_minute.get(minute, 0) + 1
                    else:
                        received += 1
                        seen = first_seen.get((sock, r[5]))
                        if seen is not None:
                            latency.append(max(0.0, seen - t_start))
    return {"expected": expected, "received": received, "missed": expected - received,
            "message_new_total": len(ws["events"]), "missed_by_minute_of_request": missed_by_minute,
            "request_to_event_ms_p50": round(percentile(latency, 50) * 1000, 1) if latency else None,
            "request_to_event_ms_p99": round(percentile(latency, 99) * 1000, 1) if latency else None}


def failure_kinds(failures: list[list[Any]]) -> dict[str, int]:
    kinds: dict[str, int] = {}
    for _sock, _t, why in failures:
        kinds[why[:60]] = kinds.get(why[:60], 0) + 1
    return dict(sorted(kinds.items(), key=lambda kv: -kv[1])[:8])


def op_stats(records: list[list[Any]], seconds: float) -> dict[str, Any]:
    out = {}
    for op in ("smtp", "send", "inbox", "search"):
        rows = [r for r in records if r[0] == op]
        ok = [r[2] * 1000 for r in rows if r[3] == "ok"]
        kinds: dict[str, int] = {}
        for r in rows:
            if r[3] != "ok":
                kinds[r[3]] = kinds.get(r[3], 0) + 1
        out[op] = {"ok": len(ok), "errors": sum(kinds.values()), "error_kinds": kinds,
                   "per_second": round(len(ok) / seconds, 2),
                   "p50_ms": round(percentile(ok, 50), 1) if ok else None,
                   "p99_ms": round(percentile(ok, 99), 1) if ok else None,
                   "max_ms": round(max(ok), 1) if ok else None}
    return out


def in_flight(records: list[list[Any]], faults: list[dict[str, Any]]) -> dict[str, int]:
    """Failed requests by whether they overlapped a fault (± 5 s: health checks take ~1 s to see
    a server down, a graceful stop closes its keep-alive connections)."""
    near = far = 0
    for r in records:
        if r[3] == "ok":
            continue
        t0, t1 = r[1], r[1] + r[2]
        if any(f["at"] - 5 <= t1 and t0 <= f["until"] + 5 for f in faults):
            near += 1
        else:
            far += 1
    return {"near_a_fault": near, "elsewhere": far}


# --- report --------------------------------------------------------------------------------------

def sizing(stats: dict[str, Any], serve_cpu: float, seconds: float) -> dict[str, Any]:
    delivered = stats["smtp"]["ok"] + stats["send"]["ok"]
    reads = stats["inbox"]["ok"] + stats["search"]["ok"]
    cpu_per_message = serve_cpu / max(delivered, 1)
    peak_per_second = CPU_TARGET / cpu_per_message if cpu_per_message else 0.0
    per_day = peak_per_second * 86400 / PEAK_FACTOR
    return {"serve_cpu_seconds": round(serve_cpu, 1), "messages": delivered, "reads_and_searches": reads,
            "reads_per_message": round(reads / max(delivered, 1), 2),
            "serve_cpu_ms_per_message_with_its_share": round(cpu_per_message * 1000, 1),
            "peak_messages_per_second_per_process": round(peak_per_second, 1),
            "messages_per_day_per_process": int(per_day),
            "mailboxes_per_process": int(per_day / MESSAGES_PER_MAILBOX_DAY)}


def render(meta: dict[str, Any], data: dict[str, Any]) -> list[str]:
    md = header("Scale-out: four processes behind haproxy under a mixed load", meta)
    cfg = data["config"]
    md += [
        f"Four `monsisra serve` processes on one PostgreSQL database and one Redis, behind HAProxy "
        f"{data['haproxy_version']} (HTTP + WebSocket in `mode http`, SMTP in `mode tcp`), "
        f"{cfg['duration']} s of mixed load from {2 + WS_PROCESSES} generator processes on the same machine: "
        f"{cfg['smtp_connections']} SMTP connections sending letters with a 100 KB PDF (STARTTLS, one or two "
        f"local recipients), {cfg['senders']} API senders (`POST /api/v1/messages`, To + Cc), {cfg['readers']} "
        f"inbox readers (`view=inbox&limit=50`), {cfg['searchers']} directory searchers, each in a closed loop "
        f"(next request when the answer comes), and {cfg['sockets']} WebSockets on `/api/v1/events` "
        f"({SOCKETS_PER_ACCOUNT} per account, {ACCOUNTS} accounts).",
        "",
        "**The machine has 2 cores, shared by the four servers, PostgreSQL, Redis, HAProxy, the load generator "
        "and other engineers' work** (load averages above): the figures are what this box sustains with "
        "everything on it, not one process's ceiling.",
        "",
        "## Faults", "",
    ]
    for f in data["faults"]:
        md.append(f"- at {f['at_s']:.0f} s: {f['what']}" + (f" ({f['detail']})" if f.get("detail") else ""))
    md += ["", "## Operations", "",
           "| operation | ok | per second | p50 ms | p99 ms | max ms | errors (by kind) |",
           "|---|---|---|---|---|---|---|"]
    names = {"smtp": "SMTP letter (100 KB PDF)", "send": "API send (201)", "inbox": "inbox read",
             "search": "directory search"}
    for op, s in data["operations"].items():
        kinds = ", ".join(f"{k}: {v}" for k, v in s["error_kinds"].items()) or "0"
        md.append(f"| {names[op]} | {s['ok']} | {s['per_second']} | {s['p50_ms']} | {s['p99_ms']} | {s['max_ms']} | "
                  f"{kinds} |")
    fl = data["errors_vs_faults"]
    md += ["", f"Failed requests overlapping a fault (±5 s): {fl['near_a_fault']}; elsewhere: {fl['elsewhere']} "
               "(target 0).", f"SMTP connections that could not be opened: {data['smtp_connect_errors']}.", "",
           "## Every message accounted for", "",
           "| path | acknowledged | found delivered | acknowledged and lost | failed | failed but delivered | "
           "failed, not delivered |", "|---|---|---|---|---|---|---|"]
    for op, a in data["accounting"].items():
        md.append(f"| {'SMTP 250' if op == 'smtp' else 'API 201'} | {a['acknowledged']} | "
                  f"{a['acknowledged_and_stored']} | **{a['acknowledged_and_lost']}** | {a['failed']} | "
                  f"{a['failed_but_delivered']} | {a['failed_not_delivered']} |")
    md += ["", "A message is found delivered when the database holds it (by returned id, or by Message-ID for "
               "SMTP) with one `in` delivery per recipient. A failed request is looked up by its unique subject "
               "(API) or Message-ID (SMTP): delivered anyway, or not at all — either is allowed, acknowledged and "
               "lost is not.", ""]
    ev = data["events"]
    md += ["## Live events", "",
           f"- Sockets: {cfg['sockets']} opened (connected at load start: {data['ws']['connected_at_start']}), "
           f"{data['ws']['reconnections']} reconnections after their server went away, "
           f"{data['ws']['open_failures']} failed opening attempts "
           f"({', '.join(f'{k}: {v}' for k, v in data['ws']['open_failure_kinds'].items()) or 'none'}).",
           f"- `message.new` expected on sockets connected from before the request to {EVENT_WINDOW:.0f} s after its "
           f"acknowledgement: **{ev['expected']}, received {ev['received']}, missed {ev['missed']}** "
           f"({ev['message_new_total']} `message.new` frames in all).",
           "- Missed, by minute of the run in which the request started: "
           f"{ev['missed_by_minute_of_request'] or 'none'}.",
           f"- Request start to event read by the generator: p50 {ev['request_to_event_ms_p50']} ms, "
           f"p99 {ev['request_to_event_ms_p99']} ms (includes the generator's own lag in reading its sockets).", "",
           "## Processes", "",
           "| process | CPU s (all incarnations) | peak RSS MB (with helpers) | fate |", "|---|---|---|---|"]
    for p in data["processes"]:
        md.append(f"| serve {p['index']} | {p['cpu_s']} | {p['rss_max_mb']} | {p['fate']} |")
    md += [f"| haproxy | {data['haproxy_cpu_s']} | {data['haproxy_rss_mb']} | |",
           f"| load generator ({2 + WS_PROCESSES} processes) | {data['generator_cpu_s']} | | |", ""]
    sz = data["sizing"]
    md += ["## Sizing", "",
           f"Server CPU during the load (four servers with their helpers, the sockets' ramp-up excluded): "
           f"{sz['serve_cpu_seconds']} s for "
           f"{sz['messages']} delivered messages and {sz['reads_and_searches']} reads and searches "
           f"({sz['reads_per_message']} per message) and the sockets: "
           f"**{sz['serve_cpu_ms_per_message_with_its_share']} "
           "ms of CPU per message with its share of reads, searches and events**. One process is one event "
           f"loop, at most one core; at {int(CPU_TARGET * 100)} % of a core at peak and a peak {PEAK_FACTOR}× the "
           f"daily average, with {MESSAGES_PER_MAILBOX_DAY} received letters per mailbox and day:", "",
           "| per process | value |", "|---|---|",
           f"| peak messages per second | {sz['peak_messages_per_second_per_process']} |",
           f"| messages per day | {sz['messages_per_day_per_process']:,} |",
           f"| mailboxes (at {MESSAGES_PER_MAILBOX_DAY} letters a day each) | {sz['mailboxes_per_process']:,} |", "",
           "PostgreSQL's CPU is not in these figures (it runs beside them on the same two cores); on a real "
           "deployment it has its own machine. National scale (about 535,000 mailboxes) divided by the "
           "mailboxes per process gives the processes to plan, plus one for a process lost.", ""]
    if data.get("notes"):
        md += ["## Notes", "", *[f"- {n}" for n in data["notes"]], ""]
    return md


# --- main ----------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=600, help="seconds of load (default 600)")
    ap.add_argument("--redis-db", type=int, default=13, help="Redis database number (tests use 0)")
    ap.add_argument("--smtp-connections", type=int, default=4)
    ap.add_argument("--senders", type=int, default=4)
    ap.add_argument("--readers", type=int, default=4)
    ap.add_argument("--searchers", type=int, default=2)
    ap.add_argument("--ramp", type=int, default=60, help="seconds for the sockets to connect before the load")
    ap.add_argument("--output", default="scale_out", help="results name under bench/results/")
    args = ap.parse_args()
    from tests.gateway_support import PKI

    meta = new_meta()
    run = uuid.uuid4().hex[:6]
    tmp = Path(tempfile.mkdtemp(prefix="monsisra-scale-out-"))
    pki = PKI.create(tmp / "pki")
    cert, key = pki.issue("monsisra", ["localhost", DOMAIN, "127.0.0.1"])
    serves: list[Serve] = []
    clients: list[subprocess.Popen] = []
    notes: list[str] = []
    procs: dict[str, Any] = {"haproxy": None}

    def shutdown() -> None:
        """Everything started here ends (before the database is dropped under it)."""
        for c in clients:
            if c.poll() is None:
                c.kill()
                c.wait()
        haproxy = procs["haproxy"]
        if haproxy is not None and haproxy.poll() is None:
            haproxy.terminate()
            haproxy.wait(timeout=30)
        for s in serves:
            if s.proc is not None and s.proc.poll() is None:
                s.stop()
            for p in s.leftovers():
                with contextlib.suppress(OSError):
                    os.kill(p, signal.SIGKILL)

    try:
        with fresh_database("postgres", tmp) as url, contextlib.ExitStack() as stack:
            stack.callback(shutdown)
            print(f"database ready; populating ({ACCOUNTS} accounts, demo data)", flush=True)
            accounts = asyncio.run(populate(url, tmp / "data", run))
            env = {**os.environ, "MONSISRA_DATABASE_URL": url, "MONSISRA_DATA_DIR": str(tmp / "data"),
                   "MONSISRA_DOMAIN": DOMAIN, "MONSISRA_REDIS_URL": f"redis://127.0.0.1:6379/{args.redis_db}",
                   "MONSISRA_SECRET_KEY": "bench-secret-" + "x" * 40, "MONSISRA_HTTPS_PORT": "0",
                   "MONSISRA_IMAP_PORT": "0", "MONSISRA_IMAPS_PORT": "0", "MONSISRA_SUBMISSION_PORT": "0",
                   "MONSISRA_SUBMISSIONS_PORT": "0", "MONSISRA_TLS_CERT": str(cert), "MONSISRA_TLS_KEY": str(key),
                   "MONSISRA_TLS_TRUST": str(pki.ca_cert), "MONSISRA_TRUSTED_PROXIES": "127.0.0.1",
                   "MONSISRA_TOTP_REQUIRED": "false", "MONSISRA_TURN_URL": "turn:127.0.0.1:3478",
                   "MONSISRA_TURN_SECRET": "bench", "MONSISRA_SMTP_PROXY_PROTOCOL": "true",
                   # The generator is one client sending far more than an operator would: not throttled.
                   "MONSISRA_SMTP_MAX_MESSAGES_PER_MINUTE": "1000000"}
            serves = [Serve(i + 1, env, tmp) for i in range(PROCESSES)]
            for s in serves:
                s.start()
            for s in serves:
                s.wait_up()
            http_port, smtp_port = free_port(), free_port()
            (tmp / "haproxy.cfg").write_text(haproxy_config(serves, http_port, smtp_port))
            haproxy_log = (tmp / "haproxy.log").open("ab")
            haproxy = procs["haproxy"] = subprocess.Popen(
                ["/usr/sbin/haproxy", "-db", "-f", str(tmp / "haproxy.cfg")], stdout=haproxy_log, stderr=haproxy_log,
                start_new_session=True)
            wait_until(lambda: port_open(http_port) and port_open(smtp_port), 30, "haproxy")
            base = f"http://127.0.0.1:{http_port}"
            wait_until(lambda: httpx.get(base + "/openapi.json", timeout=10).status_code == 200, 60, "the apps")
            terms = sorted({a["address"].split("@")[0].split(".")[-1][:5] for a in accounts[:20]}
                           | {"martin", "cardio", "aurillac", "clermont", "infirm", "petit", "roux", "hemostase"})
            start_at = time.time() + args.ramp
            common = {"run": run, "http": base, "smtp_port": smtp_port, "ca_file": str(pki.ca_cert),
                      "accounts": accounts, "start_at": start_at, "duration": args.duration,
                      "search_terms": terms}
            plans = [
                *({**common, "role": f"ws-{k}", "sockets_per_account": SOCKETS_PER_ACCOUNT,
                   "grace": EVENT_WINDOW + 5, "part": k, "parts": WS_PROCESSES, "seed": 1}
                  for k in range(WS_PROCESSES)),
                {**common, "role": "smtp", "connections": args.smtp_connections, "seed": 2},
                {**common, "role": "api", "senders": args.senders, "readers": args.readers,
                 "searchers": args.searchers, "seed": 3},
            ]
            for p in plans:
                p["out"] = str(tmp / f"out-{p['role']}.json")
                (tmp / f"plan-{p['role']}.json").write_text(json.dumps(p))
                plan_file = str(tmp / f"plan-{p['role']}.json")
                clients.append(subprocess.Popen([PY, "-m", "bench.scale_out_client", plan_file],
                                                cwd=Path(__file__).parent.parent,
                                                stderr=(tmp / f"client-{p['role']}.log").open("ab")))
            print(f"load from {time.strftime('%H:%M:%S', time.localtime(start_at))} for {args.duration} s", flush=True)
            faults: list[dict[str, Any]] = []
            samples: list[dict[str, Any]] = []
            kill_at = start_at + 0.40 * args.duration
            restart_at = start_at + 0.65 * args.duration
            killed = restarted = False
            victim, bounced = serves[0], serves[1]
            orphans: list[int] = []
            cpu_at_start: float | None = None
            while time.time() < start_at + args.duration + 10:
                now = time.time()
                if cpu_at_start is None and now >= start_at:
                    cpu_at_start = sum(s.sample()[0] for s in serves)
                if not killed and now >= kill_at:
                    victim.kill()
                    helpers = list(victim.helpers)
                    killed = True
                    faults.append({"at": now, "until": now, "at_s": now - start_at,
                                   "what": f"serve {victim.index} killed with SIGKILL, not restarted"})
                    print(f"killed serve {victim.index}", flush=True)
                    time.sleep(5)
                    # What the killed process had started must not outlive it (ports, memory).
                    orphans = [p for p in helpers if running(p)]
                if not restarted and now >= restart_at:
                    took = bounced.stop()
                    bounced.start()
                    bounced.wait_up()
                    restarted = True
                    faults.append({"at": now, "until": time.time(), "at_s": now - start_at,
                                   "what": f"serve {bounced.index} stopped (SIGTERM) and started again",
                                   "detail": f"stop took {took:.1f} s, back listening {time.time() - now:.1f} s "
                                             "after the stop began"})
                    print(f"restarted serve {bounced.index}", flush=True)
                samples.append({"t": round(now - start_at, 1), "load": os.getloadavg(),
                                "serves": [s.sample() for s in serves]})
                time.sleep(max(0.0, min(5.0, start_at - time.time())) if cpu_at_start is None else 5)
            for c in clients:
                c.wait(timeout=120)
            hap_cpu, hap_rss = proc_usage(haproxy.pid)
            final = [s.sample() for s in serves]
            shutdown()
            meta["load_after"] = uptime()
            outs = {p["role"]: json.loads(Path(p["out"]).read_text()) for p in plans}
            records = outs["smtp"]["records"] + outs["api"]["records"]
            lookup = asyncio.run(look_up(
                url, [r[4] for r in records if r[0] == "send" and r[4] is not None],
                [r[5] for r in records if r[0] == "send"], [r[4] for r in records if r[0] == "smtp"]))
            gen_cpu = sum(o["cpu_s"] for o in outs.values())
            parts = [outs[f"ws-{k}"] for k in range(WS_PROCESSES)]
            ws = {"intervals": [i for o in parts for i in o["intervals"]],
                  "events": [e for o in parts for e in o["events"]],
                  "failures": [f for o in parts for f in o["failures"]], "sockets": parts[0]["sockets"]}
            closed_early = [i for i in ws["intervals"] if i[4] != "end of run"]
            at_start = sum(1 for i in ws["intervals"] if i[2] <= start_at <= i[3])
            stats = op_stats(records, args.duration)
            serve_cpu = sum(cpu for cpu, _ in final) - (cpu_at_start or 0.0)
            if orphans:
                notes.append(f"processes started by the killed server still running 5 s after it: {orphans} "
                             "(killed at the end)")
            else:
                notes.append("nothing the killed server had started (parsing helpers) outlived it")
            data = {
                "config": {"duration": args.duration, "smtp_connections": args.smtp_connections,
                           "senders": args.senders, "readers": args.readers, "searchers": args.searchers,
                           "sockets": ws["sockets"], "accounts": ACCOUNTS, "redis_db": args.redis_db},
                "haproxy_version": subprocess.run(["/usr/sbin/haproxy", "-v"], capture_output=True,
                                                  text=True).stdout.split()[2],
                "faults": [{k: (round(v, 1) if isinstance(v, float) else v) for k, v in f.items()} for f in faults],
                "operations": stats,
                "errors_vs_faults": in_flight(records, faults),
                "smtp_connect_errors": len(outs["smtp"]["connect_errors"]),
                "accounting": account_for(records, lookup),
                "messages_in_database": lookup["messages"],
                "events": events_check(ws, records, accounts, start_at),
                "ws": {"connected_at_start": at_start, "reconnections": len(closed_early),
                       "open_failures": len(ws["failures"]),
                       "open_failure_kinds": failure_kinds(ws["failures"]),
                       "close_reasons": sorted({i[4] for i in closed_early})[:10]},
                "processes": [{"index": s.index, "cpu_s": round(cpu, 1), "rss_max_mb": round(s.rss_max / 2**20),
                               "fate": "killed (SIGKILL)" if s is victim else
                               "restarted" if s is bounced else "ran throughout"}
                              for s, (cpu, _) in zip(serves, final, strict=True)],
                "haproxy_cpu_s": round(hap_cpu, 1), "haproxy_rss_mb": round(hap_rss / 2**20),
                "generator_cpu_s": round(gen_cpu, 1),
                "sizing": sizing(stats, serve_cpu, args.duration),
                "samples": samples,
                "error_examples": [r for r in records if r[3] != "ok"][:20],
                "notes": notes,
            }
            md = render(meta, data)
            write_results(args.output, meta, md, data)
            print("\n".join(md), flush=True)
    finally:
        shutdown()
        keep = Path(tempfile.gettempdir()) / f"scale-out-logs-{run}"
        keep.mkdir(exist_ok=True)
        for log in tmp.glob("*.log"):
            subprocess.run(["cp", str(log), str(keep)], check=False)
        print(f"server, haproxy and generator logs kept in {keep}", flush=True)
        subprocess.run(["rm", "-rf", str(tmp)], check=False)


if __name__ == "__main__":
    main()
