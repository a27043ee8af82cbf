"""Imports of the national open-data extractions (``PS_LibreAcces_Personne_activite`` and
``Extraction_Correspondance_MSSante``, ``.txt`` or ``.zip``).

Each file streams in batches: memory stays flat whatever its size. Every row carries a hash of its
content and the id of the last run that saw it, so a second import of the same file writes nothing but
that bookkeeping, a newer file updates what changed, and rows a complete file no longer lists are
marked inactive (never deleted).
"""

from __future__ import annotations

import io
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

import monsisra.services.directory.common as common
import monsisra.services.directory.pool as pool
from monsisra.domain import directory_format as fmt
from monsisra.domain import directory_search as ds
from monsisra.domain.clock import utcnow
from monsisra.services import communes as communes_service
from monsisra.services.core import Core
from monsisra.services.directory.common import Progress, bulk_insert, content_hash, fit, is_postgres
from monsisra.services.directory.index import index_count, rebuild_index
from monsisra.services.directory.pool import HelperPool, Pipeline
from monsisra.services.directory.reports import Counts, FileReport, ImportReport
from monsisra.services.errors import Invalid
from monsisra.store.db import among
from monsisra.store.directory import (
    DirActivity,
    DirImportRun,
    DirMailbox,
    DirOrganisation,
    DirPerson,
    DirService,
)


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
    pg = is_postgres(session)
    found = dict((await session.execute(sa.select(t.c.key, t.c.id).where(among(t.c.key, orgs, pg)))).all())
    new = [fit(t, {**v, "key": k, "row_hash": "", "last_run": run}) for k, v in orgs.items() if k not in found]
    if new:
        await bulk_insert(session, t, new)
        report.counts("organisations").created += len(new)
        found.update((await session.execute(
            sa.select(t.c.key, t.c.id).where(among(t.c.key, [r["key"] for r in new], pg)))).all())
    return found


async def _upsert(session: AsyncSession, table: sa.Table, key_col: str, run: int, rows: dict[str, dict[str, Any]],
                  counts: Counts, extra_where=None) -> None:
    """Insert new keys, update changed ones, stamp unchanged ones with the run (first line wins)."""
    key = table.c[key_col]
    cols = [table.c.id, key, table.c.row_hash, table.c.last_run, table.c.active]
    stmt = sa.select(*cols).where(among(key, rows, is_postgres(session)))
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
        await bulk_insert(session, table, inserts)
    if updates:
        names = [c for c in updates[0] if c != "_id"]
        await session.execute(
            sa.update(table).where(table.c.id == sa.bindparam("_id")).values({c: sa.bindparam(c) for c in names})
            .execution_options(synchronize_session=False), updates)
    if touch:
        await session.execute(sa.update(table).where(among(table.c.id, touch, is_postgres(session)))
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
            values["row_hash"] = content_hash(*values.values())
            values["sort_key"] = ds.cached_fold(f"{r['last_name']} {r['first_name']}")
            people[nid] = fit(DirPerson.__table__, values)
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
        act["row_hash"] = content_hash(*act.values())
        if key not in activities:
            activities[key] = (nid, fit(DirActivity.__table__, act))
        if org and org[0] not in orgs:
            orgs[org[0]] = fit(DirOrganisation.__table__, {
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
                                    .where(among(DirPerson.national_id, people, is_postgres(s))))).all())
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
        values["row_hash"] = content_hash(*values.values())
        if r["kind"] == "PER":
            values["sort_key"] = ds.cached_fold(f"{r['last_name']} {r['first_name']}")
        else:
            values["sort_key"] = ds.cached_fold(f"{r['service']} {r['org_name']}")
        entries[r["address"]] = fit(DirMailbox.__table__, values)
        if org_key and org_key not in orgs:
            orgs[org_key] = fit(DirOrganisation.__table__, {
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
                among(t.c.organisation_id, {o for o, _ in pairs}, is_postgres(s)))
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
                                           .where(among(DirMailbox.address, entries, is_postgres(s))))).all())
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
    if rebuild and (changed or not await index_count(core)):
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
    with HelperPool(inline=src.size < pool.HELPERS_ABOVE * 200) as helpers:
        async with Pipeline() as writes:
            with src.open() as f:
                f.readline()
                for line_no, text in enumerate(f, start=2):
                    done += len(text)
                    if not text.strip():
                        continue
                    report.lines += 1
                    lines.append((line_no, text))
                    if len(lines) >= common.BATCH:
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
