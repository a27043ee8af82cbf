"""Directory cards: an entry as others see it, one's own card (« Ma fiche ») and its changes,
expert declarations.
"""

from __future__ import annotations

import re
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from monsisra.domain.clock import utcnow
from monsisra.domain.text import TextRefused, check_line, clean_multiline
from monsisra.services import communes as communes_service
from monsisra.services.core import Actor, Core
from monsisra.services.directory.common import EXPERT_FIELDS, MODALITIES
from monsisra.services.directory.documents import activities_of, person_name
from monsisra.services.directory.local import sync_local
from monsisra.services.errors import Forbidden, Invalid, NotFound
from monsisra.store.directory import (
    DirActivity,
    DirMailbox,
    DirPerson,
    DirProfile,
)
from monsisra.store.models import Account, Mailbox


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
            acts = (await activities_of(s, [person.id])).get(person.id, [])
            card["person"] = {"national_id": person.national_id, "title": person.title,
                              "first_name": person.first_name, "last_name": person.last_name,
                              "profession": person.profession, "profession_code": person.profession_code,
                              "active": person.active, "activities": [_activity_dict(a) for a in acts]}
    if card.get("address") and card.get("source") == "local":
        # A professional or service of this platform: online / away / offline (issue 13).
        from monsisra.services import presence

        card["presence"] = (await presence.of_addresses(core, actor, [card["address"]]))[0]
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
    out = {"account_id": account.id, "name": person_name(account.civility, account.first_name, account.last_name),
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
    return await update_profile(core, actor, actor.account_id, changes)


async def update_entry(core: Core, actor: Actor, ref: str, changes: dict[str, Any]) -> dict[str, Any]:
    """Change a card through its entry id: allowed to the owner of that local mailbox only."""
    async with core.read() as s:
        e = await s.get(DirMailbox, int(ref[1:])) if re.fullmatch(r"m\d{1,18}", ref or "") else None
        box = await s.get(Mailbox, e.local_mailbox_id) if e is not None and e.local_mailbox_id else None
    if e is None:
        raise NotFound("fiche introuvable")
    if box is None or box.owner_account_id != actor.account_id:
        raise Forbidden("seul le titulaire de cette fiche peut la modifier")
    return await update_profile(core, actor, actor.account_id, changes)


async def update_profile(core: Core, actor: Actor, account_id: int, changes: dict[str, Any]) -> dict[str, Any]:
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
                profile.expert = check_expert_declaration(decl)
                if box is not None:
                    box.is_expert = True
        profile.updated_at = utcnow()
    await sync_local(core, force=True)
    return await get_my_profile(core, actor)


def check_expert_declaration(decl: Any) -> dict[str, Any]:
    """An expert declaration (a person's card or a service's), as stored; French refusals."""
    if not isinstance(decl, dict) or set(decl) - set(EXPERT_FIELDS):
        raise Invalid(f"déclaration d'expertise : champs attendus {', '.join(EXPERT_FIELDS)}")
    if not (decl.get("description") or "").strip():
        raise Invalid("déclaration d'expertise : description de l'expertise requise")
    specs = decl.get("specialties") or []
    if not isinstance(specs, list) or not all(isinstance(x, str) for x in specs):
        raise Invalid("déclaration d'expertise : liste de spécialités attendue")
    try:
        days = int(decl.get("answer_days") or 7)
    except (TypeError, ValueError):
        days = 0
    if not 1 <= days <= 90:
        raise Invalid("déclaration d'expertise : délai de réponse entre 1 et 90 jours")
    return {"description": decl["description"].strip()[:4000], "answer_days": days,
            "documents": (decl.get("documents") or "")[:4000],
            "urgent_contact": (decl.get("urgent_contact") or "")[:200],
            "specialties": [x[:160] for x in specs][:20]}


def clean_expert_declaration(decl: Any) -> Any:
    """The text rule on a declaration's fields (see :func:`_clean_card_changes`)."""
    return _clean_card_changes({"expert": decl})["expert"]


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
