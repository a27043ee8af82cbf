"""Counts kept by the database (issue 18, item 4): after concurrent sends, reads, moves, drafts,
deletions, restorations and purges through HTTP, every mailbox's counters equal a full recount,
on both engines, and the API's counts read from them."""

from __future__ import annotations

import random
import threading
from datetime import timedelta

import sqlalchemy as sa

from monsisra.services.messages import states


def test_counters_equal_a_recount_after_concurrent_changes(server, make_user):
    users = [make_user(first=f"Compte{i}") for i in range(4)]
    clients = [server.login(u, "secret-pass") for u, _a, _b in users]
    boxes = [b for _u, _a, b in users]
    addresses = [a for _u, a, _b in users]
    errors: list[str] = []

    def worker(n: int) -> None:
        rng = random.Random(n)
        c, box = clients[n], boxes[n]
        try:
            for i in range(25):
                to = [addresses[(n + k) % 4] for k in rng.sample(range(1, 4), rng.randint(1, 3))]
                r = c.post("/api/v1/messages", json={"from_mailbox": box, "to": to, "subject": f"m{n}-{i}",
                                                     "body": "x", "category": rng.choice(["letter", "result"])})
                if r.status_code != 201:
                    errors.append(r.text)
                if i % 5 == 0:
                    c.post("/api/v1/messages", json={"from_mailbox": box, "to": [], "subject": f"d{n}-{i}",
                                                     "draft": True})
                items = c.get(f"/api/v1/mailboxes/{box}/messages", params={"view": "all", "limit": 20}).json()["items"]
                for item in rng.sample(items, min(3, len(items))):
                    mid = item["id"]
                    action = rng.choice(["read", "archive", "favorite", "todo", "trash", "restore", "unread"])
                    if action == "read":
                        c.get(f"/api/v1/mailboxes/{box}/messages/{mid}")
                    elif action == "unread":
                        c.patch(f"/api/v1/mailboxes/{box}/messages/{mid}", json={"read": False})
                    elif action == "archive":
                        c.patch(f"/api/v1/mailboxes/{box}/messages/{mid}", json={"archived": rng.random() < 0.7})
                    elif action in ("favorite", "todo"):
                        c.patch(f"/api/v1/mailboxes/{box}/messages/{mid}", json={action: rng.random() < 0.6})
                    elif action == "trash":
                        c.delete(f"/api/v1/mailboxes/{box}/messages/{mid}")
                    else:
                        c.post(f"/api/v1/mailboxes/{box}/messages/{mid}/restore")
        except Exception as exc:  # reported below with the others
            errors.append(repr(exc))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]

    # Part of the bins ages past 30 days and is emptied (deletes rows: the counters follow).
    async def age_and_purge(core):
        from monsisra.domain.clock import utcnow
        from monsisra.services import maintenance
        from monsisra.store.models import Delivery

        async with core.write() as tx:
            # Only this test's mailboxes: the server and its demo bins are shared with other tests.
            await tx.session.execute(sa.update(Delivery).where(Delivery.mailbox_id.in_(boxes),
                                                               Delivery.deleted.is_(True), Delivery.id % 2 == 0)
                                     .values(deleted_at=utcnow() - timedelta(days=31)))
        await maintenance.purge(core)

    server.call(age_and_purge, server.core)
    for box, c in zip(boxes, clients, strict=True):
        stored = server.call(states.counters, server.core, box)
        assert stored == server.call(states.recount, server.core, box)
        assert stored, "the mailbox has messages"
        total = sum(row[-1] for row in stored if not row[0] and row[1] == "in")
        assert c.get(f"/api/v1/mailboxes/{box}/counts").json()["views"]["all"]["total"] == total
        c.close()
