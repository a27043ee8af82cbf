"""Places and the expert declaration of the demo data in the directory."""

from __future__ import annotations

import sqlalchemy as sa

from monsisra.services import communes as communes_service
from monsisra.services.core import Actor, Core
from monsisra.services.directory.cards import update_profile
from monsisra.services.directory.local import set_local_place, sync_local
from monsisra.store.directory import (
    DirProfile,
)
from monsisra.store.models import Account, Mailbox

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
        await update_profile(core, Actor(bruno.id, bruno.username), bruno.id, {"expert": {
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
