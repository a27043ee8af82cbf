"""« Experts près de chez moi »: the declared experts of the directory (people and services),
nearest first from the requester's practice commune (their card), by great-circle distance on
the communes' coordinates; experts without a known place come last."""

from __future__ import annotations

from typing import Any

from monsisra.services import communes, directory
from monsisra.services.core import Actor, Core
from monsisra.store.directory import DirProfile

MAX_EXPERTS = 100


async def practice_commune(core: Core, actor: Actor) -> communes.Commune | None:
    """The commune of the actor's practice, as their directory card gives it (code, else postcode)."""
    async with core.read() as s:
        profile = await s.get(DirProfile, actor.account_id)
    if profile is None:
        return None
    index = communes.package_index()
    place = index.by_code.get(profile.commune_code or "")
    if place is None and profile.postcode:
        place = index.largest(index.by_postcode.get(profile.postcode, []))
    return place if place is not None and place.latitude is not None else None


def _order(item: dict[str, Any]) -> tuple[bool, float, str]:
    distance = item.get("distance_km")
    return distance is None, distance if distance is not None else 0.0, item.get("name") or ""


async def experts_near(core: Core, actor: Actor, q: str = "", limit: int = 20) -> dict[str, Any]:
    """``GET /teleexpertises/experts``: people and services declared expert, nearest first."""
    limit = max(1, min(int(limit), MAX_EXPERTS))
    ref = await practice_commune(core, actor)
    found = await directory.search(core, actor, q=q, kind="experts", limit=limit, near=ref or "")
    items = []
    for section in ("professionals", "services"):
        for entry in found[section]["items"]:
            entry.setdefault("distance_km", None)
            items.append({**entry, "section": section})
    if ref is not None:
        # Each section comes nearest first; the merged list too, by the real (haversine) distance.
        items.sort(key=_order)
    return {"reference": ref.as_dict() if ref else None, "items": items[:limit],
            "total": found["professionals"]["total"] + found["services"]["total"]}
