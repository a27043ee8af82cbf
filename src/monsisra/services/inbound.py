"""Inbound MSSanté mail: the rules applied to what another operator's server hands us.

The SMTP handler (``gateway/smtp.py``) only relays the conversation here. A message is
acknowledged (``250``) only when :func:`receive` returns, i.e. after its attachment blobs are
written and fsynced and then its raw form and rows are committed: a failure at any step answers
``4xx`` and leaves nothing visible. The same Message-ID delivered twice to a mailbox is stored
once (``gw_inbound`` unique key).

The invariant (checked by :func:`check_invariant`): every message answered ``250`` is, for each
recipient mailbox, either a message in that mailbox, or a read receipt applied to a message sent
from it (``gw_inbound.kind = 'mdn'``); its raw form is kept in both cases. Nothing acknowledged is
ever dropped: a receipt that matches none of our messages, or that another operator has no say
about, is delivered as an ordinary message.

Who may send: only domains of the trust space, never our own domain (our users' mail never
comes in through this port), and, when the peer showed a client certificate, only domains that
certificate names. The null sender ``<>`` is for reports only (read receipts, non-delivery notices).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import multiprocessing
import os
import secrets
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session

from monsisra.domain.addresses import PATIENT_DOMAIN, domain_of, normalize_address
from monsisra.domain.clock import utcnow
from monsisra.domain.ins import KNOWN_OIDS, is_valid_ins
from monsisra.domain.mail import mime, xdm
from monsisra.domain.model import Category, Role
from monsisra.domain.text import fold, preview
from monsisra.events import Event
from monsisra.services import attachments as att_service
from monsisra.services import audit, mailboxes, messages, patients, trust
from monsisra.services.core import Core
from monsisra.services.helper_processes import watch_parent
from monsisra.store.db import make_engine
from monsisra.store.gateway import InboundMessage, RawMessage, inbound_batch_statement, sync_sqlite_engine
from monsisra.store.models import (
    Attachment,
    Delivery,
    Message,
    MessageAttachment,
    Patient,
    Recipient,
)

log = logging.getLogger(__name__)
XDM_NAMES = {"ihe_xdm.zip"}


# Ordinary mail is cut at the byte level (``domain/mail/split.py``: ~1 ms for a 100 KB letter), less
# than handing the bytes to a helper process and the parsed parts back costs; only large messages
# (scans, archives) still go to the helpers, to keep the event loop free.
PARSE_ELSEWHERE_BYTES = 2 * 1024 * 1024
# What the byte-level cut hands to the full parser (forwarded messages, reports, odd shapes) is
# parsed in the loop only up to this size (a few ms); larger, a crafted message could hold the
# loop for a tenth of a second or more, so it goes to the helpers too.
FULL_PARSE_IN_LOOP_BYTES = 64 * 1024
_pool: list[ProcessPoolExecutor] = []


def _parse_pool() -> ProcessPoolExecutor:
    if not _pool:
        workers = max(1, min(2, (os.cpu_count() or 1)))
        _pool.append(ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=watch_parent))
    return _pool[0]


@dataclass
class _Box:
    id: int
    address: str
    display_name: str


@dataclass
class Envelope:
    peer: str
    mail_from: str  # "" for the null reverse path
    rcpt_tos: list[str]
    raw: bytes
    # DNS names of the client certificate the peer showed (verified against the trust anchors),
    # None when it showed none.
    peer_names: list[str] | None = None


def bound_to_peer(domain: str, peer_names: list[str] | None) -> bool:
    """Whether mail from ``domain`` may come from a peer whose certificate names ``peer_names``:
    a name is the domain itself or a host under it (``mx.ch-vichy.mssante.fr`` for
    ``ch-vichy.mssante.fr``). No certificate shown: nothing to bind (``smtp_verify_client``
    makes one compulsory)."""
    if peer_names is None:
        return True
    domain = domain.lower()
    for name in peer_names:
        name = name.lower().removeprefix("*.")
        if name == domain or name.endswith("." + domain):
            return True
    return False


def _related(a: str, b: str) -> bool:
    """Two domains of the same operator: equal, or one under the other."""
    return a == b or a.endswith("." + b) or b.endswith("." + a)


def _domain(address: str) -> str:
    return domain_of(address) if "@" in address else ""


class _Ttl:
    """A small per-process cache of lookups repeated on every SMTP command (trust, mailboxes).

    A change (domain removed from the trust list, mailbox closed) applies within ``ttl`` seconds.
    A lookup in flight is shared (:meth:`fetch`): when an entry expires, the connections that
    all miss it at once wait for one query instead of each making its own (each on a pooled
    connection of its own, beyond the pool's size under load: ~15 queries a round of the bench).
    """

    def __init__(self, ttl: float = 10.0, size: int = 10_000) -> None:
        self.ttl, self.size = ttl, size
        self.data: dict[Any, tuple[float, Any]] = {}
        self.pending: dict[Any, asyncio.Future] = {}

    def get(self, key: Any) -> Any:
        hit = self.data.get(key)
        if hit is not None and time.monotonic() - hit[0] < self.ttl:
            return hit[1]
        return None

    def put(self, key: Any, value: Any) -> None:
        if len(self.data) >= self.size:
            self.data.clear()
        self.data[key] = (time.monotonic(), value)

    async def fetch(self, keys: list[Any], lookup) -> dict[Any, Any]:
        """key → value for ``keys`` (none cached): ``lookup(keys)`` (a coroutine returning such a
        dict, a missing key meaning "not found") runs once for the keys no lookup is fetching
        yet; the others wait for the lookup already in flight. Values found are cached."""
        loop = asyncio.get_running_loop()
        waits: dict[Any, asyncio.Future] = {}
        new = []
        for key in keys:
            running = self.pending.get((loop, key))
            if running is not None:
                waits[key] = running
            else:
                new.append(key)
        if new:
            task = loop.create_task(self._lookup(lookup, new))
            for key in new:
                self.pending[(loop, key)] = waits[key] = task

            def settle(done: asyncio.Future, mine: list[Any] = new) -> None:
                for key in mine:
                    if self.pending.get((loop, key)) is done:
                        del self.pending[(loop, key)]

            task.add_done_callback(settle)
        out = {}
        for key, running in waits.items():
            # Shielded: a connection that goes away does not cancel the lookup the others wait for.
            found = await asyncio.shield(running)
            if key in found:
                out[key] = found[key]
        return out

    async def _lookup(self, lookup, keys: list[Any]) -> dict[Any, Any]:
        found = await lookup(keys)
        for key, value in found.items():
            self.put(key, value)
        return found


_trusted_cache = _Ttl()
_mailbox_cache = _Ttl()


async def _operator(core: Core, domain: str, parents: bool = False) -> str | None:
    """The trusted operator domain covering ``domain`` ("" when none), cached a few seconds."""
    key = (id(core), domain, parents, trust.generation())
    hit = _trusted_cache.get(key)
    if hit is None:
        async def lookup(keys: list[Any]) -> dict[Any, str]:
            async with core.read() as s:
                return {key: await trust.operator_of(s, domain, parents=parents) or ""}

        hit = (await _trusted_cache.fetch([key], lookup))[key]
    return hit or None


async def _mailbox_ids(core: Core, addresses: list[str]) -> dict[str, tuple[int, str, str]]:
    """address → (mailbox id, address, display name) of the active local mailboxes among them."""
    out: dict[str, tuple[int, str, str]] = {}
    missing = []
    for a in addresses:
        hit = _mailbox_cache.get((id(core), a))
        if hit is None:
            missing.append((id(core), a))
        else:
            out[a] = hit
    if missing:
        async def lookup(keys: list[Any]) -> dict[Any, tuple[int, str, str]]:
            async with core.read() as s:
                found = await mailboxes.by_address(s, [a for _, a in keys])
            # Unknown addresses are not cached: a new mailbox works at once.
            return {(i, a): (box.id, box.address, box.display_name) for i, a in keys if (box := found.get(a))}

        out.update((a, value) for (_, a), value in (await _mailbox_cache.fetch(missing, lookup)).items())
    return out


async def check_sender(core: Core, mail_from: str, peer_names: list[str] | None = None) -> str | None:
    """The SMTP refusal for this MAIL FROM, or None when acceptable."""
    if not mail_from:
        return None  # null reverse path: reports only, checked at DATA
    address = normalize_address(mail_from)
    if address is None:
        return "553 5.1.7 adresse d'expéditeur mal formée"
    return await _check_domain(core, _domain(address), peer_names)


async def _check_domain(core: Core, domain: str, peer_names: list[str] | None, about: str = "",
                        report: bool = False) -> str | None:
    """The refusal of mail from ``domain`` (``about`` names the header it came from), or None.
    A report (receipt, bounce) may come from a host under a listed domain."""
    ours = core.settings.domain.lower()
    if domain == ours or domain.endswith("." + ours):
        return (f"550 5.7.1 {about}{domain} est notre propre domaine : le courrier de nos utilisateurs "
                "n'arrive jamais par la passerelle entre opérateurs")
    operator = await _operator(core, domain, parents=report)
    if operator is None:
        return f"550 5.7.1 {about}domaine {domain} hors de l'espace de confiance MSSanté"
    if not bound_to_peer(operator, peer_names):
        return f"550 5.7.1 {about}le certificat présenté ne couvre pas le domaine {domain}"
    return None


async def check_recipient(core: Core, rcpt: str) -> str | None:
    """The SMTP refusal for this RCPT TO, or None: local and existing mailboxes only."""
    address = normalize_address(rcpt)
    if address is None:
        return "553 5.1.3 adresse de destinataire mal formée"
    if _domain(address) != core.settings.domain.lower():
        return f"550 5.7.1 relais interdit : seules les adresses @{core.settings.domain} sont servies ici"
    if address not in await _mailbox_ids(core, [address]):
        return f"550 5.1.1 <{address}> : boîte aux lettres inconnue"
    return None


def categorize(parsed: mime.ParsedMail, content: xdm.XdmContent | None) -> str:
    if _domain(parsed.sender_address) == PATIENT_DOMAIN:
        return Category.PATIENT
    if content is not None and content.documents:
        return Category.RESULT if set(content.type_codes) & xdm.RESULT_CODES else Category.LETTER
    subject = fold(parsed.subject)
    if "resultat" in subject or "compte rendu d'analyse" in subject:
        return Category.RESULT
    if any(a.content_type == "application/pdf" for a in parsed.attachments):
        return Category.LETTER
    return Category.MSSANTE


@dataclass
class _Prepared:
    """A received message with its CPU-heavy work done (parsed, hashed, typed, XDM read)."""

    parsed: mime.ParsedMail
    raw_sha: str
    files: list[tuple[str, int, str]]  # per attachment: sha256, size, type sniffed from the content
    content: xdm.XdmContent | None
    xdm_error: str | None


def _prepare(raw: bytes, mail_from: str, full_up_to: int | None = None) -> _Prepared:
    """Parse, hash and type a received message, and read its IHE_XDM archive. Pure CPU work on
    the bytes: large messages get it done in a helper process (see :func:`receive`)."""
    parsed = mime.parse(raw, mail_from, full_up_to=full_up_to)
    files = []
    for part in parsed.attachments:
        kind = (part.content_type if part.content_type == "message/rfc822"
                else att_service.sniff(part.data[:8192], part.filename or ""))
        files.append((hashlib.sha256(part.data).hexdigest(), len(part.data), kind))
    content: xdm.XdmContent | None = None
    error = None
    for part in parsed.attachments:
        if (part.filename or "").lower() in XDM_NAMES:
            try:
                content = xdm.read(part.data)
            except xdm.XdmError as exc:
                error = f"554 5.6.0 {exc}"
                break
    return _Prepared(parsed, hashlib.sha256(raw).hexdigest(), files, content, error)


async def receive(core: Core, env: Envelope) -> str:
    """Store an accepted message for its local recipients; returns the SMTP reply."""
    loop = asyncio.get_running_loop()
    try:
        ready = None
        if len(env.raw) <= PARSE_ELSEWHERE_BYTES:
            with contextlib.suppress(mime.NeedsFullParser):
                ready = _prepare(env.raw, env.mail_from, FULL_PARSE_IN_LOOP_BYTES)
        if ready is None:
            # Parsing a large message is long CPU work: a helper process keeps the event loop (TLS,
            # SMTP, database) free and lets a second core work.
            ready = await loop.run_in_executor(_parse_pool(), _prepare, env.raw, env.mail_from)
    except mime.MailError as exc:
        log.info("inbound refused from %s: %s", env.peer, exc.reply)
        return exc.reply
    parsed = ready.parsed
    refusal = await _check_domain(core, _domain(parsed.sender_address), env.peer_names,
                                  f"en-tête From {parsed.sender_address} : ", report=parsed.is_report)
    if refusal:
        return refusal
    if not env.mail_from and not parsed.is_report:
        return ("550 5.7.1 l'expéditeur vide <> est réservé aux accusés de lecture et aux avis "
                "de non-distribution")
    boxes = await _mailbox_ids(core, [a for a in (normalize_address(r) for r in env.rcpt_tos) if a])
    if not boxes:
        return "550 5.1.1 aucun destinataire valide"
    if ready.xdm_error:
        return ready.xdm_error
    rfc_id = parsed.message_id or f"<{ready.raw_sha[:40]}@sans-identifiant.invalid>"

    # The attachment files are written (each written, fsynced, renamed under its name, its
    # directory fsynced) while the message waits for its batch and the batch's rows are built
    # (SQLite); the batch's COMMIT waits for them (``_await_blobs``): rows are what make a message
    # visible, so a failure at either step (disk full, blob store unwritable, database locked)
    # answers 4xx with nothing shown. A crash before the commit leaves only files that no row
    # names, never a message without its files.
    writer = _blob_writer()
    blobs = [writer.submit(core.blobs.put_bytes, p.data, f[0])
             for p, f in zip(parsed.attachments, ready.files, strict=True)]
    if not core.db.is_sqlite:
        # PostgreSQL: the files before the batch, as before. Written during the batch, they cost
        # ~0.5 ms more server CPU per message in three back-to-back bench pairs, for no better
        # rate (bench/results/smtp_postgres.md, 2026-12-01 13:27 UTC).
        for outcome in await asyncio.gather(*(asyncio.wrap_future(b) for b in blobs), return_exceptions=True):
            if isinstance(outcome, BaseException):
                raise outcome
    job = _Job(env, parsed, ready.content, rfc_id, list(boxes.values()), ready.raw_sha, ready.files, blobs)
    try:
        reply = await _committer(core).submit(job)
    finally:
        if not all(b.done() for b in blobs):  # never answer while a write of this message runs
            await asyncio.gather(*(asyncio.wrap_future(b) for b in blobs), return_exceptions=True)
    log.info("from %s <%s>: %s (%d bytes, %d recipient(s))", env.peer, env.mail_from, reply, len(env.raw), len(boxes))
    return reply


@dataclass
class _Job:
    env: Envelope
    parsed: mime.ParsedMail
    content: xdm.XdmContent | None
    rfc_id: str
    boxes: list[tuple[int, str, str]]
    raw_sha: str
    files: list[tuple[str, int, str]]
    # The attachment files being written (``BlobStore.put_bytes``), one per attachment.
    blobs: list[Future] = field(default_factory=list)


_blob_writers: list[ThreadPoolExecutor] = []


def _blob_writer() -> ThreadPoolExecutor:
    """The threads that write attachment files (their fsyncs overlap each other and the batch)."""
    if not _blob_writers:
        _blob_writers.append(ThreadPoolExecutor(8, thread_name_prefix="monsisra-inbound-blob"))
    return _blob_writers[0]


def _await_blobs(jobs: list[_Job]) -> None:
    """Block until the attachment files of ``jobs`` are durable; raises the first write that
    failed (the batch is then rolled back and its messages retried one by one). Called by the
    commit thread after building the batch's rows, before its COMMIT."""
    for job in jobs:
        for blob in job.blobs:
            blob.result()


class _Committer:
    """Group commit: messages arriving together on several connections are written in one
    transaction (one fsync), and every one of them is answered only after that commit."""

    MAX_BATCH = 32

    def __init__(self, core: Core) -> None:
        self.core = core
        self.queue: asyncio.Queue[tuple[_Job, asyncio.Future[str]]] = asyncio.Queue()
        self.task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._engine: sa.Engine | None = None
        self._pg: tuple[asyncio.AbstractEventLoop, threading.Thread, AsyncEngine] | None = None

    async def submit(self, job: _Job) -> str:
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._run(), name="monsisra-inbound-commit")
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        await self.queue.put((job, future))
        return await future

    async def _run(self) -> None:
        while True:
            batch = [await self.queue.get()]
            while len(batch) < self.MAX_BATCH and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            try:
                replies = await self._commit([j for j, _ in batch])
            except Exception:
                # One bad message must not sink the others: retry them one by one.
                replies = []
                for job, _ in batch:
                    try:
                        replies.extend(await self._commit([job]))
                    except IntegrityError as exc:
                        # The same Message-ID arrived concurrently (another process) and is stored:
                        # answered 250 only once that is seen; any other broken rule is a failure.
                        if await self._stored(job):
                            replies.append(f"250 2.0.0 {job.rfc_id} déjà reçu")
                        else:
                            log.exception("inbound store failed")
                            replies.append(exc)
                    except Exception as exc:
                        log.exception("inbound store failed")
                        replies.append(exc)
            for (_, future), reply in zip(batch, replies, strict=True):
                if future.done():
                    continue
                if isinstance(reply, BaseException):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)

    async def _stored(self, job: _Job) -> bool:
        """Whether ``job``'s message is recorded for every one of its mailboxes."""
        wanted = {b[0] for b in job.boxes}
        async with self.core.read() as s:
            found = set((await s.scalars(_STORED, {"id": job.rfc_id, "boxes": sorted(wanted)})).all())
        return found >= wanted

    async def _commit(self, jobs: list[_Job]) -> list[str]:
        now = utcnow()
        if self.core.db.is_sqlite:
            # The whole batch runs in one dedicated thread on a synchronous connection: one
            # hand-off instead of one per statement (each costs a wake-up on a busy machine).
            # The same lock as the async writers of this process (SQLite has one writer).
            async with self.core.db._write_lock:  # type: ignore[union-attr]
                replies, events = await asyncio.get_running_loop().run_in_executor(
                    self._sqlite_thread(), self._sqlite_commit, jobs, now)
            if events:
                await self.core.bus.publish([Event(t, sorted(set(ids)), data) for t, ids, data in events if ids])
            return replies
        # PostgreSQL: the batch runs on an event loop of its own in one dedicated thread, with its
        # own engine, so that the server's loop (TLS, SMTP) does not pay asyncpg's per-statement
        # round trips through it; it only waits for the batch's outcome.
        loop, _, engine = self._pg_thread()
        replies, events = await asyncio.wrap_future(
            asyncio.run_coroutine_threadsafe(self._pg_commit(engine, jobs, now), loop))
        if events:
            await self.core.bus.publish([Event(t, sorted(set(ids)), data) for t, ids, data in events if ids])
        return replies

    def _pg_thread(self) -> tuple[asyncio.AbstractEventLoop, threading.Thread, AsyncEngine]:
        if self._pg is None:
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="monsisra-inbound-pg", daemon=True)
            thread.start()
            engine = make_engine(self.core.settings.database_url, pool_size=1,
                                 busy_timeout=self.core.settings.database_busy_timeout)
            self._pg = (loop, thread, engine)
        return self._pg

    @staticmethod
    async def _pg_commit(engine: AsyncEngine, jobs: list[_Job], now) -> tuple[list[str], list]:
        out: list = []
        async with AsyncSession(engine, expire_on_commit=False) as s, s.begin():
            replies = await s.run_sync(_store_batch_at, jobs, out, now)
        return replies, out

    def _sqlite_thread(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="monsisra-inbound-sqlite")
            self._engine = sync_sqlite_engine(self.core.settings.database_url)
        return self._executor

    def _sqlite_commit(self, jobs: list[_Job], now) -> tuple[list[str], list]:
        out: list = []
        with Session(self._engine, expire_on_commit=False) as s, s.begin():
            replies = _store_batch_at(s, jobs, out, now)
        return replies, out

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False)
        if self._engine is not None:
            self._engine.dispose()
        if self._pg is not None:
            loop, thread, engine = self._pg
            self._pg = None
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(engine.dispose(), loop).result(timeout=10)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            if not thread.is_alive():
                loop.close()


_committers: dict[int, _Committer] = {}


async def stop(core: Core) -> None:
    """Stop the group-commit task of this core and the parsing helpers (server shutdown)."""
    while _pool:
        _pool.pop().shutdown(wait=False, cancel_futures=True)
    while _blob_writers:
        _blob_writers.pop().shutdown(wait=False)
    found = _committers.pop(id(core), None)
    if found is not None and found.task is not None:
        found.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await found.task
    if found is not None:
        found.close()


def _committer(core: Core) -> _Committer:
    found = _committers.get(id(core))
    if found is None or found.core is not core:
        found = _committers[id(core)] = _Committer(core)
    return found


# The statements of the batch, built once: building a statement costs SQLAlchemy more than
# SQLite takes to run it, and this path runs for every message received.
_messages = Message.__table__
_inbound = InboundMessage.__table__
_SEEN = sa.select(_inbound.c.mailbox_id, _inbound.c.rfc_message_id).where(
    _inbound.c.rfc_message_id.in_(sa.bindparam("ids", expanding=True)),
    _inbound.c.mailbox_id.in_(sa.bindparam("boxes", expanding=True)))
_STORED = sa.select(_inbound.c.mailbox_id).where(_inbound.c.rfc_message_id == sa.bindparam("id"),
                                                 _inbound.c.mailbox_id.in_(sa.bindparam("boxes", expanding=True)))
_INSERT_ATTACHMENTS = sa.insert(Attachment.__table__)
_INSERT_MESSAGES = sa.insert(_messages).returning(_messages.c.id, sort_by_parameter_order=True)
_START_THREADS = (sa.update(_messages).where(_messages.c.id.in_(sa.bindparam("ids", expanding=True)),
                                             _messages.c.thread_id.is_(None))
                  .values(thread_id=_messages.c.id))
_INSERT_LINKS = sa.insert(MessageAttachment.__table__)
_INSERT_RECIPIENTS = sa.insert(Recipient.__table__)
_INSERT_INBOUND = sa.insert(_inbound)
_INSERT_RAW = {"sqlite": sqlite_insert(RawMessage.__table__).on_conflict_do_nothing(index_elements=["sha256"]),
               "postgresql": pg_insert(RawMessage.__table__).on_conflict_do_nothing(index_elements=["sha256"])}


def _store_batch_at(s: Session, jobs: list[_Job], out: list, now, arrays: bool | None = None) -> list[str]:
    """Store a batch of accepted messages in one transaction, with one multi-row INSERT per
    table (SQLite), or one statement for all of them (PostgreSQL, ``arrays``: see
    :func:`_write_arrays`); returns the SMTP reply of each. Plain synchronous code: it runs in
    SQLite's own thread (one hand-off per batch) or through ``run_sync`` on the async engine
    (PostgreSQL). Events to publish after commit are appended to ``out``."""
    # The batch's own statements go to the transaction's Connection: Core statements need none of
    # the ORM Session's execution path (a quarter of SQLAlchemy's cost per statement, measured in
    # the commit thread); the Session stays for the rare ORM reads (replies, receipts, patients).
    c = s.connection()
    seen = set(c.execute(_SEEN, {"ids": sorted({j.rfc_id for j in jobs}),
                                 "boxes": sorted({b[0] for j in jobs for b in j.boxes})}).all())
    replies: list[str] = []
    plans: list[tuple[_Job, list[_Box], SimpleNamespace | None, list]] = []
    for job in jobs:
        targets = [_Box(*b) for b in job.boxes if (b[0], job.rfc_id) not in seen]
        if not targets:
            replies.append(f"250 2.0.0 {job.rfc_id} déjà reçu")
            continue
        seen.update((b.id, job.rfc_id) for b in targets)  # the same message twice in one batch
        replies.append(f"250 2.0.0 {job.rfc_id} reçu")
        if job.parsed.mdn is not None and _apply_mdn(s, out, job.parsed, [b.id for b in targets], now):
            plans.append((job, targets, None, []))
            continue
        if job.parsed.dsn is not None:
            _apply_dsn(s, out, job.parsed, [b.id for b in targets], now)
        # Anything else, a receipt we could not apply included, is delivered as a message.
        message, views = _new_message(s, job, targets, now)
        plans.append((job, targets, message, views))
    s.flush()  # patients
    if arrays is None:
        arrays = c.dialect.name == "postgresql"
    if arrays:
        _write_arrays(c, plans, now)
    else:
        _write_rows(c, plans, now)
    placements: list[tuple[Any, int]] = []
    for job, targets, message, _ in plans:
        if message is not None:
            placements += [(message, b.id) for b in targets]
            if message.patient_id is not None:
                audit.record(s, None, "patient.message.smtp", object_type="message", object_id=message.id,
                             patient_id=message.patient_id, client=job.env.peer[:64])
    s.flush()  # audit rows
    if placements:
        _deliver_batch(s, out, placements)
    # Last, just before the COMMIT: the files of the messages whose rows name them.
    _await_blobs([job for job, _, message, views in plans if message is not None and views])
    return replies


_Plan = tuple[_Job, list[_Box], SimpleNamespace | None, list]


def _write_rows(c: sa.Connection, plans: list[_Plan], now) -> None:
    """The batch's rows with one multi-row INSERT per table (SQLite; PostgreSQL's reference)."""
    files = [v for _, _, _, views in plans for v in views]
    if files:
        c.execute(_INSERT_ATTACHMENTS, [vars(v) for v in files])
    _insert_messages(c, [m for _, _, m, _ in plans if m is not None])
    # Rows nobody reads back in this transaction: plain multi-row INSERTs (no per-row RETURNING).
    links, recipients, inbound = [], [], []
    for job, targets, message, views in plans:
        ref = {"message_id": message.id if message is not None else None}
        if message is not None:
            links += _link_rows(ref, views)
            recipients += _recipient_rows(ref, targets, now)
        inbound += _inbound_rows(ref, job, targets, message is not None, now)
    for statement, rows in ((_INSERT_LINKS, links), (_INSERT_RECIPIENTS, recipients), (_INSERT_INBOUND, inbound)):
        if rows:
            c.execute(statement, rows)
    _keep_raw(c, [j for j, _, _, _ in plans], now)


def _link_rows(ref: dict[str, Any], views: list) -> list[dict[str, Any]]:
    return [{**ref, "attachment_id": v.id, "position": pos} for pos, v in enumerate(views)]


def _recipient_rows(ref: dict[str, Any], targets: list[_Box], now) -> list[dict[str, Any]]:
    return [{**ref, "kind": "to", "address": b.address, "display_name": b.display_name, "mailbox_id": b.id,
             "status": "delivered", "status_at": now} for b in targets]


def _inbound_rows(ref: dict[str, Any], job: _Job, targets: list[_Box], message: bool, now) -> list[dict[str, Any]]:
    return [{**ref, "mailbox_id": b.id, "rfc_message_id": job.rfc_id, "raw_sha256": job.raw_sha,
             "raw_size": len(job.env.raw), "mail_from": job.env.mail_from[:254], "peer": job.env.peer[:80],
             "kind": "message" if message else "mdn", "received_at": now} for b in targets]


def _raw_rows(jobs: list[_Job], now) -> list[dict[str, Any]]:
    """The raw forms, once per content."""
    wanted = {j.raw_sha: j.env.raw for j in jobs}
    return [{"sha256": k, "size": len(v), "data": v, "received_at": now} for k, v in wanted.items()]


def _write_arrays(c: sa.Connection, plans: list[_Plan], now) -> None:
    """The batch's rows in one PostgreSQL statement (``store.gateway.inbound_batch_statement``): messages,
    attachments, their links, recipients, ``gw_inbound`` and the raw forms, each table's rows as
    arrays (one fixed text, prepared once, whatever the batch's size). The messages' ids are set
    on them, as :func:`_insert_messages` does; the rows are those :func:`_write_rows` writes."""
    new = [m for _, _, m, _ in plans if m is not None]
    messages_ = [vars(m) for m in new]
    files = [vars(v) for _, _, _, views in plans for v in views]
    links, recipients, inbound = [], [], []
    k = 0
    for job, targets, message, views in plans:
        if message is not None:
            k += 1
            ref = {"msg": k}
            links += _link_rows(ref, views)
            recipients += _recipient_rows(ref, targets, now)
        inbound += _inbound_rows({"msg": k if message is not None else None}, job, targets, message is not None, now)
    tables = {"m": messages_, "a": files, "l": links, "r": recipients, "g": inbound,
              "w": _raw_rows([j for j, _, _, _ in plans], now)}
    statement, shapes = inbound_batch_statement(tuple((name, _keys(rows)) for name, rows in tables.items()))
    params: dict[str, Any] = {}
    for name, shape in shapes.items():
        for i, values in enumerate(shape.arrays(tables[name])):
            params[f"{name}{i}"] = values
    ids = list(c.scalars(statement, params))
    for m, new_id in zip(new, ids, strict=True):
        m.id = new_id
        if m.thread_id is None:
            m.thread_id = new_id


def _keys(rows: list[dict[str, Any]]) -> tuple[str, ...]:
    """The keys of a table's rows (the same in every row of a batch)."""
    return tuple(rows[0]) if rows else ()




def _keep_raw(s: sa.Connection, jobs: list[_Job], now) -> None:
    """The raw forms, once per content (a message already kept is not written again)."""
    rows = _raw_rows(jobs, now)
    if rows:
        s.execute(_INSERT_RAW[s.dialect.name], rows)


def _deliver_batch(s: Session, out: list, placements: list[tuple[Any, int]]) -> None:
    """Place the batch's messages in their mailboxes (``messages.place_sync``, one INSERT)."""
    out.extend(messages.place_sync(s, [
        messages.Placement(m.id, box, Role.IN, m.category, m.created_at, m.subject, m.sender_name or m.sender_address)
        for m, box in placements]))


def _new_message(s: Session, job: _Job, targets: list[_Box], now) -> tuple[SimpleNamespace, list]:
    """The values of the message's row (inserted with the batch's) and its registered attachments."""
    parsed, content, env = job.parsed, job.content, job.env
    category = categorize(parsed, content)
    patient = _patient(s, parsed, content)
    parent = _parent(s, parsed, [b.id for b in targets])
    html = messages.sanitize_html(parsed.html) if parsed.html else None
    body = parsed.text
    views = []
    for part, (digest, size, ctype) in zip(parsed.attachments, job.files, strict=True):
        views.append(SimpleNamespace(id=secrets.token_hex(16), sha256=digest, size=size, content_type=ctype,
                                     filename=att_service.safe_filename(part.filename), uploaded_by=None,
                                     created_at=now))
    headers: dict[str, Any] = {"mss": parsed.mss_headers, "smtp_from": env.mail_from, "peer": env.peer,
                               "to": [[n, a] for n, a in parsed.to], "cc": [[n, a] for n, a in parsed.cc]}
    if parsed.is_report:
        headers["report"] = "mdn" if parsed.mdn is not None else "dsn"
    if parsed.notify_to:
        headers["notify_to"] = parsed.notify_to
    if content is not None:
        headers["xdm"] = {"title": content.title, "type_codes": content.type_codes}
    subject = parsed.subject or (content.title if content else "")
    message = SimpleNamespace(
        message_id=job.rfc_id, sender_address=parsed.sender_address, sender_name=parsed.sender_name,
        subject=subject, body=body, html=html, preview=preview(body), category=category, created_at=now,
        sent_at=parsed.date or now, patient_id=patient.id if patient else None, has_attachments=bool(views),
        origin="smtp", raw_sha256=job.raw_sha, headers=headers, receipt_requested=bool(parsed.notify_to),
        in_reply_to_id=parent.id if parent else None,
        thread_id=(parent.thread_id or parent.id) if parent else None, is_draft=False, no_reply=False,
        search_text=messages.build_search_text(subject, body, parsed.sender_name, parsed.sender_address,
                                               [v.filename for v in views], extra=patients.search_text(patient),
                                               mailbox_ids=[b.id for b in targets]),
    )
    return message, views


def _insert_messages(s: sa.Connection, new: list[SimpleNamespace]) -> None:
    """One INSERT for the batch's messages; their ids are set on them (and threads started)."""
    if not new:
        return
    # One multi-row INSERT … RETURNING ("insertmanyvalues"), ids in the order of the rows.
    ids = list(s.scalars(_INSERT_MESSAGES, [dict(vars(m)) for m in new]))
    for m, new_id in zip(new, ids, strict=True):
        m.id = new_id
        if m.thread_id is None:
            m.thread_id = new_id
    s.execute(_START_THREADS, {"ids": ids})


def _patient(s, parsed: mime.ParsedMail, content: xdm.XdmContent | None) -> Patient | None:
    """The patient named by the XDM metadata (created when new), or by a patient sender address."""
    ins, oid, traits = None, None, None
    if content is not None and content.patient and content.patient.ins:
        ins, oid, traits = content.patient.ins.upper(), content.patient.oid, content.patient
    elif _domain(parsed.sender_address) == PATIENT_DOMAIN:
        ins = parsed.sender_address.split("@")[0].upper()
    if not ins or not is_valid_ins(ins):
        return None
    patient = s.scalar(sa.select(Patient).where(Patient.ins == ins))
    if patient is None and traits is not None and oid in KNOWN_OIDS:
        patient = Patient(ins=ins, ins_oid=oid, family_name=traits.family_name.upper(),
                          given_names=traits.given_names, birth_date=traits.birth_date, sex=traits.sex)
        patient.search_name = patients.search_name(patient)
        s.add(patient)
        s.flush()
    return patient


def _parent(s, parsed: mime.ParsedMail, mailbox_ids: list[int]) -> Message | None:
    """The message this one answers, if it sits in one of the recipient mailboxes."""
    ids = list(dict.fromkeys(parsed.in_reply_to + list(reversed(parsed.references))))
    if not ids:
        return None
    return s.scalar(
        sa.select(Message).join(Delivery, Delivery.message_id == Message.id)
        .where(Message.message_id.in_(ids), Delivery.mailbox_id.in_(mailbox_ids))
        .order_by(Message.id.desc()).limit(1))


def _apply_mdn(s: Session, out: list, parsed: mime.ParsedMail, mailbox_ids: list[int], now) -> bool:
    """A read receipt for one of our messages: record when that recipient displayed it. Returns
    whether it was applied; one that is not (unknown message, another disposition, a recipient of
    another operator) is then delivered as a message instead of being dropped."""
    report = parsed.mdn
    assert report is not None
    if report.disposition != "displayed" or not report.original_message_id:
        return False
    original = s.scalar(sa.select(Message).where(
        Message.message_id == report.original_message_id, Message.from_mailbox_id.in_(mailbox_ids)).limit(1))
    if original is None:
        log.info("MDN for unknown message %s", report.original_message_id)
        return False
    # A receipt speaks only for recipients of the operator that sends it: one operator cannot
    # mark another operator's recipient as having read a message.
    sender_domain = _domain(parsed.sender_address)
    # The recipient it names (the sender itself only when it names none).
    named = report.final_recipient or parsed.sender_address
    candidates = {named} if "@" in named and _related(_domain(named), sender_domain) else set()
    if not candidates:
        return False
    recipient = s.scalar(sa.select(Recipient).where(
        Recipient.message_id == original.id, Recipient.mailbox_id.is_(None),
        sa.func.lower(Recipient.address).in_(candidates)).limit(1))
    if recipient is None:
        return False
    if recipient.read_at is not None:
        return True  # the same receipt again
    recipient.read_at = now
    owners = mailboxes.accounts_of_sync(s, [original.from_mailbox_id])
    out.append(("message.read", owners.get(original.from_mailbox_id, []), dict(
        message_id=original.id, mailbox_id=original.from_mailbox_id, reader_mailbox=recipient.address,
        read_at=now.isoformat(), reader_name=recipient.display_name or recipient.address)))
    return True


def _apply_dsn(s: Session, out: list, parsed: mime.ParsedMail, mailbox_ids: list[int], now) -> None:
    """A non-delivery notice about one of our messages: its failed recipients say "échec" with the
    reason the other side gave (the notice itself is delivered as a message too)."""
    report = parsed.dsn
    assert report is not None
    if not report.original_message_id:
        return
    original = s.scalar(sa.select(Message).where(
        Message.message_id == report.original_message_id, Message.from_mailbox_id.in_(mailbox_ids)).limit(1))
    if original is None:
        return
    sender_domain = _domain(parsed.sender_address)
    changes = []
    for item in report.recipients:
        if item.action != "failed" or "@" not in item.final_recipient:
            continue
        if not _related(_domain(item.final_recipient), sender_domain):
            continue  # a report about another operator's recipient is not this sender's to make
        recipient = s.scalar(sa.select(Recipient).where(
            Recipient.message_id == original.id, Recipient.mailbox_id.is_(None),
            sa.func.lower(Recipient.address) == item.final_recipient).limit(1))
        if recipient is None or recipient.status == "failed":
            continue
        detail = " ".join(x for x in (item.status, item.diagnostic) if x) or "non distribué"
        recipient.status, recipient.next_attempt_at = "failed", None
        recipient.status_detail, recipient.status_at = f"avis de non-distribution : {detail}"[:2000], now
        changes.append({"address": recipient.address, "status": "failed", "detail": recipient.status_detail})
    if changes:
        owners = mailboxes.accounts_of_sync(s, [original.from_mailbox_id])
        out.append(("message.delivery", owners.get(original.from_mailbox_id, []), dict(
            message_id=original.id, mailbox_id=original.from_mailbox_id, recipients=changes)))


async def raw_message(core: Core, sha256: str) -> bytes | None:
    """The raw form of an inbound message, for audit."""
    async with core.read() as s:
        return await s.scalar(sa.select(RawMessage.data).where(RawMessage.sha256 == sha256))


async def check_invariant(core: Core, limit: int = 100_000) -> list[str]:
    """The broken promises among the last ``limit`` acknowledged messages (see the module): each
    ``gw_inbound`` row is a message still held by its mailbox (in it, or in its bin) or a receipt
    applied there, and its raw form is kept. An empty list is the expected answer."""
    problems: list[str] = []
    async with core.read() as s:
        rows = (await s.execute(
            sa.select(InboundMessage.id, InboundMessage.mailbox_id, InboundMessage.message_id,
                      InboundMessage.kind, InboundMessage.rfc_message_id, InboundMessage.raw_sha256,
                      Delivery.id.label("delivery_id"), RawMessage.sha256.label("raw"))
            .outerjoin(Delivery, sa.and_(Delivery.mailbox_id == InboundMessage.mailbox_id,
                                         Delivery.message_id == InboundMessage.message_id))
            .outerjoin(RawMessage, RawMessage.sha256 == InboundMessage.raw_sha256)
            .order_by(InboundMessage.id.desc()).limit(limit))).all()
    for r in rows:
        if r.raw is None:
            problems.append(f"{r.rfc_message_id} (boîte {r.mailbox_id}) : forme brute absente")
        # A message the user deleted for good (bin emptied) has its link set to NULL: not a loss.
        if r.kind == "message" and r.message_id is not None and r.delivery_id is None:
            problems.append(f"{r.rfc_message_id} (boîte {r.mailbox_id}) : acquitté mais absent de la boîte")
        if r.kind not in ("message", "mdn"):
            problems.append(f"{r.rfc_message_id} : nature inconnue {r.kind!r}")
    return problems
