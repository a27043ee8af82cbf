"""The rows an inbound batch writes (every column of every table it touches) are the same as
before PostgreSQL's batch became one statement of arrays (``services.inbound._write_arrays``).

The letters (XDM letter with its patient, lab result with HTML, patient message, plain letters,
a letter to two mailboxes, the same Message-ID twice in the batch, a receipt about no message of
ours) go through ``_store_batch_at`` in a transaction that is rolled back, and the rows read in it
are compared, normalised (ids as ranks in the batch, random attachment names as ranks, mailboxes
and patients by address and INS, uids from the batch's first), with:

- the rows written by the code before the change (26c8d32), kept in
  ``fixtures/inbound_batch_rows.json`` for each engine (written by this test run on that code
  with ``MONSISRA_WRITE_BATCH_ROWS=1``);
- on PostgreSQL, the rows of the per-table statements (``arrays=False``) run on the same letters.

(The audit entry of the patient's letter is added to the hash chain at commit, so a rolled-back
batch has none to compare.)
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from monsisra.services import inbound
from tests.gateway_support import fixture

GOLDEN = Path(__file__).parent / "fixtures" / "inbound_batch_rows.json"
NOW = datetime(2026, 12, 1, 9, 30, 15, 123456, tzinfo=UTC)
OTHER = "autre-operateur.localhost"


def _plain(n: int, sender: str, to: str, subject: str, body: str, extra: str = "") -> bytes:
    return (f"From: Secrétariat <{sender}>\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Message-ID: <batch-rows-{n}@{OTHER}>\r\nDate: Tue, 01 Dec 2026 08:00:0{n} +0100\r\n"
            f"MIME-Version: 1.0\r\n{extra}Content-Type: text/plain; charset=utf-8\r\n"
            f"Content-Transfer-Encoding: 8bit\r\n\r\n{body}\r\n").encode()


def _letters(domain: str) -> list[tuple[bytes, str, list[str]]]:
    alice, bruno = f"alice.martin@{domain}", f"bruno.petit@{domain}"
    sender = f"secretariat@{OTHER}"
    receipt = (f"From: {sender}\r\nTo: {alice}\r\nSubject: Accusé de lecture\r\n"
               f"Message-ID: <batch-rows-mdn@{OTHER}>\r\nMIME-Version: 1.0\r\n"
               "Content-Type: multipart/report; report-type=disposition-notification; boundary=\"b\"\r\n\r\n"
               "--b\r\nContent-Type: text/plain\r\n\r\nLu.\r\n--b\r\n"
               "Content-Type: message/disposition-notification\r\n\r\n"
               f"Final-Recipient: rfc822;{sender}\r\nOriginal-Message-ID: <aucun@{domain}>\r\n"
               "Disposition: manual-action/MDN-sent-manually; displayed\r\n--b--\r\n").encode()
    return [
        (fixture("letter_with_xdm.eml"), "cardiologie.ch-vichy@ch-vichy.mssante.fr", [alice]),
        (fixture("lab_result.eml"), "resultats.labo-aurillac@labo-aurillac.mssante.fr", [alice]),
        (fixture("patient_reply.eml"), "193083819580859@patient.mssante.fr", [alice]),
        (_plain(1, sender, alice, "Adressage « urgent »", "Bonjour,\r\nMerci de recevoir Mme X.\x00"), sender, [alice]),
        (_plain(2, sender, f"{alice}, {bruno}", "Pour vous deux", "Réunion jeudi."), sender, [alice, bruno]),
        (_plain(1, sender, alice, "Adressage « urgent »", "Bonjour,\r\nMerci de recevoir Mme X.\x00"), sender, [alice]),
        (_plain(3, sender, alice, "Re: Pour vous deux", "Oui.",
                f"In-Reply-To: <batch-rows-2@{OTHER}>\r\nDisposition-Notification-To: {sender}\r\n"), sender, [alice]),
        (receipt, sender, [alice]),
    ]


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return "sha256:" + hashlib.sha256(value).hexdigest()
    return value


async def _written(core, arrays: bool | None) -> dict[str, Any]:
    """The replies and normalised rows of one batch of :func:`_letters`, rolled back."""
    domain = core.settings.domain
    letters = _letters(domain)
    boxes = await inbound._mailbox_ids(core, sorted({a for _, _, rcpts in letters for a in rcpts}))
    jobs = []
    for raw, sender, rcpts in letters:
        raw = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        ready = inbound._prepare(raw, sender)
        rfc_id = ready.parsed.message_id or f"<{ready.raw_sha[:40]}@sans-identifiant.invalid>"
        jobs.append(inbound._Job(inbound.Envelope("127.0.0.1", sender, rcpts, raw), ready.parsed, ready.content,
                                 rfc_id, [boxes[a] for a in rcpts], ready.raw_sha, ready.files))
    kwargs = {} if arrays is None else {"arrays": arrays}
    found: dict[str, Any] = {}

    class Rollback(Exception):
        pass

    with pytest.raises(Rollback):
        async with core.db.write() as s:
            before = {t: (await s.scalar(sa.text(f"SELECT coalesce(max(id), 0) FROM {t}")))
                      for t in ("messages", "recipients", "gw_inbound", "deliveries", "audit_log")}
            found["replies"] = await s.run_sync(lambda sync: inbound._store_batch_at(sync, jobs, [], NOW, **kwargs))
            found["rows"] = await s.run_sync(_rows, before, [j.raw_sha for j in jobs])
            raise Rollback
    return found


def _rows(s, before: dict[str, int], shas: list[str]) -> dict[str, list]:
    c = s.connection()

    def select(sql: str, **params) -> list[dict[str, Any]]:
        return [dict(r._mapping) for r in c.execute(sa.text(sql), params)]

    messages = select("SELECT * FROM messages WHERE id > :m ORDER BY id", m=before["messages"])
    rank = {m["id"]: i for i, m in enumerate(messages, 1)}
    for m in messages:  # the message's own Message-ID (text), not a link to a message
        m["message_id_rfc"] = m.pop("message_id")
    boxes = {r["id"]: r["address"] for r in select("SELECT id, address FROM mailboxes")}
    ins = {r["id"]: r["ins"] for r in select("SELECT id, ins FROM patients")}
    links = select("SELECT * FROM message_attachments WHERE message_id > :m ORDER BY message_id, position",
                   m=before["messages"])
    names = {link["attachment_id"]: f"attachment {i}" for i, link in enumerate(links, 1)}
    attachments = [a for a in select("SELECT * FROM attachments") if a["id"] in names]

    def norm(table: str, row: dict[str, Any], position: int = 0) -> dict[str, Any]:
        out = {}
        for k, v in row.items():
            if k == "id" and table in before:
                v = position  # ids drawn in the rows' order: their rank (sequences do not roll back)
            elif (k == "id" and table == "attachments") or k == "attachment_id":
                v = names[v]
            elif k in ("message_id", "thread_id", "in_reply_to_id"):
                if isinstance(v, int):
                    v = rank.get(v, "an older message")
            elif k == "mailbox_id" and v is not None:
                v = boxes[v]
            elif k == "patient_id" and v is not None:
                v = ins[v]
            elif k == "headers" and isinstance(v, str):
                v = json.loads(v)
            elif k == "search_vector":
                v = str(v)
            out[k] = _jsonable(v)
        return out

    deliveries = select("SELECT * FROM deliveries WHERE id > :d ORDER BY id", d=before["deliveries"])
    first = {}
    for d in deliveries:
        first.setdefault(d["mailbox_id"], (d["uid"], d["modseq"]))
    for d in deliveries:
        base_uid, base_modseq = first[d["mailbox_id"]]
        d["uid"], d["modseq"] = d["uid"] - base_uid, d["modseq"] - base_modseq
    audit = select("SELECT action, object_type, object_id, patient_id, mailbox_id, client FROM audit_log "
                   "WHERE id > :a ORDER BY id", a=before["audit_log"])
    for a in audit:
        a["object_id"] = rank.get(int(a["object_id"]), a["object_id"]) if str(a["object_id"]).isdigit() else None
    return {
        "messages": [norm("messages", m, i) for i, m in enumerate(messages, 1)],
        "attachments": sorted((norm("attachments", a) for a in attachments), key=lambda a: a["id"]),
        "message_attachments": [norm("links", x) for x in links],
        "recipients": [norm("recipients", r, i) for i, r in enumerate(
            select("SELECT * FROM recipients WHERE id > :r ORDER BY id", r=before["recipients"]), 1)],
        "gw_inbound": [norm("gw_inbound", g, i) for i, g in enumerate(
            select("SELECT * FROM gw_inbound WHERE id > :g ORDER BY id", g=before["gw_inbound"]), 1)],
        "gw_raw": [norm("gw_raw", w) for w in
                   select("SELECT * FROM gw_raw ORDER BY sha256") if w["sha256"] in set(shas)],
        "deliveries": [norm("deliveries", d, i) for i, d in enumerate(deliveries, 1)],
        "audit_log": [norm("audit", a) for a in audit],
    }


def test_batch_rows_are_those_written_before(server, backend):
    got = server.call(_written, server.core, None)
    assert len(got["rows"]["messages"]) == 7 and len(got["rows"]["gw_inbound"]) == 8
    assert got["replies"][5].endswith("déjà reçu")  # the same Message-ID twice in the batch
    golden = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
    if os.environ.get("MONSISRA_WRITE_BATCH_ROWS"):
        golden[backend] = got
        GOLDEN.write_text(json.dumps(golden, indent=1, ensure_ascii=False, sort_keys=True) + "\n")
        return
    assert json.loads(json.dumps(got, default=str)) == golden[backend]


def test_postgres_arrays_write_the_rows_of_the_per_table_statements(server, backend):
    """PostgreSQL writes a batch in one statement of arrays; the same batch written by the
    per-table statements gives the same rows. SQLite has no ``unnest`` and always writes per
    table, so there is nothing to compare there: its rows are proven by
    ``test_batch_rows_are_those_written_before`` (against the code before the change)."""
    if backend != "postgres":
        pytest.skip("PostgreSQL only: SQLite has no unnest and always writes per table "
                    "(its rows are checked by test_batch_rows_are_those_written_before)")
    arrays = server.call(_written, server.core, True)
    tables = server.call(_written, server.core, False)
    assert arrays == tables
    assert [m["thread_id"] for m in arrays["rows"]["messages"]] == [1, 2, 3, 4, 5, 6, 7]


def test_a_broken_rule_is_not_taken_for_a_duplicate(server, monkeypatch):
    """A batch that breaks a rule of the database other than the unique key (here a NOT NULL,
    from a category that could not be computed) answers an error, never ``250 … déjà reçu``:
    only a message found stored for all its mailboxes is a duplicate."""
    monkeypatch.setattr(inbound, "categorize", lambda parsed, content: None)
    domain = server.settings.domain
    sender = f"secretariat@{OTHER}"
    raw = _plain(4, sender, f"alice.martin@{domain}", "Sans catégorie", "Texte.")

    async def send(core):
        boxes = await inbound._mailbox_ids(core, [f"alice.martin@{domain}"])
        ready = inbound._prepare(raw, sender)
        job = inbound._Job(inbound.Envelope("127.0.0.1", sender, [f"alice.martin@{domain}"], raw), ready.parsed,
                           ready.content, ready.parsed.message_id, list(boxes.values()), ready.raw_sha, ready.files)
        try:
            return await inbound._committer(core).submit(job)
        except Exception as exc:
            return exc

    reply = server.call(send, server.core)
    assert isinstance(reply, sa.exc.IntegrityError), reply
