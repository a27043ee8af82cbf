"""Load-generator processes of ``bench.scale_out`` (one role each, so that the generator is not
the bottleneck of one event loop): ``smtp`` (inbound MSSanté mail with a 100 KB PDF), ``api``
(sends, inbox reads, directory searches) and ``ws`` (the live-event sockets).

Each reads its plan from a JSON file, runs until ``start_at + duration`` and writes what it saw
(one record per operation, one per received event, each socket's connected intervals) to the
plan's ``out`` file. Run by ``bench.scale_out``; not meant to be started by hand.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import ssl
import sys
import time
import uuid
from pathlib import Path
from typing import Any

OTHER_DOMAIN = "autre-operateur.localhost"


def pdf_100k() -> bytes:
    body = random.Random(7).randbytes(100 * 1024 - 400)
    return (b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n"
            b"2 0 obj << /Type /Pages /Kids [] /Count 0 >> endobj\n"
            b"3 0 obj << /Length " + str(len(body)).encode() + b" >> stream\n" + body +
            b"\nendstream endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n")


def _b64_lines(data: bytes) -> bytes:
    text = base64.b64encode(data)
    return b"\r\n".join(text[i:i + 76] for i in range(0, len(text), 76))


class MailMaker:
    """Letters from the other operator, built by formatting around one pre-encoded PDF part (the
    generator's CPU goes to the wire, not to re-encoding the same attachment each time)."""

    def __init__(self) -> None:
        self.pdf = _b64_lines(pdf_100k())

    def make(self, to: list[str], subject: str, message_id: str) -> bytes:
        boundary = uuid.uuid4().hex
        head = (f"From: Secretariat <secretariat@{OTHER_DOMAIN}>\r\nTo: {', '.join(to)}\r\n"
                f"Subject: {subject}\r\nMessage-ID: {message_id}\r\nX-MSS-NIL: BENCH\r\n"
                f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S +0000', time.gmtime())}\r\n"
                f"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"{boundary}\"\r\n\r\n"
                f"--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
                "Cher confrere,\r\nVeuillez trouver ci-joint le compte rendu.\r\n\r\n"
                f"--{boundary}\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n"
                f"Content-Disposition: attachment; filename=\"CR.pdf\"\r\n\r\n").encode()
        return head + self.pdf + f"\r\n--{boundary}--\r\n".encode()


def _kind(exc: BaseException) -> str:
    return type(exc).__name__


async def smtp_role(plan: dict[str, Any]) -> dict[str, Any]:
    import aiosmtplib

    ctx = ssl.create_default_context(cafile=plan["ca_file"])
    accounts = plan["accounts"]
    maker = MailMaker()
    rng = random.Random(plan["seed"])
    deadline = plan["start_at"] + plan["duration"]
    records: list[list[Any]] = []
    conn_errors: list[list[Any]] = []

    async def connect() -> aiosmtplib.SMTP:
        c = aiosmtplib.SMTP(hostname="127.0.0.1", port=plan["smtp_port"], start_tls=False, timeout=60,
                            local_hostname="mx.autre-operateur.localhost")
        await c.connect()
        await c.starttls(tls_context=ctx, server_hostname="localhost")
        return c

    async def worker(w: int) -> None:
        c: aiosmtplib.SMTP | None = None
        n = 0
        while time.time() < deadline:
            if c is None:
                try:
                    c = await connect()
                except Exception as exc:  # refused, reset: the balancer or a server going away
                    conn_errors.append([time.time(), _kind(exc), str(exc)[:120]])
                    c = None
                    await asyncio.sleep(0.5)
                    continue
            to = [a["address"] for a in rng.sample(accounts, rng.choice((1, 1, 2)))]
            subject = f"smtp {plan['run']} w{w} n{n}"
            mid = f"<{plan['run']}.{w}.{n}.{uuid.uuid4().hex[:8]}@{OTHER_DOMAIN}>"
            raw = maker.make(to, subject, mid)
            n += 1
            t0, p0 = time.time(), time.perf_counter()
            try:
                errors, reply = await c.sendmail(f"secretariat@{OTHER_DOMAIN}", to, raw)
                kind = "ok" if not errors else "partial"
                detail = reply[:80]
            except aiosmtplib.SMTPResponseException as exc:
                kind, detail = f"smtp_{exc.code}", exc.message[:120]
                if exc.code == 421:
                    c = None
            except Exception as exc:
                kind, detail = _kind(exc), str(exc)[:120]
                c = None  # the connection is gone (server killed or stopping): open another
            records.append(["smtp", t0, time.perf_counter() - p0, kind, mid, subject, to, detail])
        if c is not None:
            try:
                await c.quit()
            except Exception:
                pass

    await asyncio.gather(*(worker(w) for w in range(plan["connections"])))
    return {"records": records, "connect_errors": conn_errors}


async def api_role(plan: dict[str, Any]) -> dict[str, Any]:
    import httpx

    accounts = plan["accounts"]
    terms = plan["search_terms"]
    rng = random.Random(plan["seed"])
    deadline = plan["start_at"] + plan["duration"]
    records: list[list[Any]] = []
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)

    def auth(a: dict[str, Any]) -> dict[str, str]:
        return {"Authorization": f"Bearer {a['token']}"}

    async def timed(op: str, call, extra: list[Any]) -> Any:
        t0, p0 = time.time(), time.perf_counter()
        body = None
        try:
            r = await call()
            kind = "ok" if r.status_code in (200, 201) else f"http_{r.status_code}"
            if r.status_code in (200, 201):
                body = r.json()
            detail = "" if kind == "ok" else r.text[:120]
        except Exception as exc:
            kind, detail = _kind(exc), str(exc)[:120]
        values = extra(body) if callable(extra) else extra
        records.append([op, t0, time.perf_counter() - p0, kind, *values, detail])
        return body

    async def sender(client: httpx.AsyncClient, w: int) -> None:
        n = 0
        while time.time() < deadline:
            a = rng.choice(accounts)
            others = rng.sample([x for x in accounts if x is not a], 2)
            subject = f"api {plan['run']} w{w} n{n}"
            n += 1
            payload = {"from_mailbox": a["mailbox_id"], "to": [others[0]["address"]], "cc": [others[1]["address"]],
                       "subject": subject, "body": "Bonjour,\nje vous adresse ce patient pour avis.\nBien à vous.",
                       "category": "letter"}
            await timed("send", lambda a=a, payload=payload: client.post("/api/v1/messages", json=payload,
                                                                            headers=auth(a)),
                        lambda body, subject=subject, others=others: [
                            body.get("id") if body else None, subject, [o["address"] for o in others]])

    async def reader(client: httpx.AsyncClient) -> None:
        while time.time() < deadline:
            a = rng.choice(accounts)
            await timed("inbox", lambda a=a: client.get(f"/api/v1/mailboxes/{a['mailbox_id']}/messages",
                                                         params={"view": "inbox", "limit": 50}, headers=auth(a)),
                        [None, None, None])

    async def searcher(client: httpx.AsyncClient) -> None:
        while time.time() < deadline:
            a = rng.choice(accounts)
            q = rng.choice(terms)
            await timed("search", lambda a=a, q=q: client.get("/api/v1/directory/search",
                                                               params={"q": q, "limit": 20}, headers=auth(a)),
                        [None, q, None])

    async with httpx.AsyncClient(base_url=plan["http"], timeout=60, limits=limits) as client:
        await asyncio.sleep(max(0.0, plan["start_at"] - time.time()))
        await asyncio.gather(*(sender(client, w) for w in range(plan["senders"])),
                             *(reader(client) for _ in range(plan["readers"])),
                             *(searcher(client) for _ in range(plan["searchers"])))
    return {"records": records}


async def ws_role(plan: dict[str, Any]) -> dict[str, Any]:
    from websockets.asyncio.client import connect

    accounts = plan["accounts"]
    total = len(accounts) * plan["sockets_per_account"]
    mine = [i for i in range(total) if i % plan["parts"] == plan["part"]]  # global socket numbers
    stop_at = plan["start_at"] + plan["duration"] + plan["grace"]
    url = plan["http"].replace("http://", "ws://") + "/api/v1/events"
    intervals: list[list[Any]] = []  # [socket, account index, opened, closed, close code/reason]
    events: list[list[Any]] = []  # [socket, account index, message id, subject, received at]
    failures: list[list[Any]] = []  # [socket, time, kind]
    stop = asyncio.Event()
    live: set[Any] = set()

    async def one(sock: int, ai: int, delay: float) -> None:
        await asyncio.sleep(delay)
        headers = {"Authorization": f"Bearer {accounts[ai]['token']}"}
        while not stop.is_set():
            opened = None
            why = ""
            try:
                async with connect(url, additional_headers=headers, open_timeout=30, ping_interval=20,
                                   ping_timeout=60, max_queue=None) as ws:
                    hello = json.loads(await ws.recv())
                    if hello.get("type") != "hello":
                        raise RuntimeError(f"first frame {hello.get('type')}")
                    opened = time.time()
                    live.add(ws)
                    try:
                        async for text in ws:
                            if '"message.new"' in text:  # "counts" and the others: not parsed
                                data = json.loads(text)
                                events.append([sock, ai, data.get("message_id"), data.get("subject"), time.time()])
                    finally:
                        live.discard(ws)
                why = "end of run" if stop.is_set() else "closed by the server"
            except Exception as exc:
                why = "end of run" if stop.is_set() else f"{_kind(exc)} {str(exc)[:80]}"
                if opened is None and not stop.is_set():
                    failures.append([sock, time.time(), why])
            if opened is not None:
                intervals.append([sock, ai, opened, time.time(), why])
            if not stop.is_set():
                await asyncio.sleep(0.5 + random.random())  # then reconnect, like the web page does

    ramp = max(1.0, plan["start_at"] - time.time() - 5)
    tasks = [asyncio.create_task(one(i, i % len(accounts), ramp * n / len(mine))) for n, i in enumerate(mine)]
    await asyncio.sleep(max(0.0, stop_at - time.time()))
    stop.set()
    await asyncio.wait([asyncio.ensure_future(ws.close()) for ws in list(live)] or [asyncio.sleep(0)], timeout=20)
    await asyncio.wait(tasks, timeout=20)
    for t in tasks:
        t.cancel()
    return {"intervals": intervals, "events": events, "failures": failures, "sockets": total}


def main() -> None:
    plan = json.loads(Path(sys.argv[1]).read_text())
    role = {"smtp": smtp_role, "api": api_role, "ws": ws_role}[plan["role"].split("-")[0]]
    if plan["role"] == "smtp":
        # Senders start together at start_at (the sockets have ramped up by then).
        time.sleep(max(0.0, plan["start_at"] - time.time()))
    out = asyncio.run(role(plan))
    out["cpu_s"] = time.process_time()
    Path(plan["out"]).write_text(json.dumps(out))


if __name__ == "__main__":
    main()
