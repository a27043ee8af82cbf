"""Routes of /api/v1 (DESIGN §4). Each route parses, calls one service function, returns."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, Depends, Form, Path, Query, Request, UploadFile, WebSocket, WebSocketDisconnect
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, Field

from monsisra.api.deps import BodyId, PathId, client_address, current_actor, get_core, resolve_actor
from monsisra.domain.clock import utcnow
from monsisra.domain.ins import OID_NIR
from monsisra.events import Subscription, TooManySubscriptions
from monsisra.services import accounts, attachments, mailboxes, messages, presence, sessions, signin
from monsisra.services.core import Actor, Core
from monsisra.services.errors import AuthFailed, ServiceError, TooLarge

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1")
ActorDep = Annotated[Actor, Depends(current_actor)]
AttachmentId = Annotated[str, Path(min_length=1, max_length=64)]
CoreDep = Annotated[Core, Depends(get_core)]


class TokenOut(BaseModel):
    access_token: str
    token_type: str = "bearer"  # noqa: S105 (the OAuth2 token type, not a secret)
    expires_in: int


@router.post("/auth/token", response_model=TokenOut, tags=["auth"])
async def token(request: Request, core: CoreDep, username: Annotated[str, Form()],
                password: Annotated[str, Form()], otp: Annotated[str | None, Form()] = None) -> TokenOut:
    """OAuth2 password grant: username, password and (when enrolled) a one-time code."""
    client = client_address(request)
    hook = getattr(request.app.state, "login", None)  # checks the first factor (LDAP…), returns the account
    account = await (hook(core, username, password, None, client) if hook is not None
                     else accounts.authenticate(core, username, password, client))
    login = await signin.second_step(core, account, otp, client)
    value = await signin.open_session(core, login, kind="api", client=client,
                                     user_agent=request.headers.get("user-agent"))
    return TokenOut(access_token=value, expires_in=core.settings.token_ttl_seconds)


@router.post("/auth/revoke", status_code=204, tags=["auth"])
async def revoke(request: Request, core: CoreDep, actor: ActorDep) -> Response:
    """Revoke the token (or web session) of this request: log out; its live sockets close."""
    await accounts.end_session(core, actor, "session terminée : jeton révoqué")
    return Response(status_code=204)


@router.get("/me", tags=["accounts"])
async def me(core: CoreDep, actor: ActorDep) -> dict[str, Any]:
    account = await accounts.get_account(core, actor)
    data = accounts.account_dict(account)
    data["mailboxes"] = [m.as_dict() for m in await mailboxes.list_for(core, actor)]
    return data


class Preferences(BaseModel):
    appear_absent: bool | None = None
    inbox_categories: list[str] | None = None


@router.patch("/me", tags=["accounts"])
async def update_me(body: Preferences, core: CoreDep, actor: ActorDep) -> dict[str, Any]:
    account = await accounts.update_preferences(core, actor, appear_absent=body.appear_absent,
                                                inbox_categories=body.inbox_categories)
    return accounts.account_dict(account)


@router.get("/mailboxes", tags=["mailboxes"])
async def list_mailboxes(core: CoreDep, actor: ActorDep) -> list[dict[str, Any]]:
    return [m.as_dict() for m in await mailboxes.list_for(core, actor)]


ViewName = Literal["inbox", "unread", "all", "sent", "drafts", "favorites", "todo", "archived", "trash"]
CategoryName = Literal["letter", "conversation", "mssante", "patient", "teleexpertise", "support", "result",
                       "event", "dgs_urgent"]


@router.get("/mailboxes/{mailbox_id}/messages", tags=["messages"])
async def list_messages(mailbox_id: PathId, core: CoreDep, actor: ActorDep, view: ViewName = "inbox",
                        category: CategoryName | None = None, q: Annotated[str | None, Query(max_length=200)] = None,
                        cursor: Annotated[str | None, Query(max_length=200)] = None,
                        limit: Annotated[int, Query(ge=1, le=200)] = 50) -> dict[str, Any]:
    return await messages.list_messages(core, actor, mailbox_id, view=view, category=category, q=q,
                                        cursor=cursor, limit=limit)


@router.get("/mailboxes/{mailbox_id}/counts", tags=["messages"])
async def counts(mailbox_id: PathId, core: CoreDep, actor: ActorDep) -> dict[str, Any]:
    return await messages.counts(core, actor, mailbox_id)


@router.get("/mailboxes/{mailbox_id}/messages/{message_id}", tags=["messages"])
async def get_message(mailbox_id: PathId, message_id: PathId, core: CoreDep, actor: ActorDep) -> dict[str, Any]:
    return await messages.get(core, actor, mailbox_id, message_id)


@router.get("/mailboxes/{mailbox_id}/threads/{thread_id}", tags=["messages"])
async def get_thread(mailbox_id: PathId, thread_id: PathId, core: CoreDep, actor: ActorDep) -> dict[str, Any]:
    return {"items": await messages.thread(core, actor, mailbox_id, thread_id)}


class StatePatch(BaseModel):
    read: bool | None = None
    favorite: bool | None = None
    todo: bool | None = None
    archived: bool | None = None
    deleted: bool | None = None


@router.patch("/mailboxes/{mailbox_id}/messages/{message_id}", tags=["messages"])
async def patch_message(mailbox_id: PathId, message_id: PathId, body: StatePatch, core: CoreDep,
                        actor: ActorDep) -> dict[str, Any]:
    return await messages.update_state(core, actor, mailbox_id, message_id, body.model_dump())


@router.delete("/mailboxes/{mailbox_id}/messages/{message_id}", status_code=204, tags=["messages"])
async def delete_message(mailbox_id: PathId, message_id: PathId, core: CoreDep, actor: ActorDep) -> Response:
    """« Supprimer »: to this mailbox's bin (``view=trash``), restorable for 30 days, then purged."""
    await messages.trash(core, actor, mailbox_id, message_id)
    return Response(status_code=204)


@router.post("/mailboxes/{mailbox_id}/messages/{message_id}/restore", tags=["messages"])
async def restore_message(mailbox_id: PathId, message_id: PathId, core: CoreDep, actor: ActorDep) -> dict[str, Any]:
    """Out of the bin, back where it was; answers the message's state."""
    return await messages.restore(core, actor, mailbox_id, message_id)


@router.get("/addresses/check", tags=["messages"])
async def check_address(core: CoreDep, actor: ActorDep,
                        address: Annotated[str, Query(max_length=320)]) -> dict[str, Any]:
    """May a message be sent to this address? ``{address, ok, reason, local}`` (reason in French):
    a known mailbox here, or an address of the MSSanté trust space."""
    return await messages.check_address(core, actor, address)


@router.post("/attachments", status_code=201, tags=["attachments"])
async def upload(request: Request, file: UploadFile, core: CoreDep, actor: ActorDep) -> dict[str, Any]:
    """Upload a file (multipart field ``file``); its type is sniffed from its content."""
    limit = core.settings.max_message_bytes
    if file.size is not None and file.size > limit:
        raise TooLarge(f"fichier trop volumineux : la limite est de {limit // (1024 * 1024)} Mo par message")

    async def chunks():
        while chunk := await file.read(1 << 16):
            yield chunk

    result = await attachments.upload(core, actor, file.filename, chunks())
    return result.as_dict()


@router.get("/attachments/{attachment_id}", tags=["attachments"])
async def download(attachment_id: AttachmentId, core: CoreDep, actor: ActorDep,
                   disposition: Literal["inline", "attachment"] = "attachment") -> Response:
    meta = await attachments.open_for(core, actor, attachment_id)
    headers = file_headers(meta.filename, meta.content_type, meta.size, disposition)
    return StreamingResponse(core.blobs.iter_file(meta.sha256), media_type=meta.content_type, headers=headers)


def file_headers(filename: str, content_type: str, size: int, disposition: str) -> dict[str, str]:
    """Served files: a safe disposition (inline only for types a browser shows harmlessly), no
    sniffing, a sandbox, and both forms of the file name."""
    inline = disposition == "inline" and content_type in attachments.INLINE_TYPES
    # Sanitised again: a name stored before today's rules must not lie either.
    name = attachments.safe_filename(filename)
    ascii_name = name.encode("ascii", "replace").decode().replace('"', "_").replace("?", "_")
    return {
        "Content-Disposition": f"{'inline' if inline else 'attachment'}; filename=\"{ascii_name}\"; "
                               f"filename*=UTF-8''{quote(name)}",
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "default-src 'none'; sandbox",
        "Cache-Control": "private, max-age=3600",
        "Content-Length": str(size),
    }


class PatientIn(BaseModel):
    ins: str
    oid: str = OID_NIR
    family_name: str = ""
    given_names: str = ""
    birth_date: str | None = None
    sex: str | None = None
    birthplace: str | None = None


class MessageIn(BaseModel):
    from_mailbox: BodyId
    to: list[str] = Field(default_factory=list)
    cc: list[str] = Field(default_factory=list)
    subject: str = ""
    body: str = ""
    html: str | None = None
    category: CategoryName = "letter"
    attachments: list[str] = Field(default_factory=list)
    patient: PatientIn | None = None
    draft: bool = False
    draft_id: BodyId | None = None
    in_reply_to: BodyId | None = None
    receipt_requested: bool = False
    no_reply: bool = False


@router.post("/messages", status_code=201, tags=["messages"])
async def send(body: MessageIn, core: CoreDep, actor: ActorDep) -> dict[str, Any]:
    data = body.model_dump()
    patient = data.pop("patient")
    compose = messages.Compose(**data, patient=messages.PatientRef(**patient) if patient else None)
    return await messages.send(core, actor, compose)


@router.get("/messages/{message_id}/receipts", tags=["messages"])
async def receipts(message_id: PathId, core: CoreDep, actor: ActorDep) -> dict[str, Any]:
    return {"items": await messages.receipts(core, actor, message_id)}


# Close codes of /api/v1/events beyond RFC 6455's (4000-4999 are the application's).
WS_SESSION_ENDED = 4401  # authentication missing, or the session ended: log in again
WS_TOO_MANY = 4429  # the account holds too many live sockets
EXPIRED = "session expirée : reconnectez-vous"


@router.websocket("/events")
async def events(websocket: WebSocket) -> None:
    """Live events of the account: message.new, message.read, message.flags, counts…

    Authenticate with ``Authorization: Bearer``, ``?access_token=`` or the web session cookie.
    The socket lives as long as that session: logout, revocation, password change, account
    deactivation or expiry close it (code 4401, reason in French), on whichever process holds it.
    """
    header = websocket.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    value = value.strip() if scheme.lower() == "bearer" else websocket.query_params.get("access_token")
    try:
        actor = await resolve_actor(websocket, value)  # type: ignore[arg-type]
    except (AuthFailed, ServiceError):
        await websocket.close(code=WS_SESSION_ENDED, reason="authentification requise")
        return
    core: Core = websocket.app.state.core
    cap = core.settings.ws_max_per_account
    try:
        subscription = core.bus.subscribe(actor.account_id, token_id=actor.token_id, limit=cap)
    except TooManySubscriptions:
        # Accepted then closed, so that the client reads the code and the reason.
        await websocket.accept()
        await websocket.close(code=WS_TOO_MANY, reason=f"trop de connexions temps réel ouvertes pour ce compte "
                                                       f"({cap} au plus) : fermez un onglet ou une application")
        return
    socket_id = None
    try:
        # Listed on the sessions page (revocable there), and fed only the events of mailboxes the
        # account may use — read after subscribing, so that no change in between is missed.
        socket_id = await sessions.socket_opened(core, actor, client_address(websocket),  # type: ignore[arg-type]
                                                 websocket.headers.get("user-agent"))
        subscription.socket_id = socket_id
        async with core.read() as s:
            subscription.set_mailboxes(await mailboxes.usable_mailbox_ids(s, actor.account_id))
        await websocket.accept()
        await websocket.send_json({"type": "hello", "account_id": actor.account_id})
        await presence.beat(core, actor.account_id, _socket_key(subscription), active=True)
        reason = await _serve_events(websocket, core, actor, subscription)
        if reason:
            with contextlib.suppress(Exception):
                await websocket.close(code=WS_SESSION_ENDED, reason=reason)
    finally:
        subscription.close()
        with contextlib.suppress(Exception):
            await presence.gone(core, actor.account_id, _socket_key(subscription))
        if socket_id is not None:
            with contextlib.suppress(Exception):
                await sessions.socket_closed(core, socket_id)


# One event goes to every socket of every account concerned (500 sockets for a conversation of 50
# people, 10 devices each) as the same dict: encoded once, not once per socket. The dict is kept
# with its text, so its id cannot be reused while the entry lives.
_ENCODED: dict[int, tuple[dict[str, Any], str]] = {}
_ENCODED_MAX = 512


def _encoded(payload: dict[str, Any]) -> str:
    hit = _ENCODED.get(id(payload))
    if hit is not None and hit[0] is payload:
        return hit[1]
    text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    if len(_ENCODED) >= _ENCODED_MAX:
        _ENCODED.pop(next(iter(_ENCODED)))
    _ENCODED[id(payload)] = (payload, text)
    return text


def _socket_key(subscription: Subscription) -> str:
    return f"{os.getpid()}-{id(subscription)}"


async def _serve_events(websocket: WebSocket, core: Core, actor: Actor, subscription: Subscription) -> str | None:
    """Pump events until the client leaves (None) or the session ends (the reason)."""

    async def pump_out() -> None:
        while True:
            payload = await subscription.get()
            if subscription.ended.is_set():
                return
            await websocket.send_text(_encoded(payload))

    async def pump_in() -> None:
        key = _socket_key(subscription)
        while True:
            # "ping" every 30 s keeps the socket present; "active" says the user did something.
            text = await websocket.receive_text()
            if text.startswith("{"):
                # WebRTC signalling of a call (issue 17): relayed to one joined member of it.
                from monsisra.api.video import relay
                from monsisra.services.video import Sender

                await relay(core, Sender(account_id=actor.account_id), text, subscription)
                continue
            try:
                await presence.beat(core, actor.account_id, key, active=text == "active")
            except Exception:
                log.warning("presence beat failed", exc_info=True)

    async def ended() -> str:
        await subscription.ended.wait()
        return subscription.end_reason or "session terminée : reconnectez-vous"

    async def watch() -> str:
        # The session's own end (expires_at), and a look at its token now (it may have ended
        # between authentication and subscription) and then periodically, in case a
        # session.ended event was missed (Redis down, a revocation made by another tool).
        recheck = max(core.settings.ws_recheck_seconds, 0.05)
        while True:
            try:
                if subscription.socket_id is not None:
                    alive = await sessions.socket_seen(core, subscription.socket_id, actor.token_id)
                else:
                    alive = actor.token_id is None or await accounts.token_alive(core, actor.token_id)
            except Exception:
                log.warning("session check of a live socket failed; trying again later", exc_info=True)
                alive = True
            if actor.expires_at and actor.expires_at <= utcnow():
                return EXPIRED
            if not alive:
                return "session terminée : reconnectez-vous"
            remaining = (actor.expires_at - utcnow()).total_seconds() if actor.expires_at else recheck
            await asyncio.sleep(min(remaining + 0.01, recheck))

    tasks = [asyncio.create_task(pump_out()), asyncio.create_task(pump_in()), asyncio.create_task(ended()),
             asyncio.create_task(watch())]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, Exception):
                await t
    for t in done:
        if t in tasks[2:] and not t.cancelled() and t.exception() is None:
            subscription.end(t.result())
            return t.result()
    return None


@router.get("/attachments/{attachment_id}/message", tags=["attachments"])
async def attached_message(attachment_id: AttachmentId, core: CoreDep, actor: ActorDep) -> dict[str, Any]:
    """An attached message (``.eml``): its sender, date, subject, text and its own attachments."""
    return await attachments.embedded_message(core, actor, attachment_id)


@router.get("/attachments/{attachment_id}/parts/{index}", tags=["attachments"])
async def attached_message_part(attachment_id: AttachmentId, index: Annotated[int, Path(ge=0, le=1000)],
                                core: CoreDep, actor: ActorDep,
                                disposition: Literal["inline", "attachment"] = "attachment") -> Response:
    """One attachment of an attached message, by its index in ``…/message``."""
    filename, content_type, data = await attachments.embedded_part(core, actor, attachment_id, index)
    return Response(data, media_type=content_type,
                    headers=file_headers(filename, content_type, len(data), disposition))
