"""Directory routes: search, own card, public cards, and a small read-only FHIR endpoint."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request
from pydantic import BaseModel, ConfigDict

from monsisra.api.deps import bearer_token, client_address, current_actor, get_core, resolve_actor
from monsisra.config import Settings
from monsisra.services import communes, directory, teleexpertise
from monsisra.services.core import Actor, Core

router = APIRouter(prefix="/api/v1/directory", tags=["directory"])
fhir = APIRouter(prefix="/fhir", tags=["fhir"])
ActorDep = Annotated[Actor, Depends(current_actor)]
CoreDep = Annotated[Core, Depends(get_core)]
EntryRef = Annotated[str, Path(max_length=40)]
SearchText = Annotated[str, Query(max_length=1000)]
Kind = Literal["all", "professionals", "services", "experts", "resource_teams"]


@router.get("/search")
async def search(request: Request, core: CoreDep, q: SearchText = "", where: SearchText = "", kind: Kind = "all",
                 limit: Annotated[int, Query(ge=1, le=100)] = 20, offset: Annotated[int, Query(ge=0, le=1000)] = 0,
                 near: SearchText = "") -> dict[str, Any]:
    """Find professionals and services by fragments of names, specialties and places (typos forgiven);
    ``near`` orders by distance from a place, ``near=moi`` from the caller's practice commune."""
    token = bearer_token(request)
    if token is not None and near.strip().lower() != "moi":
        # The token is checked by the search, in its own transaction: one database session per
        # request instead of two (issue 18: the second was a third of a quick search's time).
        return await directory.search_for_token(core, token, client_address(request), q=q, where=where,
                                                kind=kind, limit=limit, offset=offset, near=near)
    actor = await resolve_actor(request, token)
    place: str | communes.Commune = near
    if near.strip().lower() == "moi":
        place = await teleexpertise.practice_commune(core, actor) or ""
    return await directory.search(core, actor, q=q, where=where, kind=kind, limit=limit, offset=offset, near=place)


@router.get("/communes")
async def list_communes(actor: ActorDep, core: CoreDep, q: SearchText = "",
                        limit: Annotated[int, Query(ge=1, le=50)] = 10) -> list[dict[str, Any]]:
    """Commune autocompletion for the "où" field."""
    return await communes.list_communes(core, q, limit)


class Expert(BaseModel):
    model_config = ConfigDict(extra="forbid")
    description: str
    documents: str = ""
    urgent_contact: str = ""
    specialties: list[str] = []
    answer_days: int | None = None  # expected answer time (days, 1 to 90; 7 when not given)


class ProfileChanges(BaseModel):
    model_config = ConfigDict(extra="forbid")
    notification_phone: str | None = None
    notification_email: str | None = None
    modalities: dict[str, bool] | None = None
    competences: str | None = None
    activities: str | None = None
    equipment: str | None = None
    expert: Expert | None = None
    commune_code: str | None = None
    postcode: str | None = None
    commune: str | None = None


def _changes(body: ProfileChanges) -> dict[str, Any]:
    return body.model_dump(exclude_unset=True)


@router.get("/me")
async def my_card(core: CoreDep, actor: ActorDep) -> dict[str, Any]:
    return await directory.get_my_profile(core, actor)


@router.patch("/me")
async def update_my_card(body: ProfileChanges, core: CoreDep, actor: ActorDep) -> dict[str, Any]:
    """Change one's own card; ``"expert": null`` withdraws the expert declaration."""
    return await directory.update_my_profile(core, actor, _changes(body))


@router.get("/entries/{entry_id}")
async def entry(entry_id: EntryRef, core: CoreDep, actor: ActorDep) -> dict[str, Any]:
    return await directory.get_entry(core, actor, entry_id)


@router.patch("/entries/{entry_id}")
async def update_entry(entry_id: EntryRef, body: ProfileChanges, core: CoreDep, actor: ActorDep) -> dict[str, Any]:
    """Change a card by its entry id: only its owner may."""
    return await directory.update_entry(core, actor, entry_id, _changes(body))


def _fhir_route(resource_type: str):
    async def handler(request: Request, core: CoreDep, actor: ActorDep, name: str = "", identifier: str = "",
                      mailbox_mss: Annotated[str, Query(alias="mailbox-mss")] = "") -> dict[str, Any]:
        return await directory.fhir_bundle(core, name=name, identifier=identifier, mailbox=mailbox_mss,
                                           resource_type=resource_type, bundle_type="searchset")

    handler.__name__ = f"fhir_{resource_type.lower()}"
    return handler


for _rt in ("Practitioner", "PractitionerRole", "Organization", "HealthcareService"):
    fhir.add_api_route(f"/{_rt}", _fhir_route(_rt), methods=["GET"], summary=f"FHIR R4 {_rt} search")


async def _warm_up(app: FastAPI, core: Core) -> None:
    """Load the commune index (≈ 1 s) at start rather than on the first "where" search."""
    await asyncio.to_thread(communes.package_index)
    return None


def install(app: FastAPI, settings: Settings) -> None:
    app.include_router(router)
    app.include_router(fhir)
    app.state.startup_hooks.append(_warm_up)
