"""Our own mailboxes in the directory, kept in step with accounts, mailboxes and profiles:
``sync_local`` is cheap when nothing changed and is called by search and by every change.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

import monsisra.services.directory.freshness as freshness
from monsisra.domain import directory_search as ds
from monsisra.domain.clock import as_utc, utcnow
from monsisra.domain.text import fold
from monsisra.services import communes as communes_service
from monsisra.services.core import Core
from monsisra.services.directory.common import fit, is_postgres
from monsisra.services.directory.documents import (
    Doc,
    activities_of,
    add_terms,
    professional_doc,
    service_doc,
    vocabulary_words,
)
from monsisra.services.errors import Invalid, NotFound
from monsisra.store.directory import (
    FTS_TABLE,
    DirMailbox,
    DirMeta,
    DirPerson,
    DirProfile,
    DirSearch,
)
from monsisra.store.models import Account, Mailbox
from monsisra.store.teleexpertise import ServiceExpert

_LOCAL_STATE = sa.select(*(c.label(f"s{i}") for i, c in enumerate((
    sa.func.count(Mailbox.id), sa.func.max(Mailbox.id),
    sa.func.sum(sa.case((Mailbox.is_expert.is_(True), 1), else_=0)),
    sa.func.sum(sa.case((Mailbox.is_resource_team.is_(True), 1), else_=0)),
    sa.func.sum(sa.case((Mailbox.active.is_(True), 1), else_=0)),
    sa.select(sa.func.count(Account.id)).scalar_subquery(),
    sa.select(sa.func.max(Account.id)).scalar_subquery(),
    sa.select(sa.func.count()).select_from(DirProfile).scalar_subquery(),
    sa.select(sa.func.max(DirProfile.updated_at)).scalar_subquery(),
    sa.select(DirMeta.value).where(DirMeta.name == "local_signature").scalar_subquery(),
    sa.select(DirMeta.value).where(DirMeta.name == freshness.GENERATION).scalar_subquery(),
))))
_STATE_COLUMNS = len(_LOCAL_STATE.selected_columns)


def _state(row: Any) -> tuple[str, str | None, str | None]:
    *values, updated, stored, generation = tuple(row)[:_STATE_COLUMNS]
    return "|".join(str(v) for v in (*values, as_utc(updated).isoformat() if updated else "")), stored, generation


async def _local_state(session: AsyncSession) -> tuple[str, str | None, str | None]:
    """A signature of our accounts, mailboxes and profiles, the one the index was built from, and
    the index's generation (a new one after each rebuild): one statement, run before every search."""
    return _state((await session.execute(_LOCAL_STATE)).one())


async def opening(session: AsyncSession, token: sa.Select | None = None, *extra: Any) -> Any:
    """A search's first statement, one round trip: the local state (for :func:`is_current`), the
    row of ``token`` (a one-row select, left-joined: its columns are None when nothing matched)
    and ``extra`` columns (settings of the transaction)."""
    state = _LOCAL_STATE.subquery("ls")
    if token is None:
        return (await session.execute(sa.select(state, *extra))).one()
    found = token.subquery("tq")
    return (await session.execute(sa.select(state, found, *extra)
                                  .select_from(state.outerjoin(found, sa.true())))).one()


async def is_current(core: Core, session: AsyncSession, opened: Any = None) -> bool:
    """In a search's own session: are our entries up to date (and the index the one this process
    follows)? One statement (or the row of :func:`opening`); when not, the caller runs
    :func:`sync_local` before searching."""
    sig, stored, generation = _state(opened) if opened is not None else await _local_state(session)
    if await freshness.follow(core, generation):
        return False  # the pool was renewed: search on a new connection
    return sig == stored


async def sync_local(core: Core, force: bool = False) -> bool:
    """Bring our own mailboxes' directory entries up to date; cheap when nothing changed. Also
    where a serving process notices a rebuild made by another one (``freshness``)."""
    async with core.read() as s:
        sig, stored, generation = await _local_state(s)
    await freshness.follow(core, generation)
    if sig == stored and not force:
        return False
    async with core.write() as tx:
        s = tx.session
        if is_postgres(s):
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
    acts = await activities_of(s, [p.id for p in people.values()])
    service_experts = {r.mailbox_id: r.declaration or {} for r in (await s.execute(sa.select(ServiceExpert))).scalars()}
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
            doc = professional_doc(
                index, b.id, True, ref=f"m{e.id}", address=b.address, national_id=e.national_id, title=owner.civility,
                first=owner.first_name, last=owner.last_name, profession=owner.profession,
                specialties=[owner.specialty] if owner.specialty else [], postcode=e.postcode, city=e.city,
                department=e.department_code, acts=acts.get(person.id, []) if person else [], is_expert=expert,
                local_mailbox_id=b.id, commune_code=profile.commune_code if profile else "")
            if profile is not None and profile.expert:
                doc.words += ds.words(" ".join(profile.expert.get("specialties") or []))
        elif b.kind == "PER":
            doc = professional_doc(index, b.id, True, ref=f"m{e.id}", address=b.address, national_id="", title="",
                                    first="", last=b.display_name, profession="", specialties=[], postcode="",
                                    city="", department="", acts=[], local_mailbox_id=b.id)
        else:
            doc = service_doc(index, b.id, True, ref=f"m{e.id}", address=b.address, kind=b.kind, service="",
                               organisation=b.organisation, postcode=e.postcode, city=e.city,
                               department=e.department_code, is_expert=bool(b.is_expert),
                               is_resource_team=bool(b.is_resource_team), local_mailbox_id=b.id,
                               name=b.display_name)
            doc.words += ds.words(b.description or "")
            if b.is_expert and b.id in service_experts:
                doc.words += ds.words(" ".join(service_experts[b.id].get("specialties") or []))
        docs.append(doc)
    table = DirSearch.__table__
    if not is_postgres(s):
        await s.execute(sa.text(f"INSERT INTO {FTS_TABLE}({FTS_TABLE}, rowid, text) "
                                "SELECT 'delete', id, text FROM dir_search WHERE is_local"))
    await s.execute(sa.delete(table).where(table.c.is_local.is_(True)))
    rows = [fit(table, d.finish()) for d in docs]
    if rows:
        await s.execute(sa.insert(table), rows)
        if not is_postgres(s):
            await s.execute(sa.text(f"INSERT INTO {FTS_TABLE}(rowid, text) SELECT id, text FROM dir_search "
                                    "WHERE is_local"))
    await add_terms(s, sorted({w for d in docs for w in vocabulary_words(d)}))
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
