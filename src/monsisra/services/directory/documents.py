"""The entries of the search index (``dir_search``): one per published external mailbox, per
professional without a mailbox and per local mailbox, with their words, places and ranking ids
(see ``store/directory.py`` for how ids give the ranking order on both engines).
"""

from __future__ import annotations

import collections
import operator
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from monsisra.domain import directory_search as ds
from monsisra.services import communes as communes_service
from monsisra.services.directory.common import RESOURCE, fit, is_postgres, short_title
from monsisra.store.db import among
from monsisra.store.directory import (
    NATIONAL_OFFSET,
    SECTION_SPAN,
    SECTIONS,
    DirActivity,
    DirSearch,
    DirTermKey,
)


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
    markers that place an entry there as a second site (commune, department, cell). Computed once per commune."""
    terms = _COMMUNE_TERMS.get(place.code)
    if terms is None:
        cell = [ds.grid_cell(place.latitude, place.longitude)] if place.latitude is not None else []
        commune = ds.marker("xc", place.code)
        # A second site's department has a marker of its own: a department lists the people
        # practising mainly there first, then those who also practise there.
        terms = (ds.words(place.name), [commune, ds.marker("xd", place.department_code), *cell],
                 [commune, ds.marker("xs", place.department_code), *cell])
        _COMMUNE_TERMS[place.code] = terms
    return terms


def _fill_common(doc: Doc, place: communes_service.Commune | None, postcode: str, department: str,
                 organisations: list[str], extra_places: list[tuple[str, str]] = ()) -> None:
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
    r["postcode"] = postcode or (place.postcodes[0] if place and place.postcodes else "")
    if r["postcode"]:
        doc.words.append(r["postcode"])
        doc.markers.append(ds.marker("xp", r["postcode"]))
    # Every practice site finds the entry, the second ones too: by commune name, postcode,
    # department and "nearby" (a person is found wherever they practise).
    for code, site_postcode in extra_places:
        other = index.by_code.get(code) if code else None
        if other is not None and other is not place:
            words, _, markers = _commune_terms(other)
            doc.words += words
            doc.markers += markers
        if site_postcode and site_postcode != r["postcode"]:
            doc.words.append(site_postcode)
            doc.markers.append(ds.marker("xp", site_postcode))
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


def person_name(title: str, first: str, last: str) -> str:
    return " ".join(p for p in (short_title(title), first, last.upper()) if p)


async def activities_of(session: AsyncSession, person_ids: list[int]) -> dict[int, list[Any]]:
    if not person_ids:
        return {}
    t = DirActivity.__table__
    rows = (await session.execute(sa.select(t).where(among(t.c.person_id, person_ids, is_postgres(session)),
                                                     t.c.active.is_(True))
                                  .order_by(t.c.person_id, t.c.id))).all()
    out: dict[int, list[Any]] = {}
    for a in rows:
        out.setdefault(a.person_id, []).append(a)
    return out


def professional_doc(index, seq: int, local: bool, *, ref: str, address: str | None, national_id: str,
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
                   name=person_name(title, first, last), profession=profession, specialty="; ".join(specs),
                   organisation=orgs[0] if orgs else "", is_expert=is_expert, local_mailbox_id=local_mailbox_id)
    _fill_common(doc, place, postcode, department, orgs, [(a.commune_code, a.postcode) for a in acts])
    return doc


def service_doc(index, seq: int, local: bool, *, ref: str, address: str, kind: str, service: str,
                 organisation: str, postcode: str, city: str, department: str, is_expert: bool = False,
                 is_resource_team: bool | None = None, local_mailbox_id: int | None = None, name: str = "",
                 commune_code: str = "") -> Doc:
    label = name or (f"{service} — {organisation}" if service and organisation else service or organisation
                     or address.split("@")[0])
    if is_resource_team is None:
        is_resource_team = bool(RESOURCE.search(" ".join(ds.words(f"{service} {organisation} {label}"))))
    doc = _new_doc("services", seq, local, ref=ref, kind=kind, address=address, name=label, service=service,
                   organisation=organisation, is_expert=is_expert, is_resource_team=is_resource_team,
                   local_mailbox_id=local_mailbox_id)
    place = _place(index, postcode, city, department, commune_code)
    _fill_common(doc, place, postcode, department, [organisation] if organisation else [])
    doc.words += ds.words(address.split("@")[0])
    return doc


# Only the columns index entries are built from: less to read, and to send to the helpers.
BoxRow = collections.namedtuple("BoxRow", "id address kind national_id title first_name last_name profession "
                                            "specialty service org_name organisation_id postcode city department_code")


PersonRow = collections.namedtuple("PersonRow", "id national_id title first_name last_name profession")


ActivityRow = collections.namedtuple("ActivityRow", "person_id specialty site_name postcode commune_code commune "
                                                      "department_code")


def row_columns(table: sa.Table, row: type) -> list[sa.Column]:
    return [table.c[name] for name in row._fields]


IndexRows = tuple[list[str], list[tuple], collections.Counter]  # columns, rows, vocabulary word → entries


def _index_rows(docs: list[Doc]) -> IndexRows:
    """Finished ``dir_search`` rows (cut to their column lengths) and the words for the typo
    vocabulary, each with the number of entries it is found in."""
    vocabulary: collections.Counter = collections.Counter()
    rows = []
    table = DirSearch.__table__
    for d in docs:
        vocabulary.update(set(vocabulary_words(d)))
        rows.append(fit(table, d.finish()))
    columns = list(rows[0]) if rows else []
    get = operator.itemgetter(*columns) if columns else None
    return columns, [get(r) for r in rows], vocabulary


def professional_rows(seq: int, chunk: list[tuple[str, int]], boxes: list[tuple], people: list[tuple],
                       activities: list[tuple]) -> IndexRows:
    """Helper side: index entries of professionals, in ranking order, numbered from ``seq + 1``."""
    index = communes_service.package_index()
    by_box = {b.id: b for b in map(BoxRow._make, boxes)}
    people_rows = [PersonRow._make(x) for x in people]
    by_nid = {x.national_id: x for x in people_rows}
    by_id = {x.id: x for x in people_rows}
    acts: dict[int, list[Any]] = {}
    for a in map(ActivityRow._make, activities):
        acts.setdefault(a.person_id, []).append(a)
    docs = []
    for src, id_ in chunk:
        seq += 1
        if src == "m":
            b = by_box[id_]
            person = by_nid.get(b.national_id)
            docs.append(professional_doc(
                index, seq, False, ref=f"m{b.id}", address=b.address, national_id=b.national_id,
                title=b.title or (person.title if person else ""), first=b.first_name, last=b.last_name,
                profession=b.profession or (person.profession if person else ""),
                specialties=[b.specialty] if b.specialty else [], postcode=b.postcode, city=b.city,
                department=b.department_code, acts=acts.get(person.id, []) if person else [],
                organisation=b.org_name))
        else:
            x = by_id[id_]
            docs.append(professional_doc(
                index, seq, False, ref=f"p{x.id}", address=None, national_id=x.national_id, title=x.title,
                first=x.first_name, last=x.last_name, profession=x.profession, specialties=[], postcode="",
                city="", department="", acts=acts.get(x.id, []), kind=""))
    return _index_rows(docs)


def service_rows(seq: int, boxes: list[tuple], org_places: dict[int, str]) -> IndexRows:
    """Helper side: index entries of services (organisation mailboxes), numbered from ``seq + 1``."""
    index = communes_service.package_index()
    docs = []
    for b in map(BoxRow._make, boxes):
        seq += 1
        fallback = ""
        if index.resolve(b.postcode, b.city, b.department_code) is None:
            fallback = org_places.get(b.organisation_id) or ""
        docs.append(service_doc(index, seq, False, ref=f"m{b.id}", address=b.address, kind=b.kind,
                                 service=b.service, organisation=b.org_name, postcode=b.postcode, city=b.city,
                                 department=b.department_code, commune_code=fallback))
    return _index_rows(docs)


def vocabulary_words(doc: Doc) -> list[str]:
    return [w for w in doc.words if len(w) >= 3 and not w.isdigit()]


async def add_terms(session: AsyncSession, terms: list[str]) -> None:
    rows = [{"key": k, "term": t} for t in terms for k in ds.stored_keys(t)]
    if not rows:
        return
    t = DirTermKey.__table__
    for i in range(0, len(rows), 5000):
        chunk = rows[i:i + 5000]
        if is_postgres(session):
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            await session.execute(pg_insert(t).on_conflict_do_nothing(), chunk)
        else:
            await session.execute(sa.insert(t).prefix_with("OR IGNORE"), chunk)
