"""National directory: imports of the open-data extractions, the search index, search,
profile cards, expert declarations and publication (correspondence file, FHIR R4).

Import (``import_files``) streams each file in batches: memory stays flat whatever the file
size. Every row carries a hash of its content and the id of the last run that saw it, so a
second import of the same file writes nothing but that bookkeeping, a newer file updates what
changed, and rows a complete file no longer lists are marked inactive (never deleted).

The search index (``dir_search``) has one row per result entry: published external mailboxes,
professionals without a mailbox, and our own mailboxes (kept in step by ``sync_local``, which
search calls whenever the local mailboxes, accounts or profiles changed). See
``store/directory.py`` for how its ids give the ranking order on both engines.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import functools
import hashlib
import io
import json
import math
import multiprocessing
import operator
import os
import re
import time
import zipfile
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from monsisra.domain import directory_format as fmt
from monsisra.domain import directory_search as ds
from monsisra.domain.clock import as_utc, utcnow
from monsisra.domain.text import TextRefused, check_line, clean_multiline, fold
from monsisra.services import communes as communes_service
from monsisra.services.core import Actor, Core
from monsisra.services.errors import Forbidden, Invalid, NotFound
from monsisra.store.db import among
from monsisra.store.directory import (
    FTS_TABLE,
    NATIONAL_OFFSET,
    SECTION_SPAN,
    SECTIONS,
    DirActivity,
    DirImportRun,
    DirMailbox,
    DirMeta,
    DirOrganisation,
    DirPerson,
    DirProfile,
    DirSearch,
    DirService,
    DirTermKey,
)
from monsisra.store.models import Account, Mailbox

BATCH = 5000
TOTAL_CAP = 1000  # totals are counted up to this ("plus de 1000 résultats")
ACTIVE_DAYS = 30
KINDS = ("all", "professionals", "services", "experts", "resource_teams")
MODALITIES = ("new_patients", "unscheduled_care", "home_visits", "teleconsultation", "telecare", "teleexpertise",
              "weekends_holidays", "night_on_call")
EXPERT_FIELDS = ("description", "documents", "urgent_contact", "specialties")
_RESOURCE = re.compile(r"\b(dac|cpts|pta|reppop|dispositif d appui|plateforme territoriale d appui|"
                       r"communaute professionnelle territoriale|appui a la coordination)\b")
_TITLES = {"docteur": "Dr", "professeur": "Pr", "madame": "Mme", "monsieur": "M.", "dr": "Dr", "pr": "Pr"}


# --- Reports ---------------------------------------------------------------------------------

@dataclass
class Counts:
    created: int = 0
    updated: int = 0
    deactivated: int = 0
    unchanged: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"created": self.created, "updated": self.updated, "deactivated": self.deactivated,
                "unchanged": self.unchanged}


@dataclass
class FileReport:
    name: str
    kind: str
    lines: int = 0
    rejected: int = 0
    errors: list[str] = field(default_factory=list)
    entities: dict[str, Counts] = field(default_factory=dict)
    deactivation_skipped: bool = False

    def counts(self, entity: str) -> Counts:
        return self.entities.setdefault(entity, Counts())

    def reject(self, message: str) -> None:
        self.rejected += 1
        if len(self.errors) < 200:
            self.errors.append(message)

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.name, "kind": self.kind, "lines": self.lines, "rejected": self.rejected,
                "errors": self.errors, "deactivation_skipped": self.deactivation_skipped,
                "entities": {k: v.as_dict() for k, v in self.entities.items()}}


@dataclass
class ImportReport:
    files: list[FileReport] = field(default_factory=list)
    indexed: int | None = None

    @property
    def totals(self) -> Counts:
        out = Counts()
        for f in self.files:
            for c in f.entities.values():
                out.created += c.created
                out.updated += c.updated
                out.deactivated += c.deactivated
                out.unchanged += c.unchanged
        return out

    @property
    def rejected(self) -> int:
        return sum(f.rejected for f in self.files)

    def as_dict(self) -> dict[str, Any]:
        t = self.totals
        return {"created": t.created, "updated": t.updated, "deactivated": t.deactivated, "unchanged": t.unchanged,
                "rejected": self.rejected, "indexed": self.indexed, "files": [f.as_dict() for f in self.files]}


Progress = Callable[[str, int, int], None]  # (phase, done, total)


# --- Sources ---------------------------------------------------------------------------------

@dataclass
class Source:
    """One extraction file: a plain ``.txt`` or a ``.txt`` member of a ``.zip``."""

    path: Path
    member: str | None
    size: int

    @property
    def name(self) -> str:
        return self.member or self.path.name

    def open(self) -> io.TextIOBase:
        if self.member is None:
            return open(self.path, encoding="utf-8-sig", newline="")
        archive = zipfile.ZipFile(self.path)
        return io.TextIOWrapper(archive.open(self.member), encoding="utf-8-sig", newline="")


def sources(paths: list[Path]) -> list[Source]:
    out = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise Invalid(f"fichier introuvable : {path}")
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                members = [i for i in archive.infolist() if i.filename.lower().endswith(".txt") and not i.is_dir()]
            if not members:
                raise Invalid(f"{path.name} : l'archive ne contient aucun fichier .txt")
            out.extend(Source(path, i.filename, i.file_size) for i in members)
        else:
            out.append(Source(path, None, path.stat().st_size))
    return out


def check_header(source: Source) -> fmt.Layout:
    with source.open() as f:
        header = f.readline()
    try:
        return fmt.detect(header, source.name)
    except fmt.HeaderError as exc:
        raise Invalid(f"{source.name} : {exc}", missing=exc.missing) from None


# --- Helpers ---------------------------------------------------------------------------------

def _hash(*values: str) -> str:
    return hashlib.md5("\x1f".join(values).encode(), usedforsecurity=False).hexdigest()


_LENGTHS: dict[str, dict[str, int]] = {}


def _fit(table: sa.Table, row: dict[str, Any]) -> dict[str, Any]:
    """Cut strings to their column length (PostgreSQL refuses longer ones)."""
    lengths = _LENGTHS.get(table.name)
    if lengths is None:
        lengths = {c.name: c.type.length for c in table.columns
                   if isinstance(c.type, sa.String) and getattr(c.type, "length", None)}
        _LENGTHS[table.name] = lengths
    for key, n in lengths.items():
        v = row.get(key)
        if isinstance(v, str) and len(v) > n:
            row[key] = v[:n]
    return row


def _short_title(title: str) -> str:
    return _TITLES.get(fold(title), title)


def _is_postgres(session: AsyncSession) -> bool:
    return session.bind.dialect.name == "postgresql"


async def _bulk_insert(session: AsyncSession, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    columns = list(rows[0].keys())
    if len(columns) == 1:
        await _insert_tuples(session, table, columns, [(r[columns[0]],) for r in rows])
        return
    get = operator.itemgetter(*columns)
    await _insert_tuples(session, table, columns, [get(r) for r in rows])


async def _insert_tuples(session: AsyncSession, table: sa.Table, columns: list[str], rows: list[tuple]) -> None:
    """Rows straight to the driver (COPY on PostgreSQL): SQLAlchemy's per-row parameter handling
    costs more than the database itself."""
    if not rows:
        return
    conn = await session.connection()
    if _is_postgres(session):
        raw = await conn.get_raw_connection()
        await raw.driver_connection.copy_records_to_table(table.name, records=rows, columns=columns)
    else:
        sql = f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
        await conn.exec_driver_sql(sql, rows)


# --- Import ----------------------------------------------------------------------------------

HELPERS = min(os.cpu_count() or 1, 4)  # processes; each holds the communes (~150 MB)
HELPERS_ABOVE = 10_000  # rows (file lines at ~200 bytes, index entries): below, no helper is started


class _Helpers:
    """Helper processes for the CPU-bound parts of an import (parsing lines, building index
    entries), so that Python works on the other cores while this process talks to the database.
    Results come back in submission order. ``inline`` runs everything here instead."""

    def __init__(self, inline: bool = False) -> None:
        self.inline = inline
        self._pool: ProcessPoolExecutor | None = None
        self._pending: collections.deque[asyncio.Future] = collections.deque()

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        loop = asyncio.get_running_loop()
        if self.inline:
            future = loop.create_future()
            try:
                future.set_result(fn(*args))
            except Exception as exc:  # handed over to whoever awaits the result
                future.set_exception(exc)
        else:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(HELPERS, mp_context=multiprocessing.get_context("spawn"))
            future = loop.run_in_executor(self._pool, fn, *args)
        self._pending.append(future)

    async def results(self, keep: int | None = None) -> AsyncIterator[Any]:
        """Finished results in order, leaving ``keep`` (default: one per helper) at work."""
        keep = 0 if self.inline else HELPERS if keep is None else keep
        while len(self._pending) > keep:
            yield await self._pending.popleft()

    def __enter__(self) -> _Helpers:
        return self

    def __exit__(self, *exc: Any) -> None:
        for future in self._pending:
            future.cancel()
        self._pending.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


class _Pipeline:
    """One database write in flight while the caller prepares the next: the database works while
    Python parses. Never more than one, so writes commit in order (a batch may rely on the
    organisations an earlier one created)."""

    def __init__(self) -> None:
        self._task: asyncio.Task | None = None

    async def submit(self, write: Any) -> None:
        try:
            await self.wait()
        except BaseException:
            write.close()  # the earlier write failed: this one never starts
            raise
        self._task = asyncio.create_task(write)

    async def wait(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await task

    def busy(self) -> bool:
        return self._task is not None and not self._task.done()

    async def __aenter__(self) -> _Pipeline:
        return self

    async def __aexit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            await self.wait()
        elif self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task


def _org_key_from_activity(row: dict[str, str]) -> tuple[str, str, str] | None:
    if row["finess"]:
        return "1" + row["finess"], "FINESS", row["finess"]
    if row["siret"]:
        return "3" + row["siret"], "SIRET", row["siret"]
    if row["structure_id"]:
        return "4" + row["structure_id"], "ID", row["structure_id"]
    return None


_ID_TYPES = {"1": "FINESS", "2": "SIREN", "3": "SIRET", "4": "ID"}


async def _ensure_orgs(session: AsyncSession, run: int, orgs: dict[str, dict[str, Any]], report: FileReport
                       ) -> dict[str, int]:
    """Organisations by key, creating the missing ones (first source wins; never flip-flops)."""
    if not orgs:
        return {}
    t = DirOrganisation.__table__
    pg = _is_postgres(session)
    found = dict((await session.execute(sa.select(t.c.key, t.c.id).where(among(t.c.key, orgs, pg)))).all())
    new = [_fit(t, {**v, "key": k, "row_hash": "", "last_run": run}) for k, v in orgs.items() if k not in found]
    if new:
        await _bulk_insert(session, t, new)
        report.counts("organisations").created += len(new)
        found.update((await session.execute(
            sa.select(t.c.key, t.c.id).where(among(t.c.key, [r["key"] for r in new], pg)))).all())
    return found


async def _upsert(session: AsyncSession, table: sa.Table, key_col: str, run: int, rows: dict[str, dict[str, Any]],
                  counts: Counts, extra_where=None) -> None:
    """Insert new keys, update changed ones, stamp unchanged ones with the run (first line wins)."""
    key = table.c[key_col]
    cols = [table.c.id, key, table.c.row_hash, table.c.last_run, table.c.active]
    stmt = sa.select(*cols).where(among(key, rows, _is_postgres(session)))
    existing = {r[1]: r for r in (await session.execute(stmt)).all()}
    inserts, updates, touch = [], [], []
    stamp = {"last_run": run, "active": True}
    if "updated_at" in table.c:
        stamp["updated_at"] = utcnow()
    for k, values in rows.items():
        values.update(stamp)
        e = existing.get(k)
        if e is None:
            values[key_col] = k
            inserts.append(values)
            counts.created += 1
        elif extra_where is not None and not extra_where(e, values):
            continue
        elif e.last_run == run:
            continue
        elif e.row_hash != values["row_hash"] or not e.active:
            updates.append({**values, "_id": e.id})
            counts.updated += 1
        else:
            touch.append(e.id)
            counts.unchanged += 1
    if inserts:
        await _bulk_insert(session, table, inserts)
    if updates:
        names = [c for c in updates[0] if c != "_id"]
        await session.execute(
            sa.update(table).where(table.c.id == sa.bindparam("_id")).values({c: sa.bindparam(c) for c in names})
            .execution_options(synchronize_session=False), updates)
    if touch:
        await session.execute(sa.update(table).where(among(table.c.id, touch, _is_postgres(session)))
                              .values(last_run=run))


_Persons = tuple[dict[str, dict[str, Any]], dict[str, tuple[str, dict[str, Any]]], dict[str, dict[str, Any]]]


def _prepare_persons(batch: list[dict[str, str]]) -> _Persons:
    """People, activities and organisations of a batch of activity lines, keyed (first line wins)."""
    people: dict[str, dict[str, Any]] = {}
    activities: dict[str, tuple[str, dict[str, Any]]] = {}
    orgs: dict[str, dict[str, Any]] = {}
    for r in batch:
        nid = r["national_id"]
        if nid not in people:
            values = {"id_type": r["id_type"], "pp_id": r["pp_id"], "title": r["title"], "civility": r["civility"],
                      "last_name": r["last_name"], "first_name": r["first_name"],
                      "profession_code": r["profession_code"], "profession": r["profession"],
                      "category": r["category"]}
            values["row_hash"] = _hash(*values.values())
            values["sort_key"] = ds.cached_fold(f"{r['last_name']} {r['first_name']}")
            people[nid] = _fit(DirPerson.__table__, values)
        org = _org_key_from_activity(r)
        key = "|".join((nid, org[0] if org else "", r["mode_code"], r["function_code"], r["specialty_code"],
                        r["sector_code"]))[:200]
        address = ", ".join(p for p in (r["addr_recipient"], r["addr_place"], fmt.street_line(r), r["distribution"],
                                        r["cedex"]) if p)
        act = {"specialty_code": r["specialty_code"], "specialty": r["specialty"], "skill_type": r["skill_type"],
               "mode_code": r["mode_code"], "mode": r["mode"], "structure_id": r["structure_id"],
               "siret": r["siret"], "finess": r["finess"], "site_name": r["site_name"],
               "trade_name": r["trade_name"], "address": address, "postcode": r["postcode"],
               "commune_code": r["commune_code"], "commune": r["commune"], "department_code": r["department_code"],
               "phone": r["phone"], "email": r["email"], "sector": r["sector"], "function": r["function"]}
        act["row_hash"] = _hash(*act.values())
        if key not in activities:
            activities[key] = (nid, _fit(DirActivity.__table__, act))
        if org and org[0] not in orgs:
            orgs[org[0]] = _fit(DirOrganisation.__table__, {
                "id_type": org[1], "identifier": org[2], "finess": r["finess"], "siret": r["siret"],
                "name": r["site_name"], "trade_name": r["trade_name"], "postcode": r["postcode"],
                "commune_code": r["commune_code"]})
    return people, activities, orgs


async def _write_persons(core: Core, run: int, prepared: _Persons, report: FileReport) -> None:
    people, activities, orgs = prepared
    async with core.write() as tx:
        s = tx.session
        await _ensure_orgs(s, run, orgs, report)
        await _upsert(s, DirPerson.__table__, "national_id", run, people, report.counts("people"))
        ids = dict((await s.execute(sa.select(DirPerson.national_id, DirPerson.id)
                                    .where(among(DirPerson.national_id, people, _is_postgres(s))))).all())
        rows = {k: {**v, "person_id": ids[nid]} for k, (nid, v) in activities.items()}
        await _upsert(s, DirActivity.__table__, "key", run, rows, report.counts("activities"))


_Mailboxes = tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]], set[tuple[str, str]]]


def _prepare_mailboxes(batch: list[dict[str, str]]) -> _Mailboxes:
    """Mailbox entries, organisations and services of a batch of correspondence lines."""
    entries: dict[str, dict[str, Any]] = {}
    orgs: dict[str, dict[str, Any]] = {}
    services: set[tuple[str, str]] = set()
    for r in batch:
        if r["address"] in entries:
            continue  # an address listed twice: the first line wins
        delivery = r["delivery_line"]
        city = re.sub(r"^\s*\d{4,5}\s*", "", delivery).strip()
        org_key = r["structure_id"][:40]  # the column length of dir_mailboxes.structure_id
        values = {"kind": r["kind"], "national_id": r["national_id"], "structure_id_type": r["structure_id_type"],
                  "structure_id": r["structure_id"], "service": r["service"], "title": r["title"],
                  "last_name": r["last_name"], "first_name": r["first_name"],
                  "profession_code": r["profession_code"], "profession": r["profession"],
                  "specialty_code": r["specialty_code"], "specialty": r["specialty"], "paperless": r["paperless"],
                  "org_name": r["org_name"], "trade_name": r["trade_name"],
                  "address_lines": ", ".join(p for p in (r["addr_place"], r["addr_distribution"], fmt.street_line(r),
                                                         r["locality"]) if p),
                  "postcode": r["postcode"], "city": city, "department_code": r["department_code"],
                  "country": r["country"]}
        values["row_hash"] = _hash(*values.values())
        if r["kind"] == "PER":
            values["sort_key"] = ds.cached_fold(f"{r['last_name']} {r['first_name']}")
        else:
            values["sort_key"] = ds.cached_fold(f"{r['service']} {r['org_name']}")
        entries[r["address"]] = _fit(DirMailbox.__table__, values)
        if org_key and org_key not in orgs:
            orgs[org_key] = _fit(DirOrganisation.__table__, {
                             "id_type": _ID_TYPES.get(r["structure_id_type"], r["structure_id_type"]),
                             "identifier": org_key[1:] if org_key[:1] == r["structure_id_type"] else org_key,
                             "finess": org_key[1:] if r["structure_id_type"] == "1" else "",
                             "siret": org_key[1:] if r["structure_id_type"] == "3" else "",
                             "name": r["org_name"], "trade_name": r["trade_name"], "postcode": r["postcode"],
                             "commune_code": ""})
        if org_key and r["service"]:
            services.add((org_key, r["service"][:200]))
    return entries, orgs, services


async def _write_mailboxes(core: Core, run: int, prepared: _Mailboxes, report: FileReport) -> None:
    entries, orgs, services = prepared
    async with core.write() as tx:
        s = tx.session
        org_ids = await _ensure_orgs(s, run, orgs, report)
        service_ids: dict[tuple[int, str], int] = {}
        if services:
            pairs = {(org_ids[k], name) for k, name in services}
            t = DirService.__table__
            of_orgs = sa.select(t.c.id, t.c.organisation_id, t.c.name).where(
                among(t.c.organisation_id, {o for o, _ in pairs}, _is_postgres(s)))
            have = {(o, n): i for i, o, n in (await s.execute(of_orgs)).all()}
            missing = [{"organisation_id": o, "name": n} for o, n in pairs if (o, n) not in have]
            if missing:
                await s.execute(sa.insert(t), missing)
                have = {(o, n): i for i, o, n in (await s.execute(of_orgs)).all()}
            service_ids = have
        for values in entries.values():
            oid = org_ids.get(values["structure_id"]) if values["structure_id"] else None
            values["organisation_id"] = oid
            values["service_id"] = service_ids.get((oid, values["service"][:200])) if oid else None
            values["source"] = "national"
        sources_of = dict((await s.execute(sa.select(DirMailbox.address, DirMailbox.source)
                                           .where(among(DirMailbox.address, entries, _is_postgres(s))))).all())
        # Our own mailboxes are described by us, not by the national file.
        national = {a: v for a, v in entries.items() if sources_of.get(a, "national") == "national"}
        report.counts("mailboxes").unchanged += len(entries) - len(national)
        await _upsert(s, DirMailbox.__table__, "address", run, national, report.counts("mailboxes"))


def _prepare_lines(layout: fmt.Layout, name: str, lines: list[tuple[int, str]]) -> tuple[Any, list[str]]:
    """Parse and shape one batch of lines; runs in a helper process for large files. Returns the
    prepared rows and the rejections ("ligne N : …")."""
    rows: list[dict[str, str]] = []
    rejects: list[str] = []
    for line_no, text in lines:
        try:
            rows.append(fmt.parse(layout, text, line_no))
        except fmt.LineError as exc:
            rejects.append(f"{name} : {exc}")
    prepare = _prepare_persons if layout.kind == fmt.PERSONS else _prepare_mailboxes
    return prepare(rows), rejects


async def _deactivate(core: Core, run: int, kind: str, report: FileReport) -> None:
    async with core.write() as tx:
        s = tx.session
        if kind == fmt.PERSONS:
            targets = [("people", DirPerson.__table__, None), ("activities", DirActivity.__table__, None)]
        else:
            targets = [("mailboxes", DirMailbox.__table__, DirMailbox.__table__.c.source == "national")]
        for entity, table, cond in targets:
            stmt = sa.update(table).where(table.c.active.is_(True), table.c.last_run != run).values(active=False)
            if cond is not None:
                stmt = stmt.where(cond)
            result = await s.execute(stmt)
            report.counts(entity).deactivated += result.rowcount or 0


async def import_files(core: Core, paths: list[Path], progress: Progress | None = None,
                       rebuild: bool = True) -> ImportReport:
    """Import extraction files (``.txt`` or ``.zip``); every header is checked before anything is written."""
    srcs = sources(paths)
    layouts = [(src, check_header(src)) for src in srcs]
    # People first: the index joins mailboxes to the people they belong to.
    layouts.sort(key=lambda item: 0 if item[1].kind == fmt.PERSONS else 1)
    await communes_service.ensure_loaded(core)
    report = ImportReport()
    for src, layout in layouts:
        report.files.append(await _import_one(core, src, layout, progress))
    changed = any(c.created or c.updated or c.deactivated for f in report.files for c in f.entities.values())
    if rebuild and (changed or not await _index_count(core)):
        report.indexed = await rebuild_index(core, progress)
    return report


async def _import_one(core: Core, src: Source, layout: fmt.Layout, progress: Progress | None) -> FileReport:
    report = FileReport(src.name, layout.kind)
    async with core.write() as tx:
        run_row = DirImportRun(kind=layout.kind, filename=src.name[:255], stamp=fmt.file_stamp(src.name))
        tx.session.add(run_row)
        await tx.session.flush()
        run = run_row.id
    write = _write_persons if layout.kind == fmt.PERSONS else _write_mailboxes
    lines: list[tuple[int, str]] = []
    done = 0

    async def store(keep: int | None = None) -> None:
        async for prepared, rejects in helpers.results(keep):
            for message in rejects:
                report.reject(message)
            await writes.submit(write(core, run, prepared, report))

    # Helpers parse and shape batches while this process writes the previous one.
    with _Helpers(inline=src.size < HELPERS_ABOVE * 200) as helpers:
        async with _Pipeline() as writes:
            with src.open() as f:
                f.readline()
                for line_no, text in enumerate(f, start=2):
                    done += len(text)
                    if not text.strip():
                        continue
                    report.lines += 1
                    lines.append((line_no, text))
                    if len(lines) >= BATCH:
                        helpers.submit(_prepare_lines, layout, src.name, lines)
                        lines = []
                        await store()
                        if progress:
                            progress(src.name, done, src.size)
            if lines:
                helpers.submit(_prepare_lines, layout, src.name, lines)
            await store(keep=0)
    if progress:
        progress(src.name, src.size, src.size)
    # A file that is mostly unreadable is not a reason to switch the whole country off.
    if report.lines and report.rejected * 2 <= report.lines:
        await _deactivate(core, run, layout.kind, report)
    else:
        report.deactivation_skipped = True
    async with core.write() as tx:
        await tx.session.execute(sa.update(DirImportRun).where(DirImportRun.id == run)
                                 .values(finished_at=utcnow(), report=report.as_dict()))
    return report


# --- Index -----------------------------------------------------------------------------------

@dataclass
class Doc:
    """A search entry being built, and the words it is found by."""

    row: dict[str, Any]
    words: list[str]
    markers: list[str]

    def finish(self) -> dict[str, Any]:
        seen: dict[str, None] = {}
        for w in self.words:
            seen.setdefault(w, None)
        for m in self.markers:
            seen.setdefault(m, None)
        self.row["text"] = " ".join(seen)
        return self.row


def _place(index: communes_service.Index, postcode: str, city: str, department: str, commune_code: str = ""
           ) -> communes_service.Commune | None:
    if commune_code and commune_code in index.by_code:
        return index.by_code[commune_code]
    return index.resolve(postcode, city, department)


def _new_doc(section: str, seq: int, local: bool, **values: Any) -> Doc:
    row = {"id": SECTIONS[section] * SECTION_SPAN + (0 if local else NATIONAL_OFFSET) + seq, "section": section,
           "is_local": local, "kind": "", "local_mailbox_id": None, "address": None, "national_id": "", "name": "",
           "profession": "", "specialty": "", "organisation": "", "service": "", "commune_code": "", "commune": "",
           "postcode": "", "department_code": "", "latitude": None, "longitude": None, "is_expert": False,
           "is_resource_team": False}
    row.update(values)
    return Doc(row, [], [])


_COMMUNE_TERMS: dict[str, tuple[list[str], list[str], list[str]]] = {}


def _commune_terms(place: communes_service.Commune) -> tuple[list[str], list[str], list[str]]:
    """A commune's words, its markers (commune, department, grid cell when located), and the
    markers that place an entry there as a second site (commune, cell). Computed once per commune."""
    terms = _COMMUNE_TERMS.get(place.code)
    if terms is None:
        cell = [ds.grid_cell(place.latitude, place.longitude)] if place.latitude is not None else []
        commune = ds.marker("xc", place.code)
        terms = (ds.words(place.name), [commune, ds.marker("xd", place.department_code), *cell], [commune, *cell])
        _COMMUNE_TERMS[place.code] = terms
    return terms


def _fill_common(doc: Doc, place: communes_service.Commune | None, postcode: str, department: str,
                 organisations: list[str], extra_places: list[str] = ()) -> None:
    r = doc.row
    index = communes_service.package_index()
    if place is not None:
        r.update(commune_code=place.code, commune=place.name, department_code=place.department_code,
                 latitude=place.latitude, longitude=place.longitude)
        words, markers, _ = _commune_terms(place)
        doc.words += words
        doc.markers += markers
    elif department:
        r["department_code"] = department
        doc.markers.append(ds.marker("xd", department))
    for code in extra_places:
        other = index.by_code.get(code) if code else None
        if other is not None:
            doc.markers += _commune_terms(other)[2]
    r["postcode"] = postcode or (place.postcodes[0] if place and place.postcodes else "")
    if r["postcode"]:
        doc.words.append(r["postcode"])
        doc.markers.append(ds.marker("xp", r["postcode"]))
    for org in organisations:
        ws = ds.words(org)
        doc.words += ws
        doc.markers += ["xe" + w for w in ws]
    for part in (r["name"], r["profession"], r["specialty"], r["service"]):
        doc.words += ds.words(part)
    if r["is_expert"]:
        doc.markers.append("xkexpert")
    if r["is_resource_team"]:
        doc.markers.append("xkresource")


def _person_name(title: str, first: str, last: str) -> str:
    return " ".join(p for p in (_short_title(title), first, last.upper()) if p)


async def _activities_of(session: AsyncSession, person_ids: list[int]) -> dict[int, list[Any]]:
    if not person_ids:
        return {}
    t = DirActivity.__table__
    rows = (await session.execute(sa.select(t).where(among(t.c.person_id, person_ids, _is_postgres(session)),
                                                     t.c.active.is_(True))
                                  .order_by(t.c.person_id, t.c.id))).all()
    out: dict[int, list[Any]] = {}
    for a in rows:
        out.setdefault(a.person_id, []).append(a)
    return out


def _professional_doc(index, seq: int, local: bool, *, ref: str, address: str | None, national_id: str,
                      title: str, first: str, last: str, profession: str, specialties: list[str],
                      postcode: str, city: str, department: str, acts: list[Any], kind: str = "PER",
                      organisation: str = "", is_expert: bool = False, local_mailbox_id: int | None = None,
                      commune_code: str = "") -> Doc:
    specs: list[str] = []
    for sp in [*specialties, *(a.specialty for a in acts)]:
        if sp and sp not in specs:
            specs.append(sp)
    act = None
    if acts:
        act = next((a for a in acts if postcode and a.postcode == postcode), acts[0])
    place = _place(index, postcode, city, department, commune_code)
    if place is None and act is not None:
        place = _place(index, act.postcode, act.commune, act.department_code, act.commune_code)
        postcode = postcode or act.postcode
    orgs = [organisation] if organisation else []
    orgs += [a.site_name for a in acts if a.site_name and a.site_name not in orgs]
    doc = _new_doc("professionals", seq, local, ref=ref, kind=kind, address=address, national_id=national_id,
                   name=_person_name(title, first, last), profession=profession, specialty="; ".join(specs),
                   organisation=orgs[0] if orgs else "", is_expert=is_expert, local_mailbox_id=local_mailbox_id)
    _fill_common(doc, place, postcode, department, orgs, [a.commune_code for a in acts])
    return doc


def _service_doc(index, seq: int, local: bool, *, ref: str, address: str, kind: str, service: str,
                 organisation: str, postcode: str, city: str, department: str, is_expert: bool = False,
                 is_resource_team: bool | None = None, local_mailbox_id: int | None = None, name: str = "",
                 commune_code: str = "") -> Doc:
    label = name or (f"{service} — {organisation}" if service and organisation else service or organisation
                     or address.split("@")[0])
    if is_resource_team is None:
        is_resource_team = bool(_RESOURCE.search(" ".join(ds.words(f"{service} {organisation} {label}"))))
    doc = _new_doc("services", seq, local, ref=ref, kind=kind, address=address, name=label, service=service,
                   organisation=organisation, is_expert=is_expert, is_resource_team=is_resource_team,
                   local_mailbox_id=local_mailbox_id)
    place = _place(index, postcode, city, department, commune_code)
    _fill_common(doc, place, postcode, department, [organisation] if organisation else [])
    doc.words += ds.words(address.split("@")[0])
    return doc


# Only the columns index entries are built from: less to read, and to send to the helpers.
_BoxRow = collections.namedtuple("_BoxRow", "id address kind national_id title first_name last_name profession "
                                            "specialty service org_name organisation_id postcode city department_code")
_PersonRow = collections.namedtuple("_PersonRow", "id national_id title first_name last_name profession")
_ActivityRow = collections.namedtuple("_ActivityRow", "person_id specialty site_name postcode commune_code commune "
                                                      "department_code")


def _columns(table: sa.Table, row: type) -> list[sa.Column]:
    return [table.c[name] for name in row._fields]
_IndexRows = tuple[list[str], list[tuple], collections.Counter]  # columns, rows, vocabulary word → entries


def _index_rows(docs: list[Doc]) -> _IndexRows:
    """Finished ``dir_search`` rows (cut to their column lengths) and the words for the typo
    vocabulary, each with the number of entries it is found in."""
    vocabulary: collections.Counter = collections.Counter()
    rows = []
    table = DirSearch.__table__
    for d in docs:
        vocabulary.update(set(_vocabulary_words(d)))
        rows.append(_fit(table, d.finish()))
    columns = list(rows[0]) if rows else []
    get = operator.itemgetter(*columns) if columns else None
    return columns, [get(r) for r in rows], vocabulary


def _professional_rows(seq: int, chunk: list[tuple[str, int]], boxes: list[tuple], people: list[tuple],
                       activities: list[tuple]) -> _IndexRows:
    """Helper side: index entries of professionals, in ranking order, numbered from ``seq + 1``."""
    index = communes_service.package_index()
    by_box = {b.id: b for b in map(_BoxRow._make, boxes)}
    people_rows = [_PersonRow._make(x) for x in people]
    by_nid = {x.national_id: x for x in people_rows}
    by_id = {x.id: x for x in people_rows}
    acts: dict[int, list[Any]] = {}
    for a in map(_ActivityRow._make, activities):
        acts.setdefault(a.person_id, []).append(a)
    docs = []
    for src, id_ in chunk:
        seq += 1
        if src == "m":
            b = by_box[id_]
            person = by_nid.get(b.national_id)
            docs.append(_professional_doc(
                index, seq, False, ref=f"m{b.id}", address=b.address, national_id=b.national_id,
                title=b.title or (person.title if person else ""), first=b.first_name, last=b.last_name,
                profession=b.profession or (person.profession if person else ""),
                specialties=[b.specialty] if b.specialty else [], postcode=b.postcode, city=b.city,
                department=b.department_code, acts=acts.get(person.id, []) if person else [],
                organisation=b.org_name))
        else:
            x = by_id[id_]
            docs.append(_professional_doc(
                index, seq, False, ref=f"p{x.id}", address=None, national_id=x.national_id, title=x.title,
                first=x.first_name, last=x.last_name, profession=x.profession, specialties=[], postcode="",
                city="", department="", acts=acts.get(x.id, []), kind=""))
    return _index_rows(docs)


def _service_rows(seq: int, boxes: list[tuple], org_places: dict[int, str]) -> _IndexRows:
    """Helper side: index entries of services (organisation mailboxes), numbered from ``seq + 1``."""
    index = communes_service.package_index()
    docs = []
    for b in map(_BoxRow._make, boxes):
        seq += 1
        fallback = ""
        if index.resolve(b.postcode, b.city, b.department_code) is None:
            fallback = org_places.get(b.organisation_id) or ""
        docs.append(_service_doc(index, seq, False, ref=f"m{b.id}", address=b.address, kind=b.kind,
                                 service=b.service, organisation=b.org_name, postcode=b.postcode, city=b.city,
                                 department=b.department_code, commune_code=fallback))
    return _index_rows(docs)


async def _national_batches(core: Core, session: AsyncSession) -> AsyncIterator[tuple[Callable[..., _IndexRows],
                                                                                      tuple]]:
    """National entries in ranking order, as batches of rows for :func:`_professional_rows` and
    :func:`_service_rows` (streamed: memory stays flat)."""
    m, p = DirMailbox, DirPerson
    professionals = sa.union_all(
        sa.select(m.sort_key.label("sk"), sa.literal("m").label("src"), m.id.label("id"))
        .where(m.source == "national", m.active.is_(True), m.kind == "PER"),
        sa.select(p.sort_key.label("sk"), sa.literal("p").label("src"), p.id.label("id"))
        .where(p.active.is_(True), ~sa.exists().where(m.national_id == p.national_id, m.kind == "PER",
                                                       m.active.is_(True))),
    ).subquery()
    # Byte order on both engines (PostgreSQL's locale collation would order, and so rank, differently).
    pg = _is_postgres(session)
    sort_key = professionals.c.sk.collate("C") if pg else professionals.c.sk
    stmt = sa.select(professionals.c.src, professionals.c.id).order_by(sort_key, professionals.c.src,
                                                                        professionals.c.id)
    mt, pt, at = m.__table__, p.__table__, DirActivity.__table__
    seq = 0
    conn = await session.connection()  # Core rows: the ORM's per-row handling is not needed here
    result = await conn.stream(stmt)
    async for chunk in result.partitions(BATCH):
        mids = [r.id for r in chunk if r.src == "m"]
        pids = [r.id for r in chunk if r.src == "p"]
        async with core.read() as rs:
            box_rows = (await rs.execute(sa.select(*_columns(mt, _BoxRow)).where(among(mt.c.id, mids, pg)))).all()
            nids = {b.national_id for b in box_rows} - {""}
            boxes = [tuple(b) for b in box_rows]
            people = [tuple(x) for x in (await rs.execute(sa.select(*_columns(pt, _PersonRow)).where(
                sa.or_(among(pt.c.id, pids, pg), among(pt.c.national_id, nids, pg))))).all()]
            person_ids = [x[0] for x in people]
            activities = [tuple(a) for a in (await rs.execute(
                sa.select(*_columns(at, _ActivityRow))
                .where(among(at.c.person_id, person_ids, pg), at.c.active.is_(True))
                .order_by(at.c.person_id, at.c.id))).all()]
        yield _professional_rows, (seq, [(r.src, r.id) for r in chunk], boxes, people, activities)
        seq += len(chunk)
    stmt = (sa.select(*_columns(mt, _BoxRow)).where(mt.c.source == "national", mt.c.active.is_(True),
                                                    mt.c.kind != "PER")
            .order_by(mt.c.sort_key.collate("C") if pg else mt.c.sort_key, mt.c.id))
    result = await conn.stream(stmt)
    seq = 0
    async for chunk in result.partitions(BATCH):
        org_ids = {b.organisation_id for b in chunk if b.organisation_id}
        async with core.read() as rs:
            org_places = dict((await rs.execute(sa.select(DirOrganisation.id, DirOrganisation.commune_code).where(
                among(DirOrganisation.id, org_ids, pg)))).all()) if org_ids else {}
        yield _service_rows, (seq, [tuple(b) for b in chunk], org_places)
        seq += len(chunk)


async def _index_count(core: Core) -> int:
    async with core.read() as s:
        return await s.scalar(sa.select(sa.func.count()).select_from(DirSearch)) or 0


def _vocabulary_words(doc: Doc) -> list[str]:
    return [w for w in doc.words if len(w) >= 3 and not w.isdigit()]


async def _add_terms(session: AsyncSession, terms: list[str]) -> None:
    rows = [{"key": k, "term": t} for t in terms for k in ds.stored_keys(t)]
    if not rows:
        return
    t = DirTermKey.__table__
    for i in range(0, len(rows), 5000):
        chunk = rows[i:i + 5000]
        if _is_postgres(session):
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            await session.execute(pg_insert(t).on_conflict_do_nothing(), chunk)
        else:
            await session.execute(sa.insert(t).prefix_with("OR IGNORE"), chunk)


async def rebuild_index(core: Core, progress: Progress | None = None) -> int:
    """Rebuild the national part of the search index and the typo vocabulary; returns entries indexed."""
    await sync_local(core, force=True)
    total = 0
    vocabulary: collections.Counter = collections.Counter()
    table = DirSearch.__table__
    async with core.read() as s:
        expected = await s.scalar(sa.select(sa.func.count()).select_from(DirMailbox).where(
            DirMailbox.source == "national", DirMailbox.active.is_(True))) or 0
    async with core.write() as tx:
        s = tx.session
        pg = _is_postgres(s)
        await s.execute(sa.delete(table).where(table.c.is_local.is_(False)))
        if pg:
            for name in SECTIONS:
                await s.execute(sa.text(f"DROP INDEX IF EXISTS ix_dir_search_tsv_{name}"))

        async def store(keep: int | None = None) -> None:
            nonlocal total
            async for columns, rows, words in helpers.results(keep):
                vocabulary.update(words)
                await writes.submit(_insert_tuples(s, table, columns, rows))
                total += len(rows)
                if progress:
                    progress("index", total, max(expected, total))

        # Helpers build the entries of a batch while this process reads the next and writes the last.
        with _Helpers(inline=expected < HELPERS_ABOVE) as helpers:
            async with core.read() as rs, _Pipeline() as writes:
                async for build, args in _national_batches(core, rs):
                    helpers.submit(build, *args)
                    await store()
                await store(keep=0)
        if pg:
            # A GIN index is built much faster in one go, with room to sort, than row by row.
            await s.execute(sa.text("SET LOCAL maintenance_work_mem = '512MB'"))
            for name in SECTIONS:  # one GIN index per section: a section's query reads only its postings
                await s.execute(sa.text(f"CREATE INDEX ix_dir_search_tsv_{name} ON dir_search USING gin (tsv) "
                                        f"WHERE section = '{name}'"))
            await _store_word_shares(s, total)
            _STATS.clear()
        else:
            await s.execute(sa.text(f"INSERT INTO {FTS_TABLE}({FTS_TABLE}) VALUES ('rebuild')"))
        local_words = (await s.execute(sa.select(table.c.text).where(table.c.is_local.is_(True)))).scalars().all()
        for text in local_words:
            vocabulary.update({w for w in text.split() if len(w) >= 3 and not w.isdigit()
                               and not w.startswith(ds.MARKER_PREFIXES)})
        await s.execute(sa.delete(DirTermKey.__table__))
        terms = sorted(vocabulary)
        keys_table = DirTermKey.__table__
        for i in range(0, len(terms), 5000):
            rows = sorted({(k, t, vocabulary[t]) for t in terms[i:i + 5000] for k in ds.stored_keys(t)})
            await _insert_tuples(s, keys_table, ["key", "term", "docs"], rows)
            if progress:
                progress("vocabulary", min(i + 5000, len(terms)), len(terms))
    if pg:
        # VACUUM: the rows of the previous index are dead; without it, searches step over them
        # until autovacuum comes by.
        async with core.db.engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(sa.text("VACUUM ANALYZE dir_search"))
            await conn.execute(sa.text("ANALYZE dir_term_keys"))
    return total


WORD_SHARES = "word_shares"  # dir_meta: each section's rows and common words (PostgreSQL's plans)
COMMON_SHARE = 0.001  # words found in at least this share of a section's entries are listed


async def _store_word_shares(s: AsyncSession, rows: int) -> None:
    """PostgreSQL: each section's common words with their share of the section's entries, from
    a sample of the index. Its own statistics are for the whole table: "kinésithérapeute" is in
    a tenth of the entries, all of them professionals, and a plan made for services on that
    figure reads the whole section in vain."""
    sample = "TABLESAMPLE SYSTEM (10) REPEATABLE (1)" if rows > 200_000 else ""
    out: dict[str, Any] = {}
    for name in SECTIONS:
        source = f"SELECT tsv FROM dir_search {sample} WHERE section = '{name}'"
        n = await s.scalar(sa.text(f"SELECT count(*) FROM ({source}) AS t")) or 0
        total = await s.scalar(sa.text(f"SELECT count(*) FROM dir_search WHERE section = '{name}'")) or 0
        words = (await s.execute(sa.text("SELECT word, ndoc FROM ts_stat(:q) WHERE ndoc >= :least"),
                                 {"q": source, "least": max(1, math.ceil(n * COMMON_SHARE))})).all() if n else []
        out[name] = {"rows": total, "words": {w: round(k / n, 6) for w, k in words}}
    await s.execute(sa.delete(DirMeta).where(DirMeta.name == WORD_SHARES))
    s.add(DirMeta(name=WORD_SHARES, value=json.dumps(out)))


# --- Local mailboxes in the directory --------------------------------------------------------

_LOCAL_STATE = sa.select(
    sa.func.count(Mailbox.id), sa.func.max(Mailbox.id),
    sa.func.sum(sa.case((Mailbox.is_expert.is_(True), 1), else_=0)),
    sa.func.sum(sa.case((Mailbox.is_resource_team.is_(True), 1), else_=0)),
    sa.func.sum(sa.case((Mailbox.active.is_(True), 1), else_=0)),
    sa.select(sa.func.count(Account.id)).scalar_subquery(),
    sa.select(sa.func.max(Account.id)).scalar_subquery(),
    sa.select(sa.func.count()).select_from(DirProfile).scalar_subquery(),
    sa.select(sa.func.max(DirProfile.updated_at)).scalar_subquery(),
    sa.select(DirMeta.value).where(DirMeta.name == "local_signature").scalar_subquery(),
)


async def _local_state(session: AsyncSession) -> tuple[str, str | None]:
    """A signature of our accounts, mailboxes and profiles, and the one the index was built from:
    one statement, run before every search."""
    *values, updated, stored = (await session.execute(_LOCAL_STATE)).one()
    return "|".join(str(v) for v in (*values, as_utc(updated).isoformat() if updated else "")), stored


async def sync_local(core: Core, force: bool = False) -> bool:
    """Bring our own mailboxes' directory entries up to date; cheap when nothing changed."""
    async with core.read() as s:
        sig, stored = await _local_state(s)
    if sig == stored and not force:
        return False
    async with core.write() as tx:
        s = tx.session
        if _is_postgres(s):
            await s.execute(sa.text("SELECT pg_advisory_xact_lock(7243001)"))
        await _sync_local_in(s, sig)
    return True


async def _sync_local_in(s: AsyncSession, sig: str) -> None:
    index = communes_service.package_index()
    boxes = (await s.execute(sa.select(Mailbox).order_by(Mailbox.id))).scalars().all()
    owners = {a.id: a for a in (await s.execute(sa.select(Account).where(
        Account.id.in_({b.owner_account_id for b in boxes if b.owner_account_id})))).scalars()}
    profiles = {p.account_id: p for p in (await s.execute(sa.select(DirProfile))).scalars()}
    entries = {e.address: e for e in (await s.execute(sa.select(DirMailbox).where(
        DirMailbox.address.in_([b.address for b in boxes])))).scalars()}
    people = {p.national_id: p for p in (await s.execute(sa.select(DirPerson).where(DirPerson.national_id.in_(
        [a.national_id for a in owners.values() if a.national_id])))).scalars()}
    acts = await _activities_of(s, [p.id for p in people.values()])
    docs: list[Doc] = []
    for b in boxes:
        e = entries.get(b.address)
        if e is None:
            e = DirMailbox(address=b.address, source="local", kind=b.kind, row_hash="")
            s.add(e)
        e.source = "local"
        e.local_mailbox_id = b.id
        e.kind = b.kind
        e.active = bool(b.active)
        owner = owners.get(b.owner_account_id) if b.kind == "PER" else None
        profile = profiles.get(owner.id) if owner else None
        if owner is not None:
            e.national_id = owner.national_id or ""
            e.title, e.first_name, e.last_name = owner.civility, owner.first_name, owner.last_name
            e.profession, e.specialty = owner.profession, owner.specialty
            e.profession_code = owner.profession_code or ""
            e.sort_key = fold(f"{owner.last_name} {owner.first_name}")
            if profile is not None:
                place = index.by_code.get(profile.commune_code)
                e.postcode = profile.postcode or (place.postcodes[0] if place and place.postcodes else "")
                e.city = place.name if place else ""
                e.department_code = place.department_code if place else ""
        else:
            e.service = b.display_name
            e.org_name = b.organisation
            e.sort_key = fold(b.display_name)
        await s.flush()
        if not b.active:
            continue
        if owner is not None:
            person = people.get(owner.national_id or "")
            expert = bool(b.is_expert or (profile is not None and profile.expert))
            doc = _professional_doc(
                index, b.id, True, ref=f"m{e.id}", address=b.address, national_id=e.national_id, title=owner.civility,
                first=owner.first_name, last=owner.last_name, profession=owner.profession,
                specialties=[owner.specialty] if owner.specialty else [], postcode=e.postcode, city=e.city,
                department=e.department_code, acts=acts.get(person.id, []) if person else [], is_expert=expert,
                local_mailbox_id=b.id, commune_code=profile.commune_code if profile else "")
            if profile is not None and profile.expert:
                doc.words += ds.words(" ".join(profile.expert.get("specialties") or []))
        elif b.kind == "PER":
            doc = _professional_doc(index, b.id, True, ref=f"m{e.id}", address=b.address, national_id="", title="",
                                    first="", last=b.display_name, profession="", specialties=[], postcode="",
                                    city="", department="", acts=[], local_mailbox_id=b.id)
        else:
            doc = _service_doc(index, b.id, True, ref=f"m{e.id}", address=b.address, kind=b.kind, service="",
                               organisation=b.organisation, postcode=e.postcode, city=e.city,
                               department=e.department_code, is_expert=bool(b.is_expert),
                               is_resource_team=bool(b.is_resource_team), local_mailbox_id=b.id,
                               name=b.display_name)
            doc.words += ds.words(b.description or "")
        docs.append(doc)
    table = DirSearch.__table__
    if not _is_postgres(s):
        await s.execute(sa.text(f"INSERT INTO {FTS_TABLE}({FTS_TABLE}, rowid, text) "
                                "SELECT 'delete', id, text FROM dir_search WHERE is_local"))
    await s.execute(sa.delete(table).where(table.c.is_local.is_(True)))
    rows = [_fit(table, d.finish()) for d in docs]
    if rows:
        await s.execute(sa.insert(table), rows)
        if not _is_postgres(s):
            await s.execute(sa.text(f"INSERT INTO {FTS_TABLE}(rowid, text) SELECT id, text FROM dir_search "
                                    "WHERE is_local"))
    await _add_terms(s, sorted({w for d in docs for w in _vocabulary_words(d)}))
    meta = await s.get(DirMeta, "local_signature")
    if meta is None:
        s.add(DirMeta(name="local_signature", value=sig))
    else:
        meta.value = sig


async def set_local_place(core: Core, *, account_id: int | None = None, address: str | None = None,
                          commune_code: str = "", postcode: str = "") -> None:
    """Give a local account (its profile) or a local service mailbox a commune."""
    index = communes_service.package_index()
    place = index.by_code.get(commune_code) if commune_code else None
    if place is None and postcode:
        place = index.resolve(postcode)
    if place is None:
        raise Invalid("commune inconnue")
    postcode = postcode or (place.postcodes[0] if place.postcodes else "")
    async with core.write() as tx:
        s = tx.session
        if account_id is not None:
            profile = await s.get(DirProfile, account_id) or DirProfile(account_id=account_id)
            profile.commune_code, profile.postcode, profile.updated_at = place.code, postcode, utcnow()
            s.add(profile)
        if address is not None:
            e = await s.scalar(sa.select(DirMailbox).where(DirMailbox.address == address))
            if e is None:
                box = await s.scalar(sa.select(Mailbox).where(Mailbox.address == address))
                if box is None:
                    raise NotFound(f"boîte inconnue : {address}")
                e = DirMailbox(address=address, source="local", kind=box.kind, local_mailbox_id=box.id, row_hash="")
                s.add(e)
            e.postcode, e.city, e.department_code = postcode, place.name, place.department_code
    async with core.write() as tx:  # force the next search to re-index
        await tx.session.execute(sa.delete(DirMeta).where(DirMeta.name == "local_signature"))


DEMO_PLACES = {
    # account → (postcode, commune) for the demo of DESIGN §4 and its other professionals
    "alice.martin": ("15000", "Aurillac"), "bruno.petit": ("63000", "Clermont-Ferrand"),
    "claire.roux": ("63300", "Thiers"), "sophie.blanc": ("15000", "Aurillac"),
    "hemostase.admin": ("63000", "Clermont-Ferrand"), "dac63.admin": ("63000", "Clermont-Ferrand"),
}
DEMO_TOWNS = [("63000", "Clermont-Ferrand"), ("15000", "Aurillac"), ("63300", "Thiers"), ("03200", "Vichy"),
              ("63200", "Riom"), ("63500", "Issoire"), ("43000", "Le Puy-en-Velay"), ("03100", "Montluçon"),
              ("15100", "Saint-Flour"), ("63800", "Cournon-d'Auvergne")]
DEMO_SERVICE_TOWNS = {"chu-clermont": ("63000", "Clermont-Ferrand"), "dac63": ("63000", "Clermont-Ferrand"),
                      "ch-aurillac": ("15000", "Aurillac"), "biocantal": ("15000", "Aurillac"),
                      "imagerie-volcans": ("63000", "Clermont-Ferrand"), "cpts.aurillac": ("15000", "Aurillac"),
                      "reppop": ("63000", "Clermont-Ferrand"), "thiers": ("63300", "Thiers")}


async def seed_demo(core: Core) -> None:
    """Give the demo accounts and services their communes (DESIGN §4), then index them."""
    index = communes_service.package_index()
    async with core.read() as s:
        accounts = (await s.execute(sa.select(Account).order_by(Account.id))).scalars().all()
        boxes = (await s.execute(sa.select(Mailbox).where(Mailbox.kind != "PER"))).scalars().all()
        have = set((await s.execute(sa.select(DirProfile.account_id))).scalars().all())
    for i, a in enumerate(accounts):
        if a.id in have or not (a.first_name or a.last_name) or a.is_admin:
            continue
        pc, name = DEMO_PLACES.get(a.username) or DEMO_TOWNS[i % len(DEMO_TOWNS)]
        place = index.resolve(pc, name)
        if place is not None:
            await set_local_place(core, account_id=a.id, commune_code=place.code, postcode=pc)
    bruno = next((a for a in accounts if a.username == "bruno.petit"), None)
    if bruno is not None and bruno.id not in have:
        await _update_profile(core, Actor(bruno.id, bruno.username), bruno.id, {"expert": {
            "description": "Avis de cardiologie : souffles, troubles du rythme, insuffisance cardiaque.",
            "documents": "ECG récent, dernier compte rendu, traitement en cours.",
            "urgent_contact": "", "specialties": ["Cardiologie et maladies vasculaires"]},
            "modalities": {"teleexpertise": True, "teleconsultation": True}})
    for b in boxes:
        town = next((v for k, v in DEMO_SERVICE_TOWNS.items() if k in b.address.split("@")[0]), None)
        place = index.resolve(*town) if town else None
        if place is not None:
            await set_local_place(core, address=b.address, commune_code=place.code, postcode=town[0])
    await sync_local(core, force=True)


# --- Search ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Where:
    groups: tuple[ds.Group, ...] = ()
    ref: communes_service.Commune | None = None
    label: str = ""
    kind: str = ""
    rings: tuple[ds.Group, ...] = ()  # "in the commune", then "nearby": shown in this order


NEARBY_RADII_KM = (25.0, 15.0, 10.0, 5.0)
NEARBY_POPULATION = 1_500_000  # the "nearby" ring shrinks until it holds about this many inhabitants


@functools.cache
def _cell_population() -> dict[str, int]:
    cells: dict[str, int] = collections.Counter()
    for c in communes_service.package_index().by_code.values():
        if c.latitude is not None and c.longitude is not None:
            cells[ds.grid_cell(c.latitude, c.longitude)] += c.population
    return cells


@functools.cache
def _cell_shares() -> dict[str, float]:
    """Each grid cell's share of the population (of the entries located there, roughly)."""
    cells = _cell_population()
    total = sum(cells.values()) or 1
    return {cell: n / total for cell, n in cells.items()}


def _nearby_radius(centre: communes_service.Commune, radius_km: float) -> float:
    """The radius of the "nearby" ring around ``centre``: ``radius_km`` in the country, less in
    a city (in Paris, 25 km is ten million people: neither "nearby" for the user nor a short
    list for the index)."""
    population = _cell_population()
    radii = [r for r in NEARBY_RADII_KM if r < radius_km]
    for r in (radius_km, *radii):
        if sum(population.get(c, 0) for c in ds.grid_cells_around(centre.latitude, centre.longitude, r)) \
                <= NEARBY_POPULATION:
            return r
    return min(radius_km, *radii) if radii else radius_km


@functools.lru_cache(maxsize=4096)
def resolve_where(where: str, radius_km: float = communes_service.DEFAULT_RADIUS_KM) -> Where:
    """Turn the "où" field into place filters (and a reference commune for distance)."""
    text = (where or "").strip()
    if not text:
        return Where()
    index = communes_service.package_index()
    folded = fold(text)
    compact = folded.replace(" ", "")
    if re.fullmatch(r"\d{5}", compact):
        codes = index.by_postcode.get(compact, [])
        if not codes and compact in index.by_code:
            codes = [compact]
        alts = [ds.Alt(ds.marker("xp", compact))] + [ds.Alt(ds.marker("xc", c)) for c in codes]
        ref = index.largest(codes)
        return Where(((*alts,),), ref, f"code postal {compact}", "postcode")
    if re.fullmatch(r"(\d{2}|2a|2b|97\d)", compact):
        name = index.departments.get(compact.upper(), "")
        return Where(((ds.Alt(ds.marker("xd", compact)),),), None, f"département {compact.upper()} {name}".strip(),
                     "department")
    key = communes_service.name_key(text)
    if key in index.department_keys and key not in index.by_name:
        code = index.department_keys[key]
        return Where(((ds.Alt(ds.marker("xd", code)),),), None, f"département {code}", "department")
    found = index.find_by_name(text)
    if found:
        # "Clermont" means Clermont-Ferrand rather than Clermont (Oise): the largest of the
        # communes named so or starting so wins.
        if len(key) >= 4:
            longer = [index.by_code[c] for n in index.names_sorted[bisect.bisect_left(index.names_sorted, key):]
                      [:200] if n.startswith(key) for c in index.by_name[n]]
            found = sorted({c.code: c for c in [*found, *longer]}.values(), key=lambda c: -c.population)
        centre = found[0]
        same = tuple(ds.Alt(ds.marker("xc", c.code)) for c in found if c.key == centre.key)
        if centre.latitude is None:
            return Where((same,), centre, f"{centre.name} ({centre.department_code})", "commune")
        radius = _nearby_radius(centre, radius_km)
        cells = tuple(ds.Alt(c) for c in ds.grid_cells_around(centre.latitude, centre.longitude, radius))
        return Where((), centre, f"{centre.name} ({centre.department_code})", "commune", rings=(same, cells))
    tokens = ds.query_tokens(text)
    if not tokens:
        return Where()
    return Where(tuple((ds.Alt("xe" + t, True),) for t in tokens), None, text, "establishment")


async def _fuzzy(session: AsyncSession, tokens: list[str]) -> dict[str, list[str]]:
    """token → the vocabulary words within its allowed typos (one read for all tokens). A token
    that is itself a common word is taken as spelled right: the typos of "saint" or "generale"
    would only widen the query."""
    keys = {t: k for t in tokens if (k := ds.lookup_keys(t))}
    if not keys:
        return {}
    t = DirTermKey.__table__
    found: dict[str, set[str]] = {}
    docs: dict[str, int] = {}
    for key, term, n in (await session.execute(sa.select(t.c.key, t.c.term, t.c.docs).where(
            among(t.c.key, sorted(set().union(*keys.values())), _is_postgres(session))))).all():
        found.setdefault(key, set()).add(term)
        docs[term] = n
    out: dict[str, list[str]] = {}
    for token, wanted in keys.items():
        if not ds.may_be_misspelt(docs.get(token)):
            continue
        close = ds.close_terms(token, {term for k in wanted for term in found.get(k, ())})
        if close:
            out[token] = close
    return out


async def _completions(session: AsyncSession, tokens: list[str]) -> tuple[dict[str, list[str]], set[str]]:
    """token → every vocabulary word it begins, for the tokens that begin few enough words; and
    the tokens that begin many words or a common one ("kine": kinésithérapeute), taken as words
    being typed rather than misspelt."""
    out: dict[str, list[str]] = {}
    begun: set[str] = set()
    t = DirTermKey.__table__
    for token in tokens:
        if not ds.expandable(token):
            continue
        # Keys are the words and their one-letter deletions: scan the range, keep the words.
        rows = (await session.execute(
            sa.select(t.c.key, t.c.docs)
            .where(t.c.key >= token, t.c.key < token + "{", t.c.key == t.c.term)
            .order_by(t.c.key).limit(ds.MAX_COMPLETIONS + 1))).all()
        if len(rows) > ds.MAX_COMPLETIONS or any(not ds.may_be_misspelt(n) for _, n in rows):
            begun.add(token)
        if len(rows) <= ds.MAX_COMPLETIONS and rows:
            out[token] = [k for k, _ in rows]
    return out, begun


# PostgreSQL plan choice, see _Engine.frequent: among professionals (in name order), professions
# and places are spread over the id order, names cluster in it, and no name is this common.
# Services are in order of their service's name, which is what their common words are.
FREQUENT_SHARE = 0.05
WALKED_SECTIONS = ("professionals",)
RANKED_ROWS = 3 * TOTAL_CAP  # PostgreSQL: estimated matches up to which a section is ranked in one statement
PROBE_ROWS = 4_000  # PostgreSQL: rows read in id order looking for a first page among many matches
WALK_ROWS = 60_000  # PostgreSQL: at most this many for a level estimated to be frequent
_WINDOW = "(SELECT id, tsv FROM dir_search WHERE id BETWEEN :lo AND :hi ORDER BY id LIMIT {rows}) AS w"
PROBE_MARGIN = 1.0  # the probe is tried when its rows should hold this many times the page
STATS_TTL = 300.0  # seconds: the statistics below are read again after this (imports change them)


@dataclass(frozen=True)
class _Stats:
    """Statistics of the index for PostgreSQL's plans (see :func:`_store_word_shares`): each
    section's rows, and its words' shares of them."""

    at: float
    rows: dict[str, float]
    words: dict[str, ds.Shares]


_STATS: dict[str, _Stats] = {}  # by database
FUZZY_BELOW = 20  # typo matches are looked for when exact and prefix matches are fewer than this


class _Engine:
    """The few statements whose SQL differs between SQLite FTS5 and PostgreSQL tsvector."""

    def __init__(self, session: AsyncSession) -> None:
        self.s = session
        self.pg = _is_postgres(session)
        self._stats = _Stats(0.0, {}, {})

    def _shares(self, section: str) -> ds.Shares:
        return self._stats.words.get(section) or ds.Shares({}, 0.0, {})

    def match(self, level: ds.Level, section: str) -> ds.Split:
        if self.pg:
            return ds.split_level(level, self._shares(section))
        text = ds.fts5_level(level)
        return ds.Split(text, text)

    @staticmethod
    def _params(m: ds.Split) -> dict[str, str]:
        return {"m": m.index, "f": m.check} if m.check else {"m": m.index}

    def _ids(self, lo: int, m: ds.Split) -> str:
        """Ids of the section's rows matching ``m`` through the index (parameters from
        :meth:`_params`)."""
        if self.pg:
            # The section as a literal, so that the planner can use that section's partial GIN index.
            section = next((f" AND section = '{n}'" for n, k in SECTIONS.items() if k * SECTION_SPAN == lo), "")
            # ``id + 0`` keeps the planner on the GIN index (bitmap scan); the common words are
            # checked on the rows that the rare ones find (``ts_match_vq`` is ``@@`` as a
            # function call, which the planner cannot hand to the index).
            check = " AND ts_match_vq(tsv, to_tsquery('simple', :f))" if m.check else ""
            return (f"SELECT id FROM dir_search WHERE tsv @@ to_tsquery('simple', :m){check}{section} "
                    f"AND id + 0 BETWEEN :lo AND :hi")
        return f"SELECT rowid AS id FROM {FTS_TABLE} WHERE {FTS_TABLE} MATCH :m AND rowid BETWEEN :lo AND :hi"

    async def prepare(self) -> None:
        if self.pg:
            # Plan each query with its own words (a generic plan cannot tell rare words from common
            # ones), and exact, not lossy, bitmaps for common words (no re-check of every row of a
            # page); both for this transaction only, in one round trip.
            await self.s.execute(sa.text("SELECT set_config('plan_cache_mode', 'force_custom_plan', true), "
                                         "set_config('work_mem', '32MB', true)"))
            self._stats = await self._load_stats()

    async def estimate(self, level: ds.Level, section: str) -> float:
        """Estimated rows of the section matching the level's ``keep`` query (0 on SQLite), from
        PostgreSQL's statistics as its planner would estimate them, without asking it."""
        if not self.pg:
            return 0.0
        return self._stats.rows.get(section, 0.0) * ds.estimate(level[0], self._shares(section))

    async def _load_stats(self) -> _Stats:
        """The index statistics (:class:`_Stats`), read again every few minutes."""
        now = time.monotonic()
        key = str(self.s.bind.url)
        if key in _STATS and now - _STATS[key].at < STATS_TTL:
            return _STATS[key]
        stored = json.loads(await self.s.scalar(sa.select(DirMeta.value).where(DirMeta.name == WORD_SHARES))
                            or "{}")
        # Before the first national import: no statistics, every query through the GIN index.
        stats = _Stats(now, {n: float(v["rows"]) for n, v in stored.items()},
                       {n: ds.Shares(v["words"], COMMON_SHARE / 2, _cell_shares()) for n, v in stored.items()})
        _STATS[key] = stats
        return stats

    async def frequent(self, level: ds.Level, section: str) -> bool:
        """PostgreSQL: do the level's words match so large a share of the section's rows that
        reading rows in id order until enough match beats building the GIN bitmap of all of
        them? (A bitmap finds "none here" at once; id order would read it all.)"""
        return self.is_frequent(await self.estimate(level, section), section)

    def probe_pays(self, estimate: float, section: str, wanted: int) -> bool:
        """PostgreSQL: should the first rows in id order hold the page? Only if matches are
        dense enough (a rare surname's would not be there: names cluster)."""
        rows = self._stats.rows.get(section, 0.0)
        return rows > 0 and estimate / rows * PROBE_ROWS >= PROBE_MARGIN * wanted

    def is_frequent(self, estimate: float, section: str) -> bool:
        rows = self._stats.rows.get(section, 0.0)
        return section in WALKED_SECTIONS and rows > 0 and estimate > FREQUENT_SHARE * rows

    async def ranked(self, widest: ds.Split, levels: list[tuple[str, bool]], lo: int, hi: int, cap: int, limit: int,
                     offset: int, ref: communes_service.Commune | None) -> tuple[list[int], int] | None:
        """PostgreSQL, one statement: the section's matches (one bitmap scan of ``widest``), each
        placed in its level by re-checking the level queries on its own ``tsv`` (no more index
        reads), ranked, paged, and counted. None when they are more than ``cap``: their ranking
        then goes level by level. Gives the order of :func:`_section`'s level-by-level path."""
        params: dict[str, Any] = {**self._params(widest), "lo": lo, "hi": hi, "cap": cap + 1, "limit": limit,
                                  "offset": offset}
        cases = []
        for i, (m, _) in enumerate(levels):
            params[f"k{i}"] = m
            cases.append(f"WHEN tsv @@ to_tsquery('simple', :k{i}) THEN {i}")
        if ref is not None and ref.latitude is not None:
            params.update(lat=ref.latitude, lon=ref.longitude, k=math.cos(math.radians(ref.latitude)))
            near = [i for i, (_, by_distance) in enumerate(levels) if by_distance]
            dist = ("COALESCE((latitude - :lat) * (latitude - :lat) + "
                    "((longitude - :lon) * :k) * ((longitude - :lon) * :k), 1e9)")
            distance = f"CASE WHEN lvl IN ({', '.join(map(str, near))}) THEN d ELSE 0 END, " if near else ""
        else:
            dist, distance = "0", ""
        section = next((f" AND section = '{n}'" for n, k in SECTIONS.items() if k * SECTION_SPAN == lo), "")
        check = " AND ts_match_vq(tsv, to_tsquery('simple', :f))" if widest.check else ""
        sql = (f"WITH c AS MATERIALIZED (SELECT id, tsv, latitude, longitude FROM dir_search "
               f"WHERE tsv @@ to_tsquery('simple', :m){check}{section} AND id + 0 BETWEEN :lo AND :hi LIMIT :cap) "
               f"SELECT id, (SELECT count(*) FROM c) AS n FROM ("
               f"SELECT id, CASE {' '.join(cases)} ELSE {len(levels)} END AS lvl, {dist} AS d FROM c) AS t "
               f"ORDER BY lvl, {distance}id LIMIT :limit OFFSET :offset")
        rows = (await self.s.execute(sa.text(sql), params)).all()
        if not rows:
            total = 0 if offset == 0 else await self.count(widest, lo, hi, cap + 1)
        else:
            total = rows[0].n
        if total > cap:
            return None
        return [r.id for r in rows], total

    async def count(self, m: ds.Split, lo: int, hi: int, cap: int, frequent: bool = False) -> int:
        params = {"lo": lo, "hi": hi, "cap": cap}
        if frequent:
            # Up to WALK_ROWS rows in id order; if the cap is not reached there, the estimate
            # was wrong (words that rarely go together): counted through the index after all.
            n = await self.s.scalar(sa.text(
                f"SELECT count(*) FROM (SELECT 1 FROM {_WINDOW.format(rows=WALK_ROWS)} "
                "WHERE tsv @@ to_tsquery('simple', :m) LIMIT :cap) AS t"), {**params, "m": m.full}) or 0
            if n >= cap:
                return n
        sql = f"SELECT count(*) FROM ({self._ids(lo, m)} LIMIT :cap) AS t"
        return await self.s.scalar(sa.text(sql), {**self._params(m), **params}) or 0

    async def _walk(self, m: ds.Split, rows: int, lo: int, hi: int, limit: int, offset: int) -> list[int] | None:
        """PostgreSQL: the page among the first ``rows`` rows in id order (entries are numbered
        in name order: when matches are many and spread, a page lies in the first few thousand
        rows, where a bitmap would fetch every match first); None if they do not hold it."""
        got = list((await self.s.execute(sa.text(
            f"SELECT id FROM {_WINDOW.format(rows=rows)} WHERE tsv @@ to_tsquery('simple', :m) "
            "ORDER BY id LIMIT :limit OFFSET :offset"),
            {"m": m.full, "lo": lo, "hi": hi, "limit": limit, "offset": offset})).scalars())
        return got if len(got) == limit else None

    async def page(self, m: ds.Split, lo: int, hi: int, limit: int, offset: int,
                   ref: communes_service.Commune | None, many: bool = False, probe: bool = False) -> list[int]:
        if ref is None or ref.latitude is None:
            if self.pg and (many or probe):
                # Many matches: in the first rows in id order, if they hold the page. Names that
                # cluster further on, or an estimate that was wrong, take the index after all.
                got = await self._walk(m, WALK_ROWS if many else PROBE_ROWS, lo, hi, limit, offset)
                if got is not None:
                    return got
            # Through the index, ``id + 0``: ordered by the primary key, a small page tempts the
            # planner into reading rows in id order, betting that matches are spread; names cluster.
            order = "id + 0" if self.pg else "id"
            sql = f"{self._ids(lo, m)} ORDER BY {order} LIMIT :limit OFFSET :offset"
            params = {**self._params(m), "lo": lo, "hi": hi, "limit": limit, "offset": offset}
            return list((await self.s.execute(sa.text(sql), params)).scalars().all())
        return [i for i, _ in await self.nearest(m, lo, hi, limit, offset, ref)]

    async def nearest(self, m: ds.Split, lo: int, hi: int, limit: int, offset: int,
                      ref: communes_service.Commune) -> list[tuple[int, float]]:
        """Matches in distance order (every match is read, through the index), with their
        distance as :func:`ds.cell_distance2` measures it."""
        params = {**self._params(m), "lo": lo, "hi": hi, "limit": limit, "offset": offset,
                  "lat": ref.latitude, "lon": ref.longitude, "k": math.cos(math.radians(ref.latitude))}
        dist = ("COALESCE((latitude - :lat) * (latitude - :lat) + "
                "((longitude - :lon) * :k) * ((longitude - :lon) * :k), 1e9)")
        ids = self._ids(lo, m)
        if self.pg:  # the distance from the rows the index finds, in the same pass
            sql = ids.replace("SELECT id FROM", f"SELECT id, {dist} AS d FROM", 1)
        else:
            sql = f"SELECT id, {dist} AS d FROM dir_search WHERE id IN ({ids})"
        sql += " ORDER BY d, id LIMIT :limit OFFSET :offset"
        return [(r.id, r.d) for r in await self.s.execute(sa.text(sql), params)]


def _bounds(section: str) -> tuple[int, int]:
    """The id range of a section's entries in ``dir_search``."""
    lo = SECTIONS[section] * SECTION_SPAN
    return lo, lo + SECTION_SPAN - 1


async def _total(engine: _Engine, section: str, widest: ds.Level) -> int:
    """How many entries of the section match, counted up to ``TOTAL_CAP + 1``. Levels are
    disjoint and ``widest`` is their union: one count instead of one per level."""
    return await engine.count(engine.match(widest, section), *_bounds(section), TOTAL_CAP + 1,
                              await engine.frequent(widest, section))


async def _section(engine: _Engine, section: str, levels: list[tuple[ds.Level, bool]], total: int,
                   limit: int, offset: int, ref) -> tuple[list[int], int, bool]:
    """One section's page: levels shown in order; ``True`` levels sorted by distance when not too big.

    ``total`` comes from :func:`_total`. A level is counted on its own only to skip it (a later
    page) or to decide whether it is small enough to be sorted by distance: most first pages are
    served by one or two page queries.
    """
    lo, hi = _bounds(section)
    capped = total > TOTAL_CAP
    large = total > NEAREST_ABOVE
    total = min(total, TOTAL_CAP)
    ids: list[int] = []
    skip, want = offset, min(limit, max(total - offset, 0))
    for level, by_distance in levels:
        if want <= 0:
            break
        m = engine.match(level, section)
        estimate = await engine.estimate(level, section)
        frequent = engine.is_frequent(estimate, section)
        if skip:
            c = await engine.count(m, lo, hi, skip + 1, frequent)
            if c <= skip:
                skip -= c
                continue
        located = by_distance and ref is not None and ref.latitude is not None
        if located and large and ds.is_ring(level[0][-1]):
            # A large "nearby" level: its ring's cells are read nearest first.
            got = await _nearest(engine, section, level, want, skip, ref)
            ids.extend(got)
            want -= len(got)
            skip = 0
            continue
        # Sorting a very large level by distance would read all of it: beyond the cap, by name.
        huge = (located and capped and await engine.count(m, lo, hi, TOTAL_CAP + 1, frequent) > TOTAL_CAP)
        order_ref = ref if by_distance and not huge else None
        got = await engine.page(m, lo, hi, want, skip, order_ref, many=frequent,
                                probe=capped and engine.probe_pays(estimate, section, skip + want))
        ids.extend(got)
        want -= len(got)
        skip = 0
    return ids, total, capped


NEAREST_CELLS = 2  # cells of the "nearby" ring read in the first batch; each batch doubles
NEAREST_ABOVE = TOTAL_CAP  # section matches above which "nearby" levels are read cell batch by cell batch


async def _nearest(engine: _Engine, section: str, level: ds.Level, limit: int, offset: int,
                   ref: communes_service.Commune) -> list[int]:
    """A page of a "nearby" level in distance order, without reading all of the level: the
    cells of its ring are read nearest first, in growing batches, until the page's entries are
    known to be the nearest (no cell left can hold a closer one). The same entries, in the same
    order, as sorting the whole level."""
    keep, drops = level
    lo, hi = _bounds(section)
    k = math.cos(math.radians(ref.latitude))

    def bound(cell: ds.Alt) -> float:
        return ds.cell_distance2(cell.term, ref.latitude, ref.longitude, k)

    cells = sorted(keep[-1], key=lambda c: (bound(c), c.term))
    need = offset + limit
    found: dict[int, float] = {}
    ordered: list[tuple[int, float]] = []
    start, size = 0, NEAREST_CELLS
    while start < len(cells):
        batch = tuple(cells[start:start + size])
        start, size = start + size, size * 2
        # Only a batch's nearest ``need`` can be among the page's.
        found.update(await engine.nearest(engine.match(((*keep[:-1], batch), drops), section), lo, hi, need, 0,
                                          ref))
        ordered = sorted(found.items(), key=lambda x: (x[1], x[0]))
        if start < len(cells) and len(ordered) >= need and ordered[need - 1][1] < bound(cells[start]):
            break
    return [i for i, _ in ordered[offset:need]]


def _item(row: Any, opened: dict[int, Any], ref) -> dict[str, Any]:
    now = utcnow()
    last = opened.get(row.local_mailbox_id) if row.local_mailbox_id else None
    active = bool(row.is_local and last is not None and now - as_utc(last) <= timedelta(days=ACTIVE_DAYS))
    item = {"id": row.ref, "kind": row.kind or None, "section": row.section, "name": row.name,
            "address": row.address, "profession": row.profession, "specialty": row.specialty,
            "organisation": row.organisation, "service": row.service, "commune": row.commune,
            "commune_code": row.commune_code, "postcode": row.postcode, "department": row.department_code,
            "national_id": row.national_id or None, "is_local": row.is_local, "is_expert": row.is_expert,
            "is_resource_team": row.is_resource_team, "active": active}
    if ref is not None and ref.latitude is not None and row.latitude is not None:
        item["distance_km"] = round(communes_service.distance_km(ref.latitude, ref.longitude, row.latitude,
                                                                 row.longitude), 1)
    return item


async def search(core: Core, actor: Actor | None, q: str = "", where: str = "", kind: str = "all",
                 limit: int = 20, offset: int = 0, near: str = "") -> dict[str, Any]:
    """Directory search: two sections (professionals, services), each paged and ranked."""
    if kind not in KINDS:
        raise Invalid(f"type inconnu : {kind} (attendu : {', '.join(KINDS)})")
    limit = max(1, min(int(limit), 100))
    offset = max(0, int(offset))
    await sync_local(core)
    tokens = ds.query_tokens(q)
    place = resolve_where(where)
    ref = place.ref
    if near:
        ref = resolve_where(near).ref or ref
    filters: tuple[ds.Group, ...] = place.groups
    if kind == "experts":
        filters += ((ds.Alt("xkexpert"),),)
    elif kind == "resource_teams":
        filters += ((ds.Alt("xkresource"),),)
    wanted = {"professionals": kind in ("all", "professionals", "experts", "resource_teams"),
              "services": kind in ("all", "services", "experts", "resource_teams")}
    out: dict[str, Any] = {"query": {"q": q, "tokens": tokens, "where": place.label or None,
                                     "where_kind": place.kind or None, "kind": kind,
                                     "reference": ref.as_dict() if ref else None}}
    async with core.read() as s:
        engine = _Engine(s)
        await engine.prepare()
        rings = list(place.rings)
        # A prefix spelled out as its words: the same answers, but both engines then skip through
        # each word's postings instead of first gathering every row of every word so begun.
        completions, begun = await _completions(s, tokens)
        tier_queries = ds.tiers(tokens, {}, filters, completions) or ([()] if rings else [])
        sections = [n for n in SECTIONS if wanted[n]] if tier_queries else []

        async def first_pass() -> tuple[list, dict[str, tuple[list[int], int] | None], dict[str, int]]:
            if not sections:
                # Nothing to match (a query of punctuation or spaces only): no query to build.
                return [], {}, {}
            levels = [(lv, (bool(rings) and lv[0][-1] == rings[-1]) or not rings)
                      for lv in ds.levels(tier_queries, rings)]
            widest = ds.widest(tier_queries, rings)
            ranked: dict[str, tuple[list[int], int] | None] = {}
            totals: dict[str, int] = {}
            for n in sections:
                if engine.pg and await engine.estimate(widest, n) <= RANKED_ROWS:
                    # One statement per section unless the matches are more than the cap.
                    ranked[n] = await engine.ranked(engine.match(widest, n),
                                                    [(ds.tsquery_level(lv), d) for lv, d in levels],
                                                    *_bounds(n), TOTAL_CAP, limit, offset, ref)
                    found = ranked[n]
                    totals[n] = found[1] if found is not None else TOTAL_CAP + 1
                else:
                    ranked[n] = None
                    totals[n] = await _total(engine, n, widest)
            return levels, ranked, totals

        levels, ranked, totals = await first_pass()
        fuzzy: dict[str, list[str]] = {}
        if tokens and any(ds.max_typos(t) for t in tokens) and sum(totals.values()) < FUZZY_BELOW:
            fuzzy = await _fuzzy(s, [t for t in tokens if t not in begun])
            if fuzzy:
                tier_queries = ds.tiers(tokens, fuzzy, filters, completions)
                levels, ranked, totals = await first_pass()
        out["query"]["typos"] = fuzzy
        pages: dict[str, tuple[list[int], int, bool]] = {}
        for section in SECTIONS:
            done = ranked.get(section)
            if section not in totals:
                pages[section] = ([], 0, False)
            elif done is not None:
                pages[section] = (done[0], done[1], False)
            else:
                pages[section] = await _section(engine, section, levels, totals[section], limit, offset, ref)
        # Both sections' entries in one read, and when our own mailboxes were last opened in another.
        wanted_ids = [i for ids, _, _ in pages.values() for i in ids]
        st = DirSearch.__table__
        rows = {r.id: r for r in (await s.execute(
            sa.select(st).where(st.c.id.in_(wanted_ids)))).all()} if wanted_ids else {}
        local_ids = [r.local_mailbox_id for r in rows.values() if r.local_mailbox_id]
        opened = dict((await s.execute(sa.select(Mailbox.id, Mailbox.last_opened_at)
                                       .where(Mailbox.id.in_(local_ids)))).all()) if local_ids else {}
        for section, (ids, total, capped) in pages.items():
            items = [_item(rows[i], opened, ref) for i in ids if i in rows]
            end = offset + len(items)
            out[section] = {"items": items, "total": total, "next_offset": end if end < total else None,
                            "total_capped": capped}
    return out


# --- Cards and profiles ----------------------------------------------------------------------

def _activity_dict(a: DirActivity) -> dict[str, Any]:
    return {"site": a.site_name, "trade_name": a.trade_name, "structure_id": a.structure_id, "finess": a.finess,
            "siret": a.siret, "address": a.address, "postcode": a.postcode, "commune": a.commune,
            "commune_code": a.commune_code, "phone": a.phone, "sector": a.sector, "mode": a.mode,
            "function": a.function, "specialty": a.specialty, "specialty_code": a.specialty_code}


def _public_profile(p: DirProfile | None) -> dict[str, Any]:
    if p is None:
        return {"modalities": {k: False for k in MODALITIES}, "competences": "", "activities": "", "equipment": "",
                "expert": None}
    mods = {k: bool((p.modalities or {}).get(k, False)) for k in MODALITIES}
    return {"modalities": mods, "competences": p.competences, "activities": p.activities,
            "equipment": p.equipment, "expert": p.expert}


async def get_entry(core: Core, actor: Actor, ref: str) -> dict[str, Any]:
    """The public card of one directory entry (``m<id>`` mailbox entry or ``p<id>`` person)."""
    await sync_local(core)
    if not re.fullmatch(r"[mp]\d{1,18}", ref or ""):
        raise NotFound("fiche introuvable")
    async with core.read() as s:
        card: dict[str, Any] = {"id": ref}
        person = None
        if ref[0] == "m":
            e = await s.get(DirMailbox, int(ref[1:]))
            if e is None:
                raise NotFound("fiche introuvable")
            card.update(address=e.address, kind=e.kind, source=e.source, active=e.active, title=e.title,
                        first_name=e.first_name, last_name=e.last_name, profession=e.profession,
                        specialty=e.specialty, service=e.service, organisation=e.org_name,
                        address_lines=e.address_lines, postcode=e.postcode, city=e.city,
                        national_id=e.national_id or None)
            if e.national_id:
                person = await s.scalar(sa.select(DirPerson).where(DirPerson.national_id == e.national_id))
            if e.source == "local" and e.local_mailbox_id:
                box = await s.get(Mailbox, e.local_mailbox_id)
                card["is_expert"] = bool(box and box.is_expert)
                card["is_resource_team"] = bool(box and box.is_resource_team)
                card["description"] = box.description if box else ""
                profile = await s.get(DirProfile, box.owner_account_id) if box and box.owner_account_id else None
                card["profile"] = _public_profile(profile)
                if profile is not None and profile.expert:
                    card["is_expert"] = True
                card["editable"] = bool(box and box.owner_account_id == actor.account_id)
        else:
            person = await s.get(DirPerson, int(ref[1:]))
            if person is None:
                raise NotFound("fiche introuvable")
        if person is not None:
            acts = (await _activities_of(s, [person.id])).get(person.id, [])
            card["person"] = {"national_id": person.national_id, "title": person.title,
                              "first_name": person.first_name, "last_name": person.last_name,
                              "profession": person.profession, "profession_code": person.profession_code,
                              "active": person.active, "activities": [_activity_dict(a) for a in acts]}
        return card


async def _own_profile(s: AsyncSession, account_id: int) -> DirProfile:
    profile = await s.get(DirProfile, account_id)
    if profile is None:
        profile = DirProfile(account_id=account_id, modalities={}, competences="", activities="", equipment="",
                             commune_code="", postcode="", notification_phone="", notification_email="")
        s.add(profile)
    return profile


async def get_my_profile(core: Core, actor: Actor) -> dict[str, Any]:
    """The acting account's directory card, with its private notification contacts."""
    async with core.read() as s:
        account = await s.get(Account, actor.account_id)
        if account is None:
            raise NotFound("compte introuvable")
        profile = await s.get(DirProfile, actor.account_id)
        box = await s.scalar(sa.select(Mailbox).where(Mailbox.owner_account_id == actor.account_id,
                                                      Mailbox.kind == "PER").order_by(Mailbox.id))
        entry = await s.scalar(sa.select(DirMailbox).where(DirMailbox.address == box.address)) if box else None
        person = (await s.scalar(sa.select(DirPerson).where(DirPerson.national_id == account.national_id))
                  if account.national_id else None)
    index = communes_service.package_index()
    place = index.by_code.get(profile.commune_code) if profile and profile.commune_code else None
    out = {"account_id": account.id, "name": _person_name(account.civility, account.first_name, account.last_name),
           "profession": account.profession, "specialty": account.specialty, "national_id": account.national_id,
           "address": box.address if box else None, "entry_id": f"m{entry.id}" if entry else None,
           "national_entry_id": f"p{person.id}" if person else None,
           "commune": place.as_dict() if place else None, "postcode": profile.postcode if profile else "",
           "notification_phone": profile.notification_phone if profile else "",
           "notification_email": profile.notification_email if profile else "",
           "is_expert": bool((box and box.is_expert) or (profile and profile.expert))}
    out.update(_public_profile(profile))
    return out


_PHONE = re.compile(r"^\+?[0-9 .()-]{6,20}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[A-Za-z]{2,}$")


async def update_my_profile(core: Core, actor: Actor, changes: dict[str, Any]) -> dict[str, Any]:
    """Change the acting account's own card (only its owner can: the card is the actor's)."""
    return await _update_profile(core, actor, actor.account_id, changes)


async def update_entry(core: Core, actor: Actor, ref: str, changes: dict[str, Any]) -> dict[str, Any]:
    """Change a card through its entry id: allowed to the owner of that local mailbox only."""
    async with core.read() as s:
        e = await s.get(DirMailbox, int(ref[1:])) if re.fullmatch(r"m\d{1,18}", ref or "") else None
        box = await s.get(Mailbox, e.local_mailbox_id) if e is not None and e.local_mailbox_id else None
    if e is None:
        raise NotFound("fiche introuvable")
    if box is None or box.owner_account_id != actor.account_id:
        raise Forbidden("seul le titulaire de cette fiche peut la modifier")
    return await _update_profile(core, actor, actor.account_id, changes)


async def _update_profile(core: Core, actor: Actor, account_id: int, changes: dict[str, Any]) -> dict[str, Any]:
    allowed = {"notification_phone", "notification_email", "modalities", "competences", "activities", "equipment",
               "expert", "commune_code", "postcode", "commune"}
    unknown = set(changes) - allowed
    if unknown:
        raise Invalid(f"champ(s) inconnu(s) : {', '.join(sorted(unknown))}")
    changes = _clean_card_changes(changes)
    index = communes_service.package_index()
    async with core.write() as tx:
        s = tx.session
        profile = await _own_profile(s, account_id)
        if "notification_phone" in changes:
            v = (changes["notification_phone"] or "").strip()
            if v and not _PHONE.match(v):
                raise Invalid("téléphone de notification invalide")
            profile.notification_phone = v
        if "notification_email" in changes:
            v = (changes["notification_email"] or "").strip()
            if v and not _EMAIL.match(v):
                raise Invalid("adresse e-mail de notification invalide")
            profile.notification_email = v
        if "modalities" in changes:
            mods = changes["modalities"] or {}
            if not isinstance(mods, dict) or set(mods) - set(MODALITIES):
                raise Invalid(f"modalités attendues : {', '.join(MODALITIES)}")
            merged = dict(profile.modalities or {})
            merged.update({k: bool(v) for k, v in mods.items()})
            profile.modalities = merged
        for name in ("competences", "activities", "equipment"):
            if name in changes:
                v = changes[name] or ""
                if not isinstance(v, str) or len(v) > 4000:
                    raise Invalid(f"{name} : texte de 4000 caractères au plus")
                setattr(profile, name, v)
        if any(k in changes for k in ("commune_code", "postcode", "commune")):
            code = (changes.get("commune_code") or "").strip()
            pc = (changes.get("postcode") or "").strip()
            place = index.by_code.get(code) if code else None
            if place is None and (pc or changes.get("commune")):
                place = index.resolve(pc, changes.get("commune") or "")
            if place is None and (code or pc or changes.get("commune")):
                raise Invalid("commune inconnue")
            profile.commune_code = place.code if place else ""
            profile.postcode = (pc or (place.postcodes[0] if place and place.postcodes else "")) if place else ""
        box = await s.scalar(sa.select(Mailbox).where(Mailbox.owner_account_id == account_id,
                                                      Mailbox.kind == "PER").order_by(Mailbox.id))
        if "expert" in changes:
            decl = changes["expert"]
            if decl in (None, False):
                profile.expert = None
                if box is not None:
                    box.is_expert = False
            else:
                if not isinstance(decl, dict) or set(decl) - set(EXPERT_FIELDS):
                    raise Invalid(f"déclaration d'expertise : champs attendus {', '.join(EXPERT_FIELDS)}")
                if not (decl.get("description") or "").strip():
                    raise Invalid("déclaration d'expertise : description de l'expertise requise")
                specs = decl.get("specialties") or []
                if not isinstance(specs, list) or not all(isinstance(x, str) for x in specs):
                    raise Invalid("déclaration d'expertise : liste de spécialités attendue")
                profile.expert = {"description": decl["description"].strip()[:4000],
                                  "documents": (decl.get("documents") or "")[:4000],
                                  "urgent_contact": (decl.get("urgent_contact") or "")[:200],
                                  "specialties": [x[:160] for x in specs][:20]}
                if box is not None:
                    box.is_expert = True
        profile.updated_at = utcnow()
    await sync_local(core, force=True)
    return await get_my_profile(core, actor)


_CARD_LINES = {"notification_phone": "téléphone de notification", "notification_email": "e-mail de notification",
               "commune_code": "code commune", "postcode": "code postal", "commune": "commune"}
_CARD_TEXTS = ("competences", "activities", "equipment")


def _clean_card_changes(changes: dict[str, Any]) -> dict[str, Any]:
    """The text rule of DESIGN §6 on card fields: one-line fields refuse controls and line breaks,
    free texts lose their control characters."""
    out = dict(changes)
    try:
        for name, label in _CARD_LINES.items():
            if isinstance(out.get(name), str):
                out[name] = check_line(out[name], label)
        for name in _CARD_TEXTS:
            if isinstance(out.get(name), str):
                out[name] = clean_multiline(out[name])
        decl = out.get("expert")
        if isinstance(decl, dict):
            decl = dict(decl)
            for name in ("description", "documents"):
                if isinstance(decl.get(name), str):
                    decl[name] = clean_multiline(decl[name])
            if isinstance(decl.get("urgent_contact"), str):
                decl["urgent_contact"] = check_line(decl["urgent_contact"], "contact urgent")
            if isinstance(decl.get("specialties"), list):
                decl["specialties"] = [check_line(x, "spécialité") if isinstance(x, str) else x
                                       for x in decl["specialties"]]
            out["expert"] = decl
    except TextRefused as exc:
        raise Invalid(str(exc)) from None
    return out


# --- Publication -----------------------------------------------------------------------------

async def _local_entries(core: Core) -> list[tuple[Mailbox, Account | None, DirMailbox | None]]:
    await sync_local(core)
    async with core.read() as s:
        boxes = (await s.execute(sa.select(Mailbox).where(Mailbox.active.is_(True)).order_by(Mailbox.id))
                 ).scalars().all()
        owners = {a.id: a for a in (await s.execute(sa.select(Account).where(
            Account.id.in_({b.owner_account_id for b in boxes if b.owner_account_id})))).scalars()}
        entries = {e.address: e for e in (await s.execute(sa.select(DirMailbox).where(
            DirMailbox.source == "local"))).scalars()}
    return [(b, owners.get(b.owner_account_id) if b.kind == "PER" else None, entries.get(b.address)) for b in boxes]


_PROFESSION_CODES = {"medecin": "10", "pharmacien": "21", "chirurgien dentiste": "40", "sage femme": "50",
                     "infirmier": "60", "infirmiere": "60", "masseur kinesitherapeute": "70",
                     "pedicure podologue": "80", "orthophoniste": "91", "orthoptiste": "92"}


def _profession_code(account: Account) -> str:
    return account.profession_code or _PROFESSION_CODES.get(" ".join(ds.words(account.profession)), "")


async def export_correspondance(core: Core, out: io.TextIOBase) -> int:
    """Write our mailboxes in the national correspondence format (31 columns); returns lines written."""
    header = list(fmt.MAILBOX_COLUMNS)
    out.write("|".join(header) + "\n")
    n = 0
    for box, owner, entry in await _local_entries(core):
        if box.kind == "PER" and owner is None:
            continue
        nid = (owner.national_id or "") if owner else ""
        row = dict.fromkeys(fmt.MAILBOX_COLUMNS.values(), "")
        row.update(kind=box.kind, address=box.address, country="France", paperless="O")
        if owner is not None:
            row.update(id_type=nid[:1], pp_id=nid[1:], national_id=nid,
                       title={"Dr": "Docteur", "Pr": "Professeur"}.get(owner.civility, owner.civility),
                       last_name=owner.last_name.upper(), first_name=owner.first_name, category_code="C",
                       category="Civil", profession_code=_profession_code(owner), profession=owner.profession,
                       specialty=owner.specialty)
        else:
            row.update(service=box.display_name, org_name=box.organisation,
                       structure_id_type="1" if box.finess else "", structure_id=f"1{box.finess}" if box.finess
                       else "")
        if entry is not None:
            row.update(postcode=entry.postcode, department_code=entry.department_code,
                       delivery_line=f"{entry.postcode} {entry.city.upper()}".strip())
        out.write("|".join(str(row[k]).replace("|", " ").replace("\n", " ") for k in fmt.MAILBOX_COLUMNS.values())
                  + "\n")
        n += 1
    return n


MSS_EXTENSION = "https://interop.esante.gouv.fr/ig/fhir/annuaire/StructureDefinition/as-ext-mailbox-mss-metadata"
RPPS_SYSTEM = "urn:oid:1.2.250.1.71.4.2.1"
FINESS_SYSTEM = "urn:oid:1.2.250.1.71.4.2.2"
PROFESSION_SYSTEM = "https://mos.esante.gouv.fr/NOS/TRE_G15-ProfessionSante/FHIR/TRE-G15-ProfessionSante"
BAL_TYPE_SYSTEM = "https://mos.esante.gouv.fr/NOS/TRE_R257-TypeBAL/FHIR/TRE-R257-TypeBAL"


def _telecom(box: Mailbox) -> dict[str, Any]:
    return {"system": "email", "value": box.address, "use": "work", "extension": [{
        "url": MSS_EXTENSION,
        "extension": [
            {"url": "type", "valueCodeableConcept": {"coding": [{"system": BAL_TYPE_SYSTEM, "code": box.kind}]}},
            {"url": "description", "valueString": box.display_name},
            {"url": "digitization", "valueBoolean": True},
        ]}]}


async def fhir_bundle(core: Core, *, name: str = "", identifier: str = "", mailbox: str = "",
                      resource_type: str | None = None, bundle_type: str = "collection") -> dict[str, Any]:
    """Our mailboxes as a FHIR R4 Bundle (Practitioner, PractitionerRole, Organization, HealthcareService)."""
    wanted_name = ds.words(name)
    entries: list[dict[str, Any]] = []
    orgs: dict[str, str] = {}
    base = f"https://{core.settings.domain}/fhir"

    def keep(text: str, ids: list[str], address: str) -> bool:
        haystack = set(ds.words(text))
        if wanted_name and not all(any(h.startswith(w) for h in haystack) for w in wanted_name):
            return False
        if identifier and identifier.split("|")[-1] not in ids:
            return False
        return not (mailbox and mailbox.lower() != address)

    def add(resource: dict[str, Any]) -> None:
        if resource_type is None or resource["resourceType"] == resource_type:
            entries.append({"fullUrl": f"{base}/{resource['resourceType']}/{resource['id']}", "resource": resource,
                            **({"search": {"mode": "match"}} if bundle_type == "searchset" else {})})

    for box, owner, entry in await _local_entries(core):
        if owner is not None:
            nid = owner.national_id or ""
            if not keep(f"{owner.first_name} {owner.last_name}", [nid], box.address):
                continue
            pid = f"pr-{box.id}"
            practitioner: dict[str, Any] = {
                "resourceType": "Practitioner", "id": pid, "active": True,
                "name": [{"family": owner.last_name.upper(), "given": [owner.first_name] if owner.first_name else [],
                          **({"prefix": [owner.civility]} if owner.civility else {})}],
                "telecom": [_telecom(box)]}
            if nid:
                practitioner["identifier"] = [{"system": RPPS_SYSTEM, "value": nid}]
            add(practitioner)
            role: dict[str, Any] = {"resourceType": "PractitionerRole", "id": f"prr-{box.id}", "active": True,
                                    "practitioner": {"reference": f"Practitioner/{pid}"},
                                    "telecom": [_telecom(box)]}
            code = _profession_code(owner)
            if owner.profession:
                role["code"] = [{"coding": [{"system": PROFESSION_SYSTEM, "code": code or "00",
                                             "display": owner.profession}], "text": owner.profession}]
            if owner.specialty:
                role["specialty"] = [{"text": owner.specialty}]
            add(role)
        elif box.kind != "PER":
            if not keep(f"{box.display_name} {box.organisation}", [box.finess or ""], box.address):
                continue
            org_name = box.organisation or box.display_name
            if org_name not in orgs:
                orgs[org_name] = f"org-{len(orgs) + 1}"
                org: dict[str, Any] = {"resourceType": "Organization", "id": orgs[org_name], "active": True,
                                       "name": org_name}
                if box.finess:
                    org["identifier"] = [{"system": FINESS_SYSTEM, "value": box.finess}]
                add(org)
            service: dict[str, Any] = {"resourceType": "HealthcareService", "id": f"hs-{box.id}", "active": True,
                                       "providedBy": {"reference": f"Organization/{orgs[org_name]}"},
                                       "name": box.display_name, "telecom": [_telecom(box)]}
            if box.description:
                service["comment"] = box.description[:1000]
            if entry is not None and entry.city:
                service["extraDetails"] = f"{entry.postcode} {entry.city}".strip()
            add(service)
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": bundle_type, "timestamp": utcnow().isoformat(),
                              "entry": entries}
    if bundle_type == "searchset":
        bundle["total"] = len(entries)
    _validate_fhir(bundle)
    return bundle


def _validate_fhir(bundle: dict[str, Any]) -> None:
    from fhir.resources.R4B.bundle import Bundle

    Bundle.model_validate(bundle)
