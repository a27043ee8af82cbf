"""Notifications outside the tab: when new messages arrive for a person with no live socket,
tell them by e-mail (the card's notification address, else the account's), SMS (the card's
notification phone, through the HTTP gateway) and Web Push (subscribed browsers and phones).

No patient data and no subject ever leave: only « Vous avez 2 nouveaux messages sur MonSisra ».
Messages are batched: a worker pass (:func:`run_pass`) counts what arrived since the last pass
and each channel speaks at most once per ``notify_interval_seconds`` (15 minutes), outside the
person's quiet hours; what waits is announced in the next allowed notification.
"""

from __future__ import annotations

import email.policy
import email.utils
import json
import logging
import re
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from email.message import EmailMessage
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from monsisra.config import Settings
from monsisra.domain.addresses import normalize_address
from monsisra.domain.clock import as_utc, utcnow
from monsisra.domain.model import Access, Role
from monsisra.services import audit
from monsisra.services.core import Actor, Core
from monsisra.services.errors import Invalid
from monsisra.store.accounts import LiveSocket
from monsisra.store.db import insert_ignoring_duplicates
from monsisra.store.directory import DirProfile
from monsisra.store.files import private_dir
from monsisra.store.models import Account, Delivery, MailboxAccess
from monsisra.store.reach import NotifyPrefs, NotifyState, PushSubscription

log = logging.getLogger(__name__)
CHANNELS = ("email", "sms", "push")
DEFAULTS = {"email": True, "sms": False, "push": True}
SCAN_BATCH = 5000
_HHMM = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])$")


def announcement(n: int) -> str:
    return "Vous avez 1 nouveau message sur MonSisra" if n == 1 else f"Vous avez {n} nouveaux messages sur MonSisra"


# --- preferences ----------------------------------------------------------------------------


@dataclass
class Prefs:
    email: bool = True
    sms: bool = False
    push: bool = True
    quiet_start: str | None = None
    quiet_end: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"email": self.email, "sms": self.sms, "push": self.push, "quiet_start": self.quiet_start,
                "quiet_end": self.quiet_end}


def _prefs_of(row: NotifyPrefs | None) -> Prefs:
    if row is None:
        return Prefs()
    return Prefs(row.email, row.sms, row.push, row.quiet_start, row.quiet_end)


async def get_prefs(core: Core, actor: Actor) -> dict[str, Any]:
    """The account's preferences, with where each channel would reach it (masked)."""
    async with core.read() as s:
        prefs = _prefs_of(await s.get(NotifyPrefs, actor.account_id))
        contact = (await s.execute(_contacts_query([actor.account_id]))).first()
        subs = await s.scalar(sa.select(sa.func.count()).select_from(PushSubscription)
                              .where(PushSubscription.account_id == actor.account_id))
    email_to, phone = _contact(contact) if contact else (None, None)
    return {**prefs.as_dict(), "email_address": email_to, "phone": phone, "push_subscriptions": subs or 0}


def _check_hhmm(value: str | None, label: str) -> str | None:
    value = (value or "").strip()
    if not value:
        return None
    if not _HHMM.match(value):
        raise Invalid(f"{label} : heure attendue au format HH:MM")
    return value


async def set_prefs(core: Core, actor: Actor, changes: dict[str, Any]) -> dict[str, Any]:
    """Change some of ``email sms push quiet_start quiet_end``; quiet hours go in pairs."""
    async with core.write() as tx:
        s = tx.session
        row = await s.get(NotifyPrefs, actor.account_id)
        if row is None:
            row = NotifyPrefs(account_id=actor.account_id, **DEFAULTS)
            s.add(row)
        for channel in CHANNELS:
            if changes.get(channel) is not None:
                setattr(row, channel, bool(changes[channel]))
        if "quiet_start" in changes or "quiet_end" in changes:
            start = _check_hhmm(changes.get("quiet_start"), "début des heures calmes")
            end = _check_hhmm(changes.get("quiet_end"), "fin des heures calmes")
            if (start is None) != (end is None) or (start is not None and start == end):
                raise Invalid("heures calmes : indiquez un début et une fin différents, ou aucun des deux")
            row.quiet_start, row.quiet_end = start, end
        row.updated_at = utcnow()
        audit.record(s, actor.account_id, "notifications.prefs", object_type="account", object_id=actor.account_id,
                     client=actor.client, detail=_prefs_of(row).as_dict())
    return await get_prefs(core, actor)


def in_quiet_hours(prefs: Prefs, now: datetime, tz: str) -> bool:
    if not prefs.quiet_start or not prefs.quiet_end:
        return False
    local = as_utc(now).astimezone(ZoneInfo(tz)).time()
    start, end = (time(int(v[:2]), int(v[3:])) for v in (prefs.quiet_start, prefs.quiet_end))
    return start <= local < end if start < end else local >= start or local < end


# --- Web Push subscriptions -----------------------------------------------------------------


def vapid_key_path(settings: Settings):
    """The VAPID private key (PEM, owner-only) in the data dir, generated on first use."""
    private_dir(settings.data_dir)
    path = settings.data_dir / "vapid_private.pem"
    if not path.exists():
        from py_vapid import Vapid01

        vapid = Vapid01()
        vapid.generate_keys()
        tmp = path.with_suffix(".tmp")
        vapid.save_key(str(tmp))
        tmp.chmod(0o600)
        tmp.replace(path)
    return path


def vapid_public_key(settings: Settings) -> str:
    """The application server key browsers subscribe with (uncompressed point, base64url)."""
    import base64

    from cryptography.hazmat.primitives import serialization
    from py_vapid import Vapid01

    vapid = Vapid01.from_file(str(vapid_key_path(settings)))
    raw = vapid.public_key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


_B64URL = re.compile(r"^[A-Za-z0-9_\-]+=*$")


async def subscribe_push(core: Core, actor: Actor, endpoint: str, p256dh: str, auth: str,
                         user_agent: str | None = None) -> dict[str, Any]:
    """Record a browser's push subscription (the same endpoint again: updated, now this account's)."""
    endpoint = (endpoint or "").strip()
    if not re.match(r"^https?://[^\s/]+/\S*$", endpoint) or len(endpoint) > 1000:
        raise Invalid("abonnement : adresse (endpoint) invalide")
    if not _B64URL.match(p256dh or "") or not 80 <= len(p256dh) <= 100:
        raise Invalid("abonnement : clé p256dh invalide")
    if not _B64URL.match(auth or "") or not 16 <= len(auth) <= 30:
        raise Invalid("abonnement : secret auth invalide")
    async with core.write() as tx:
        s = tx.session
        row = await s.scalar(sa.select(PushSubscription).where(PushSubscription.endpoint == endpoint))
        if row is None:
            row = PushSubscription(account_id=actor.account_id, endpoint=endpoint, p256dh=p256dh, auth=auth,
                                   user_agent=(user_agent or "")[:255] or None)
            s.add(row)
        else:
            row.account_id, row.p256dh, row.auth = actor.account_id, p256dh, auth
        await s.flush()
        audit.record(s, actor.account_id, "notifications.push.subscribe", object_type="push_subscription",
                     object_id=row.id, client=actor.client)
        return {"id": row.id, "endpoint": endpoint}


async def unsubscribe_push(core: Core, actor: Actor, endpoint: str) -> bool:
    async with core.write() as tx:
        n = (await tx.session.execute(sa.delete(PushSubscription).where(
            PushSubscription.endpoint == endpoint, PushSubscription.account_id == actor.account_id))).rowcount
    return bool(n)


# --- the worker pass ------------------------------------------------------------------------


def _contacts_query(account_ids: list[int]) -> sa.Select:
    return (sa.select(Account.id, Account.email, Account.phone, DirProfile.notification_email,
                      DirProfile.notification_phone)
            .outerjoin(DirProfile, DirProfile.account_id == Account.id).where(Account.id.in_(account_ids)))


def _contact(row: Any) -> tuple[str | None, str | None]:
    address = normalize_address(row.notification_email or "") or normalize_address(row.email or "")
    phone = re.sub(r"[\s.\-]", "", row.notification_phone or row.phone or "") or None
    return address, phone


@dataclass
class Due:
    account_id: int
    channel: str
    count: int
    target: Any


async def _scan(s: Any, core: Core, state0: NotifyState, now: datetime) -> dict[int, int]:
    """New received deliveries since the cursor, per account (owners and members) not live now."""
    ids = (await s.execute(sa.select(Delivery.id).where(Delivery.id > state0.cursor).order_by(Delivery.id)
                           .limit(SCAN_BATCH))).scalars().all()
    if not ids:
        return {}
    low, high = state0.cursor, ids[-1]
    state0.cursor = high
    rows = (await s.execute(
        sa.select(MailboxAccess.account_id, sa.func.count())
        .select_from(Delivery).join(MailboxAccess, MailboxAccess.mailbox_id == Delivery.mailbox_id)
        .join(Account, Account.id == MailboxAccess.account_id)
        .where(Delivery.id > low, Delivery.id <= high, Delivery.role == Role.IN, Delivery.deleted.is_(False),
               Delivery.read.is_(False), MailboxAccess.access.in_([Access.OWNER, Access.MEMBER]),
               Account.active.is_(True))
        .group_by(MailboxAccess.account_id))).all()
    return {account_id: n for account_id, n in rows}


async def _live_accounts(s: Any, core: Core, now: datetime) -> set[int]:
    since = now - timedelta(seconds=max(core.settings.ws_recheck_seconds, 1) * 3 + 5)
    return set((await s.execute(sa.select(LiveSocket.account_id).where(LiveSocket.seen_at > since)
                                .distinct())).scalars().all())


async def _plan(core: Core, now: datetime) -> list[Due]:
    """One transaction: scan, add to the pending counts, take what is due (marked as sent)."""
    interval = timedelta(seconds=core.settings.notify_interval_seconds)
    due: list[Due] = []
    async with core.write() as tx:
        s = tx.session
        state0 = await s.scalar(sa.select(NotifyState).where(NotifyState.account_id == 0).with_for_update())
        if state0 is None:
            # First pass ever: what was there before is not news.
            # Processes starting together on a new database all find no row: the first insert wins.
            top = await s.scalar(sa.select(sa.func.max(Delivery.id))) or 0
            await s.execute(insert_ignoring_duplicates(NotifyState.__table__, s.bind.dialect.name).values(
                account_id=0, cursor=top, pending_email=0, pending_sms=0, pending_push=0))
            return []
        new = await _scan(s, core, state0, now)
        live = await _live_accounts(s, core, now)
        states = {st.account_id: st for st in (await s.scalars(sa.select(NotifyState).where(
            sa.or_(NotifyState.account_id.in_(list(new)), NotifyState.pending_email > 0,
                   NotifyState.pending_sms > 0, NotifyState.pending_push > 0),
            NotifyState.account_id != 0))).all()}
        for account_id, n in new.items():
            if account_id in live:
                continue
            st = states.get(account_id)
            if st is None:
                st = NotifyState(account_id=account_id, cursor=0, pending_email=0, pending_sms=0, pending_push=0)
                s.add(st)
                states[account_id] = st
            st.pending_email += n
            st.pending_sms += n
            st.pending_push += n
        waiting = [a for a, st in states.items() if st.pending_email or st.pending_sms or st.pending_push]
        if not waiting:
            return []
        prefs = {p.account_id: _prefs_of(p) for p in (await s.scalars(
            sa.select(NotifyPrefs).where(NotifyPrefs.account_id.in_(waiting)))).all()}
        contacts = {r.id: _contact(r) for r in (await s.execute(_contacts_query(waiting))).all()}
        subs: dict[int, list[dict[str, Any]]] = {}
        for sub in (await s.scalars(sa.select(PushSubscription).where(PushSubscription.account_id.in_(waiting)))).all():
            subs.setdefault(sub.account_id, []).append(
                {"id": sub.id, "endpoint": sub.endpoint, "keys": {"p256dh": sub.p256dh, "auth": sub.auth}})
        for account_id in waiting:
            st = states[account_id]
            if account_id in live:  # they are here: they see their messages
                st.pending_email = st.pending_sms = st.pending_push = 0
                continue
            pref = prefs.get(account_id, Prefs())
            address, phone = contacts.get(account_id, (None, None))
            quiet = in_quiet_hours(pref, now, core.settings.notify_timezone)
            relay = core.settings.notify_relay or core.settings.smtp_relay
            targets = {"email": address if relay else None, "sms": phone if core.settings.sms_gateway_url else None,
                       "push": subs.get(account_id)}
            for channel in CHANNELS:
                pending = getattr(st, f"pending_{channel}")
                if not pending:
                    continue
                if not getattr(pref, channel) or not targets[channel]:
                    setattr(st, f"pending_{channel}", 0)
                    continue
                last = getattr(st, f"last_{channel}_at")
                if quiet or (last is not None and now - as_utc(last) < interval):
                    continue
                due.append(Due(account_id, channel, pending, targets[channel]))
                setattr(st, f"pending_{channel}", 0)
                setattr(st, f"last_{channel}_at", now)
    return due


def notification_mail(core: Core, address: str, n: int, now: datetime) -> bytes:
    text = announcement(n)
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = _sender(core)
    msg["To"] = address
    msg["Subject"] = text
    msg["Date"] = email.utils.format_datetime(as_utc(now))
    msg["Message-ID"] = email.utils.make_msgid(domain=core.settings.domain)
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(f"Bonjour,\n\n{text}.\n\nPour les lire : {core.settings.base_url}/boite\n\n"
                    "Ce courriel ne contient aucune donnée de santé. Vous pouvez choisir vos notifications "
                    f"dans MonSisra : {core.settings.base_url}/parametres/notifications\n")
    return msg.as_bytes()


def _sender(core: Core) -> str:
    return core.settings.notify_from or f"ne-pas-repondre@{core.settings.domain}"


async def _deliver(core: Core, item: Due, now: datetime) -> int:
    text = announcement(item.count)
    if item.channel == "email":
        if core.mailer is None:
            return 0
        await core.mailer(_sender(core), [item.target], notification_mail(core, item.target, item.count, now))
        return 1
    if item.channel == "sms":
        sender = core.senders.get("sms")
        if sender is None:
            return 0
        await sender(item.target, text)
        return 1
    sender = core.senders.get("push")
    if sender is None:
        return 0
    payload = json.dumps({"title": "MonSisra", "body": text, "url": "/boite", "count": item.count}).encode()
    sent, gone = 0, []
    for sub in item.target:
        try:
            status = await sender(sub, payload)
        except Exception as exc:
            log.warning("web push to subscription %s failed: %s", sub["id"], exc)
            continue
        if status in (404, 410):
            gone.append(sub["id"])
        elif status is not None and status < 300:
            sent += 1
    if gone:
        async with core.write() as tx:
            await tx.session.execute(sa.delete(PushSubscription).where(PushSubscription.id.in_(gone)))
    return sent


async def run_pass(core: Core, now: datetime | None = None) -> dict[str, int]:
    """One pass of the notification worker; returns how many notifications each channel sent."""
    now = now or utcnow()
    sent = dict.fromkeys(CHANNELS, 0)
    for item in await _plan(core, now):
        try:
            sent[item.channel] += await _deliver(core, item, now)
        except Exception as exc:
            log.warning("notification %s for account %s not sent: %s", item.channel, item.account_id, exc)
    return sent
