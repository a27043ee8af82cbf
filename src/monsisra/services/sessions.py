"""What an account is logged in with, and its revocation: web sessions and API tokens (the
``tokens`` rows), the live sockets each holds (whichever process), and the browsers it remembers
(device cookies). Revoking a session closes its live sockets at once, on every process.

Ids of the API are typed strings: ``token-12``, ``socket-7``, ``device-3``. No secret ever leaves:
tokens and device ids are stored as SHA-256 only.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from monsisra.domain.clock import as_utc, iso, utcnow
from monsisra.events import SESSION_ENDED
from monsisra.services import accounts, audit
from monsisra.services.core import Actor, Core
from monsisra.services.errors import NotFound
from monsisra.store.accounts import Device, LiveSocket, PasswordReset
from monsisra.store.models import Account, Token

KIND_LABELS = {"web": "Navigateur", "api": "Jeton d'API", "socket": "Connexion temps réel",
               "device": "Appareil mémorisé"}


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _alive_since(core: Core) -> datetime:
    # A socket refreshes seen_at at each session check; three missed checks: its process is gone.
    return utcnow() - timedelta(seconds=max(core.settings.ws_recheck_seconds, 1) * 3 + 5)


async def list_sessions(core: Core, actor: Actor) -> dict[str, Any]:
    """Every live session of the account (current one flagged), its live sockets, and the
    browsers it remembers; newest first."""
    now = utcnow()
    async with core.read() as s:
        tokens = (await s.execute(
            sa.select(Token.id, Token.kind, Token.client, Token.user_agent, Token.created_at, Token.last_used_at,
                      Token.expires_at)
            .where(Token.account_id == actor.account_id, Token.revoked_at.is_(None), Token.expires_at > now)
            .order_by(Token.id.desc()))).all()
        sockets = (await s.execute(
            sa.select(LiveSocket).where(LiveSocket.account_id == actor.account_id,
                                        LiveSocket.seen_at > _alive_since(core)).order_by(LiveSocket.id.desc())
        )).scalars().all()
        devices = (await s.execute(
            sa.select(Device).where(Device.account_id == actor.account_id, Device.revoked_at.is_(None),
                                    Device.expires_at > now).order_by(Device.id.desc()))).scalars().all()
    live = {t.id for t in tokens}
    items: list[dict[str, Any]] = []
    for t in tokens:
        items.append({"id": f"token-{t.id}", "kind": t.kind, "label": KIND_LABELS.get(t.kind, t.kind),
                      "client": t.client, "user_agent": t.user_agent, "created_at": iso(t.created_at),
                      "last_used_at": iso(t.last_used_at or t.created_at), "expires_at": iso(t.expires_at),
                      "current": t.id == actor.token_id, "session": None,
                      "sockets": sum(1 for k in sockets if k.token_id == t.id)})
    for k in sockets:
        if k.token_id is not None and k.token_id not in live:
            continue  # its session just ended; the socket is closing
        items.append({"id": f"socket-{k.id}", "kind": "socket", "label": KIND_LABELS["socket"], "client": k.client,
                      "user_agent": k.user_agent, "created_at": iso(k.opened_at), "last_used_at": iso(k.seen_at),
                      "expires_at": None, "current": False,
                      "session": f"token-{k.token_id}" if k.token_id else None, "sockets": 0})
    for d in devices:
        items.append({"id": f"device-{d.id}", "kind": "device", "label": KIND_LABELS["device"], "client": d.client,
                      "user_agent": d.user_agent, "created_at": iso(d.created_at),
                      "last_used_at": iso(d.last_used_at or d.created_at), "expires_at": iso(d.expires_at),
                      "current": False, "session": None, "sockets": 0})
    return {"items": items}


def _parse(session_id: str) -> tuple[str, int]:
    kind, _, number = (session_id or "").partition("-")
    if kind not in ("token", "socket", "device") or not number.isdigit() or len(number) > 10 \
            or not 0 < int(number) < 2**31:
        raise NotFound("session introuvable")
    return kind, int(number)


async def revoke(core: Core, actor: Actor, session_id: str) -> str:
    """End one session (its live sockets close), close one live socket, or forget one browser.
    Returns the kind revoked; :class:`NotFound` for anything not the account's."""
    kind, number = _parse(session_id)
    async with core.write() as tx:
        s = tx.session
        if kind == "token":
            found = await s.scalar(sa.select(Token.id).where(Token.id == number, Token.account_id == actor.account_id,
                                                             Token.revoked_at.is_(None)))
            if found is None:
                raise NotFound("session introuvable")
            reason = ("session terminée : déconnexion" if number == actor.token_id
                      else "session terminée : révoquée depuis la liste des sessions")
            await accounts.end_sessions_in(tx, actor.account_id, [number], reason)
            audit.record(s, actor.account_id, "session.revoke", object_type="token", object_id=number,
                         client=actor.client)
        elif kind == "socket":
            found = await s.scalar(sa.select(LiveSocket.id).where(LiveSocket.id == number,
                                                                  LiveSocket.account_id == actor.account_id))
            if found is None:
                raise NotFound("session introuvable")
            await s.execute(sa.delete(LiveSocket).where(LiveSocket.id == number))
            tx.emit(SESSION_ENDED, [actor.account_id], token_ids=[], socket_ids=[number],
                    reason="connexion temps réel fermée depuis la liste des sessions")
            audit.record(s, actor.account_id, "socket.close", object_type="socket", object_id=number,
                         client=actor.client)
        else:
            done = await s.execute(sa.update(Device).where(Device.id == number, Device.account_id == actor.account_id,
                                                           Device.revoked_at.is_(None)).values(revoked_at=utcnow()))
            if not done.rowcount:
                raise NotFound("session introuvable")
            audit.record(s, actor.account_id, "device.revoke", object_type="device", object_id=number,
                         client=actor.client)
    return kind


# --- remembered browsers (device cookies) ---------------------------------------------------------


async def remember_device(core: Core, account_id: int, device_id: str, client: str | None,
                          user_agent: str | None) -> None:
    """A browser logged in to the account with this device id: known (again) until expiry."""
    now = utcnow()
    expires = now + timedelta(days=core.settings.device_cookie_days)
    digest = _digest(device_id)
    async with core.write() as tx:
        s = tx.session
        row = await s.scalar(sa.select(Device).where(Device.device_hash == digest))
        if row is None:
            s.add(Device(account_id=account_id, device_hash=digest, created_at=now, last_used_at=now,
                         expires_at=expires, client=(client or "")[:64] or None, user_agent=_ua(user_agent)))
        elif row.account_id == account_id and row.revoked_at is None:
            row.last_used_at, row.expires_at = now, expires
            row.client, row.user_agent = (client or "")[:64] or None, _ua(user_agent)


async def device_trusted(core: Core, username: str, device_id: str) -> bool:
    """Whether this device id was given to this login's browser and is neither forgotten nor expired."""
    async with core.read() as s:
        row = (await s.execute(
            sa.select(Device.expires_at, Device.revoked_at).join(Account, Account.id == Device.account_id)
            .where(Device.device_hash == _digest(device_id), Account.username == username.strip()))).first()
    return row is not None and row.revoked_at is None and as_utc(row.expires_at) > utcnow()


def _ua(value: str | None) -> str | None:
    return (value or "")[:255] or None


# --- live sockets ---------------------------------------------------------------------------------


async def socket_opened(core: Core, actor: Actor, client: str | None, user_agent: str | None) -> int:
    async with core.write() as tx:
        row = LiveSocket(account_id=actor.account_id, token_id=actor.token_id, client=(client or "")[:64] or None,
                         user_agent=_ua(user_agent))
        tx.session.add(row)
        await tx.session.flush()
        return row.id


async def socket_seen(core: Core, socket_id: int, token_id: int | None) -> bool:
    """The periodic check of a live socket: still listed, and its session still alive?"""
    async with core.write() as tx:
        listed = (await tx.session.execute(sa.update(LiveSocket).where(LiveSocket.id == socket_id)
                                           .values(seen_at=utcnow()))).rowcount
    if not listed:
        return False
    return token_id is None or await accounts.token_alive(core, token_id)


async def socket_closed(core: Core, socket_id: int) -> None:
    async with core.write() as tx:
        await tx.session.execute(sa.delete(LiveSocket).where(LiveSocket.id == socket_id))


async def purge(core: Core) -> int:
    """Hourly: sockets of processes that died, devices long expired, used or late reset links."""
    now = utcnow()
    async with core.write() as tx:
        s = tx.session
        n = (await s.execute(sa.delete(LiveSocket).where(LiveSocket.seen_at < _alive_since(core)))).rowcount
        n += (await s.execute(sa.delete(Device).where(Device.expires_at < now - timedelta(days=7)))).rowcount
        n += (await s.execute(sa.delete(PasswordReset).where(PasswordReset.expires_at < now - timedelta(days=1))
                              )).rowcount
    return n
