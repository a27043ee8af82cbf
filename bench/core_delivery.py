"""Delivery throughput: messages/s and deliveries/s through the service layer and HTTP.

For each engine (SQLite, PostgreSQL) and each fan-out (1 and 10 recipients), on a fresh
database each time:

* ``service``: ``messages.send`` called by N concurrent asyncio tasks on one ``Core``;
* ``http``: a real uvicorn server in a subprocess, N concurrent httpx clients with a bearer
  token posting ``/api/v1/messages``;
* ``lean`` (diagnosis only, NOT app code): a prototype of the same transaction (same checks,
  same rows, same events) written with one SQLAlchemy Core statement per table instead of the
  ORM unit of work and one ``UPDATE … RETURNING`` per recipient mailbox: what the service
  could reach on the same engine;
* beside each, the raw insert rate of the very same rows (messages, recipients, deliveries,
  read back from the measured run) into another fresh database with the app's engine settings
  (same SQLite pragmas: WAL + synchronous=FULL), by SQLAlchemy Core ``insert`` executemany:
  ``raw batch`` = 500 messages per transaction, ``raw 1 tx/msg`` = one transaction per message
  (the durability floor: one commit, one fsync per message, as the service does).

Deliveries/s counts recipient deliveries (a message to 10 recipients = 10 deliveries); the
sender's "sent" copy is an extra ``deliveries`` row, counted in ``rows/s``.

Run: ``.venv/bin/python -m bench.core_delivery [--scale 0.1] [--engines sqlite,postgres]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from bench.common import Corpus, free_port, fresh_database, header, new_meta, uptime, write_results
from monsisra.config import Settings
from monsisra.domain.clock import utcnow
from monsisra.domain.text import preview
from monsisra.services import accounts, messages
from monsisra.services.core import Actor, Core
from monsisra.store.db import Database
from monsisra.store.models import Delivery, Mailbox, MailboxAccess, Message, Recipient

PASSWORD = "bench-password"
RECIPIENT_NAMES = [("Bruno", "Petit"), ("Claire", "Roux"), ("Denis", "Faure"), ("Élise", "Chabert"),
                   ("Fabien", "Delmas"), ("Gaëlle", "Vigier"), ("Hugo", "Teyssier"), ("Inès", "Bouchet"),
                   ("Jérôme", "Chassagne"), ("Karine", "Pélissier")]
RAW_BATCH = 500


def settings_for(url: str, data_dir: Path) -> Settings:
    return Settings(database_url=url, data_dir=data_dir, smtp_enabled=False, run_workers=False,
                    http_port=free_port(), smtp_port=free_port(), secret_key="bench-secret-" + "x" * 40)


async def make_accounts(core: Core) -> tuple[Actor, int, list[str]]:
    """The sender (Dr Alice Martin) and 10 recipients; returns (actor, sender mailbox, addresses)."""
    account, mailbox = await accounts.create_account(core, accounts.NewAccount(
        username="alice.martin", password=PASSWORD, first_name="Alice", last_name="Martin", civility="Dr",
        profession="Médecin", specialty="Médecine générale"))
    addresses = []
    for first, last in RECIPIENT_NAMES:
        _, box = await accounts.create_account(core, accounts.NewAccount(
            username=f"{first.lower()}.{last.lower()}".replace("é", "e").replace("ë", "e").replace("è", "e")
            .replace("É", "e").replace("î", "i").replace("ï", "i").replace("ô", "o"),
            password=PASSWORD, first_name=first, last_name=last, civility="Dr", profession="Médecin"))
        assert box is not None
        addresses.append(box.address)
    assert mailbox is not None
    return Actor(account.id, account.username), mailbox.id, addresses


def compose_list(n: int, mailbox_id: int, addresses: list[str], seed: int) -> list[dict[str, Any]]:
    corpus = Corpus(seed)
    out = []
    for _ in range(n):
        category, subject, body = corpus.message()
        out.append({"from_mailbox": mailbox_id, "to": addresses[:1], "cc": addresses[1:], "subject": subject,
                    "body": body, "category": category})
    return out


async def service_send(core: Core, actor: Actor, c: dict[str, Any]) -> None:
    await messages.send(core, actor, messages.Compose(**c))


async def _run_in_process(send, url: str, data_dir: Path, n: int, fanout: int, concurrency: int) -> dict[str, Any]:
    """Time ``n`` sends through ``send(core, actor, compose)`` by ``concurrency`` tasks."""
    core = Core(settings_for(url, data_dir))
    await core.start()
    try:
        actor, box, addresses = await make_accounts(core)
        warm = compose_list(20, box, addresses[:fanout], seed=1)
        for c in warm:
            await send(core, actor, c)
        it = iter(compose_list(n, box, addresses[:fanout], seed=2))

        async def worker() -> None:
            for c in it:
                await send(core, actor, c)

        c0, t0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        await core.close()
    return {"messages": n, "seconds": elapsed, "warmup": len(warm), "cpu_ms_per_msg": round(cpu / n * 1000, 2)}


async def run_service(url: str, data_dir: Path, n: int, fanout: int, concurrency: int) -> dict[str, Any]:
    return await _run_in_process(service_send, url, data_dir, n, fanout, concurrency)


async def lean_send(core: Core, actor: Actor, c: dict[str, Any]) -> int:
    """Prototype of ``messages.send`` for local recipients with Core statements (bench only)."""
    from monsisra.services import mailboxes

    mb, msg_t, rcpt_t, dlv_t = Mailbox.__table__, Message.__table__, Recipient.__table__, Delivery.__table__
    addresses = [*c["to"], *c["cc"]]
    async with core.write() as tx:
        s = tx.session
        await mailboxes.access_of(s, actor, c["from_mailbox"])
        boxes = {r.address: r for r in (await s.execute(
            sa.select(mb.c.id, mb.c.address, mb.c.display_name)
            .where(sa.or_(mb.c.address.in_(addresses), mb.c.id == c["from_mailbox"]), mb.c.active.is_(True))
        )).all()}
        sender = next(r for r in boxes.values() if r.id == c["from_mailbox"])
        now = utcnow()
        mid = (await s.execute(sa.insert(msg_t).values(
            message_id=messages.new_message_id(core.settings.domain), from_mailbox_id=sender.id,
            author_account_id=actor.account_id, sender_address=sender.address, sender_name=sender.display_name,
            subject=c["subject"], body=c["body"], preview=preview(c["body"]), category=c["category"],
            created_at=now, sent_at=now, is_draft=False, has_attachments=False, origin="local",
            receipt_requested=False, no_reply=False,
            search_text=messages.build_search_text(c["subject"], c["body"], sender.display_name, sender.address, [],
                                                   mailbox_ids=[sender.id, *(boxes[a].id for a in addresses)]),
        ).returning(msg_t.c.id))).scalar_one()
        await s.execute(sa.update(msg_t).where(msg_t.c.id == mid).values(thread_id=mid))
        await s.execute(sa.insert(rcpt_t), [
            {"message_id": mid, "kind": "to" if a in c["to"] else "cc", "address": a,
             "display_name": boxes[a].display_name, "mailbox_id": boxes[a].id, "status": "delivered",
             "status_at": now, "attempts": 0} for a in addresses])
        ids = sorted({sender.id, *(boxes[a].id for a in addresses)})
        if not core.db.is_sqlite:
            # Lock the mailbox rows in id order (no deadlock), as allocate_uids does. NO KEY UPDATE, like
            # the UPDATE itself: a plain FOR UPDATE would conflict with the KEY SHARE locks the foreign
            # keys of the inserts above hold, and two concurrent sends would deadlock.
            await s.execute(sa.select(mb.c.id).where(mb.c.id.in_(ids)).order_by(mb.c.id)
                            .with_for_update(key_share=True))
        uids = {r.id: (r.next_uid - 1, r.modseq) for r in (await s.execute(
            sa.update(mb).where(mb.c.id.in_(ids)).values(next_uid=mb.c.next_uid + 1, modseq=mb.c.modseq + 1)
            .returning(mb.c.id, mb.c.next_uid, mb.c.modseq))).all()}
        placements = [(sender.id, "sent")] + [(boxes[a].id, "in") for a in addresses]
        await s.execute(sa.insert(dlv_t), [
            {"mailbox_id": m, "message_id": mid, "uid": uids[m][0], "role": role, "category": c["category"],
             "created_at": now, "read": role != "in", "favorite": False, "todo": False, "archived": False,
             "deleted": False, "modseq": uids[m][1]} for m, role in placements])
        owners: dict[int, list[int]] = {}
        for m, a in (await s.execute(sa.select(MailboxAccess.mailbox_id, MailboxAccess.account_id)
                                     .where(MailboxAccess.mailbox_id.in_(ids)))).all():
            owners.setdefault(m, []).append(a)
        for m, role in placements:
            tx.emit("message.new" if role == "in" else "message.stored", owners.get(m, []), mailbox_id=m,
                    message_id=mid, role=role, category=c["category"], subject=c["subject"])
            tx.emit("counts", owners.get(m, []), mailbox_ids=[m])
    return mid


async def run_lean(url: str, data_dir: Path, n: int, fanout: int, concurrency: int) -> dict[str, Any]:
    return await _run_in_process(lean_send, url, data_dir, n, fanout, concurrency)


async def run_http(url: str, data_dir: Path, n: int, fanout: int, concurrency: int) -> dict[str, Any]:
    settings = settings_for(url, data_dir)
    core = Core(settings)
    await core.start()
    try:
        _, box, addresses = await make_accounts(core)
    finally:
        await core.close()
    port = free_port()
    env = dict(os.environ, MONSISRA_DATABASE_URL=url, MONSISRA_DATA_DIR=str(data_dir),
               MONSISRA_SMTP_ENABLED="false", MONSISRA_RUN_WORKERS="false", MONSISRA_HTTP_PORT=str(port),
               MONSISRA_SMTP_PORT=str(free_port()), MONSISRA_SECRET_KEY=settings.secret_key or "")
    env.pop("MONSISRA_REDIS_URL", None)
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "monsisra.api.app:create_app", "--factory",
                             "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
                             "--no-access-log"], env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=60) as anon:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if (await anon.get("/openapi.json")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("server did not start")
                await asyncio.sleep(0.1)
            r = await anon.post("/api/v1/auth/token", data={"username": "alice.martin", "password": PASSWORD})
            r.raise_for_status()
            token = r.json()["access_token"]
        clients = [httpx.AsyncClient(base_url=base, timeout=60, headers={"Authorization": f"Bearer {token}"})
                   for _ in range(concurrency)]
        try:
            for c in compose_list(20, box, addresses[:fanout], seed=1):
                r = await clients[0].post("/api/v1/messages", json=c)
                assert r.status_code == 201, r.text
            it = iter(compose_list(n, box, addresses[:fanout], seed=2))

            async def worker(client: httpx.AsyncClient) -> None:
                for c in it:
                    r = await client.post("/api/v1/messages", json=c)
                    assert r.status_code == 201, r.text

            s0, c0, t0 = _proc_cpu(proc.pid), time.process_time(), time.perf_counter()
            await asyncio.gather(*(worker(c) for c in clients))
            elapsed = time.perf_counter() - t0
            server_cpu, client_cpu = _proc_cpu(proc.pid) - s0, time.process_time() - c0
        finally:
            for c in clients:
                await c.aclose()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    return {"messages": n, "seconds": elapsed, "warmup": 20, "cpu_ms_per_msg": round(server_cpu / n * 1000, 2),
            "client_cpu_ms_per_msg": round(client_cpu / n * 1000, 2)}


def _proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a process (the uvicorn server), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def read_rows(url: str) -> dict[str, list[dict[str, Any]]]:
    db = Database(url)
    try:
        async with db.read() as s:
            out = {}
            for model in (Message, Recipient, Delivery):
                table = model.__table__
                rows = (await s.execute(sa.select(table).order_by(table.c.id))).mappings().all()
                out[table.name] = [dict(r) for r in rows]
        return out
    finally:
        await db.dispose()


async def raw_insert(url: str, data_dir: Path, rows: dict[str, list[dict[str, Any]]], batch: int) -> float:
    """Seconds to insert ``rows`` with executemany, ``batch`` messages per transaction."""
    core = Core(settings_for(url, data_dir))
    await core.start()
    try:
        await make_accounts(core)  # same ids for mailboxes and accounts as in the measured run
    finally:
        await core.close()
    by_msg: dict[str, dict[int, list[dict[str, Any]]]] = {"recipients": {}, "deliveries": {}}
    for name in by_msg:
        for r in rows[name]:
            by_msg[name].setdefault(r["message_id"], []).append(r)
    msgs = rows["messages"]
    db = Database(url)
    engine = db.engine.execution_options(write=True)  # BEGIN IMMEDIATE on SQLite, as app writers
    tables = (Message.__table__, Recipient.__table__, Delivery.__table__)
    try:
        t0 = time.perf_counter()
        for i in range(0, len(msgs), batch):
            chunk = msgs[i:i + batch]
            ids = [m["id"] for m in chunk]
            async with engine.begin() as conn:
                await conn.execute(sa.insert(tables[0]), chunk)
                await conn.execute(sa.insert(tables[1]), [r for mid in ids for r in by_msg["recipients"].get(mid, [])])
                await conn.execute(sa.insert(tables[2]), [r for mid in ids for r in by_msg["deliveries"].get(mid, [])])
        return time.perf_counter() - t0
    finally:
        await db.dispose()


def one_scenario(engine: str, path: str, fanout: int, n: int, concurrency: int, tmp: Path) -> dict[str, Any]:
    data_dir = tmp / f"data_{engine}_{path}_{fanout}"
    data_dir.mkdir(parents=True, exist_ok=True)
    print(f"[{time.strftime('%H:%M:%S')}] {engine} {path} to {fanout}: {n} messages, {concurrency} clients",
          flush=True)
    with fresh_database(engine, tmp) as url:
        runner = {"service": run_service, "http": run_http, "lean": run_lean}[path]
        res = asyncio.run(runner(url, data_dir, n, fanout, concurrency))
        rows = asyncio.run(read_rows(url))
    total_msgs = len(rows["messages"])
    expected = total_msgs * (fanout + 1)
    assert len(rows["deliveries"]) == expected, (len(rows["deliveries"]), expected)
    raw = {}
    for label, batch in (("batch", RAW_BATCH), ("per_message", 1)):
        with fresh_database(engine, tmp) as url2:
            raw[label] = asyncio.run(raw_insert(url2, data_dir, rows, batch))
    msg_s = n / res["seconds"]
    out = {
        "engine": engine, "path": path, "recipients": fanout, "clients": concurrency, "messages": n,
        "seconds": round(res["seconds"], 3), "messages_per_s": round(msg_s, 1),
        "deliveries_per_s": round(msg_s * fanout, 1), "rows_per_s": round(msg_s * (1 + fanout + fanout + 1), 1),
        "cpu_ms_per_msg": res.get("cpu_ms_per_msg"), "client_cpu_ms_per_msg": res.get("client_cpu_ms_per_msg"),
        "raw_messages": total_msgs,
        "raw_batch_seconds": round(raw["batch"], 3),
        "raw_batch_deliveries_per_s": round(total_msgs * fanout / raw["batch"], 1),
        "raw_per_message_seconds": round(raw["per_message"], 3),
        "raw_per_message_deliveries_per_s": round(total_msgs * fanout / raw["per_message"], 1),
    }
    out["ratio_vs_raw_batch"] = round(out["deliveries_per_s"] / out["raw_batch_deliveries_per_s"], 3)
    out["ratio_vs_raw_per_message"] = round(out["deliveries_per_s"] / out["raw_per_message_deliveries_per_s"], 3)
    print(f"    {out['messages_per_s']} msg/s, {out['deliveries_per_s']} deliveries/s; raw batch "
          f"{out['raw_batch_deliveries_per_s']}/s, raw 1 tx/msg {out['raw_per_message_deliveries_per_s']}/s",
          flush=True)
    return out


def _cpu(r: dict[str, Any]) -> str:
    if r.get("cpu_ms_per_msg") is None:
        return "–"
    client = r.get("client_cpu_ms_per_msg")
    return f"{r['cpu_ms_per_msg']:.1f}" + (f" + {client:.1f}" if client is not None else "")


def render(meta: dict[str, Any], results: list[dict[str, Any]]) -> list[str]:
    md = header("Core messaging — delivery throughput", meta)
    md += [
        "Fresh database per row. `deliveries/s` = recipient deliveries (a message to 10 recipients = 10);",
        "each message also writes 1 `messages` row, N `recipients` rows and N+1 `deliveries` rows (the",
        "sender's sent copy). `raw batch` = the same rows (read back from the measured run) inserted with",
        f"SQLAlchemy Core `insert()` executemany on the same engine settings, {RAW_BATCH} messages per",
        "transaction; `raw 1 tx/msg` = the same, one transaction (one commit + fsync) per message, which is",
        "what a durable send must at least cost. Ratio = service or HTTP rate / raw rate.",
        "`lean` = NOT app code: a bench-only prototype of the same send transaction (same checks, rows and",
        "events) with one SQLAlchemy Core statement per table, to show what the service could reach.",
        "PostgreSQL runs with fsync=on, synchronous_commit=on (durable commits on both engines).",
        "",
        "`CPU ms/msg` = CPU time per message of the process doing the work (service/lean: the benchmark "
        "process, SQLite included; http: the uvicorn server, + the httpx clients' process after the slash).",
        "",
        "| engine | path | to | clients | messages | msg/s | deliveries/s | CPU ms/msg | raw batch deliv./s | "
        "ratio | raw 1 tx/msg deliv./s | ratio |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        md.append(f"| {r['engine']} | {r['path']} | {r['recipients']} | {r['clients']} | {r['messages']} | "
                  f"{r['messages_per_s']:,.0f} | **{r['deliveries_per_s']:,.0f}** | {_cpu(r)} | "
                  f"{r['raw_batch_deliveries_per_s']:,.0f} | {r['ratio_vs_raw_batch']:.1%} | "
                  f"{r['raw_per_message_deliveries_per_s']:,.0f} | {r['ratio_vs_raw_per_message']:.0%} |")
    md.append("")
    sqlite_best = max((r["deliveries_per_s"] for r in results if r["engine"] == "sqlite" and r["recipients"] == 10
                       and r["path"] in ("service", "http")), default=None)
    if sqlite_best is not None:
        verdict = "met" if sqlite_best >= 1000 else "MISSED"
        md.append(f"Target ≥ 1,000 deliveries/s on SQLite: **{verdict}** (best 10-recipient figure of the "
                  f"app, service or HTTP: {sqlite_best:,.0f}/s; the `lean` rows are a bench-only prototype).")
        md.append("")
    if meta.get("analysis"):  # hand-written reading of this run, kept in the .json beside the figures
        md += ["## Analysis", "", *meta["analysis"], ""]
    return md


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the default message counts")
    parser.add_argument("--engines", default="sqlite,postgres")
    parser.add_argument("--paths", default="service,http,lean")
    parser.add_argument("--clients", type=int, default=4, help="concurrent senders (tasks or HTTP clients)")
    parser.add_argument("--no-write", action="store_true", help="print only, do not write bench/results")
    parser.add_argument("--render", action="store_true", help="rewrite the .md from the last .json and exit")
    args = parser.parse_args()
    if args.render:
        import json

        from bench.common import RESULTS

        data = json.loads((RESULTS / "core_delivery.json").read_text())
        (RESULTS / "core_delivery.md").write_text("\n".join(render(data["meta"], data["results"])) + "\n")
        return
    meta = new_meta()
    counts = {1: max(10, int(2000 * args.scale)), 10: max(10, int(1000 * args.scale))}
    results = []
    with tempfile.TemporaryDirectory(prefix="monsisra_bench_", dir="/tmp") as tmpdir:
        tmp = Path(tmpdir)
        for engine in args.engines.split(","):
            for path in args.paths.split(","):
                for fanout in (1, 10):
                    clients = (args.clients,) if path == "http" else (1, args.clients)
                    for c in clients:
                        results.append(one_scenario(engine, path, fanout, counts[fanout], c, tmp))
    meta["load_after"] = uptime()
    md = render(meta, results)
    for line in md:
        print(line)
    if not args.no_write:
        write_results("core_delivery", meta, md, {"results": results})


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
