"""JSON routes of MSSanté mail: trusted domains and outbox (administrators), read receipts the
user is asked about, delivery status per external recipient. Each route calls one service."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query
from pydantic import BaseModel, Field

from monsisra.api.deps import PathId, current_actor, get_core
from monsisra.services import mdn, outbound, trust
from monsisra.services.core import Actor, Core

router = APIRouter(prefix="/api/v1", tags=["mssante"])
ActorDep = Annotated[Actor, Depends(current_actor)]
CoreDep = Annotated[Core, Depends(get_core)]


class TrustIn(BaseModel):
    domains: list[str] = Field(min_length=1, max_length=1000)
    note: str = ""


class MdnIn(BaseModel):
    send: bool = True


@router.get("/admin/trust")
async def trust_list(core: CoreDep, actor: ActorDep) -> dict[str, Any]:
    """Les domaines de l'espace de confiance MSSanté."""
    return {"items": await trust.list_domains(core, actor)}


@router.post("/admin/trust", status_code=201)
async def trust_add(body: TrustIn, core: CoreDep, actor: ActorDep) -> dict[str, Any]:
    added = await trust.add(core, body.domains, body.note, actor)
    return {"added": added, "items": await trust.list_domains(core, actor)}


@router.delete("/admin/trust/{domain}", status_code=204)
async def trust_remove(domain: Annotated[str, Path(max_length=255)], core: CoreDep, actor: ActorDep) -> None:
    await trust.remove(core, domain, actor)


@router.get("/admin/outbox")
async def outbox(core: CoreDep, actor: ActorDep,
                 status: Annotated[str | None, Query(pattern="^(queued|retrying|failed|sent)$")] = None,
                 limit: Annotated[int, Query(ge=1, le=1000)] = 200) -> dict[str, Any]:
    """File d'envoi MSSanté : destinataires externes en attente, en nouvel essai ou en échec."""
    return {"items": await outbound.outbox(core, actor, status, limit)}


@router.get("/messages/{message_id}/delivery")
async def delivery(message_id: PathId, core: CoreDep, actor: ActorDep) -> dict[str, Any]:
    """État de remise par destinataire externe (envoyé, en attente, en échec, lu)."""
    return {"items": await outbound.delivery(core, actor, message_id)}


@router.get("/mailboxes/{mailbox_id}/messages/{message_id}/mdn")
async def mdn_status(mailbox_id: PathId, message_id: PathId, core: CoreDep, actor: ActorDep) -> dict[str, Any]:
    """L'accusé de lecture demandé par l'expéditeur : ``mdn_pending`` quand l'utilisateur doit accepter."""
    return await mdn.status(core, actor, mailbox_id, message_id)


@router.post("/mailboxes/{mailbox_id}/messages/{message_id}/mdn")
async def mdn_send(mailbox_id: PathId, message_id: PathId, core: CoreDep, actor: ActorDep,
                   body: MdnIn | None = None) -> dict[str, Any]:
    """Envoie (``send: true``) ou refuse l'accusé de lecture demandé."""
    result = await mdn.respond(core, actor, mailbox_id, message_id, send=body.send if body else True)
    return result
