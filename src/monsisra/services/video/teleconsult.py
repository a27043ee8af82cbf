"""Teleconsultation with a patient: the professional books it (name, e-mail or mobile, time), the
patient gets a single-use link (e-mail through the relay, or text to copy into an SMS) that needs
no account, waits in a waiting room until admitted, and the link expires after the consultation.

The link's secret is stored hashed; the first browser that opens it is bound to it (a cookie,
hashed too): the same link in another browser is refused.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

import monsisra.services.video.calls as calls
import monsisra.services.video.turn as turn
from monsisra.domain.addresses import normalize_address
from monsisra.domain.clock import as_utc, in_paris, iso, utcnow
from monsisra.domain.mail import mime
from monsisra.domain.text import TextRefused, check_line
from monsisra.services import accounts, audit
from monsisra.services.core import Actor, Core
from monsisra.services.errors import Conflict, Forbidden, Invalid, NotFound
from monsisra.services.messages import new_message_id
from monsisra.store.models import Account
from monsisra.store.video import Call, CallMember, Teleconsultation

log = logging.getLogger(__name__)
NOT_FOUND = "téléconsultation introuvable"
BAD_LINK = "ce lien de téléconsultation n'est pas valide"
EXPIRED = "ce lien de téléconsultation a expiré : demandez un nouveau rendez-vous à votre soignant"
USED = "ce lien de téléconsultation a déjà été ouvert sur un autre appareil : il ne sert qu'une fois"
_PHONE = re.compile(r"^\+?[0-9]{9,15}$")


def _hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _name(raw: str, what: str, limit: int) -> str:
    try:
        value = check_line(raw or "", what).strip()
    except TextRefused as exc:
        raise Invalid(str(exc)) from None
    if not value:
        raise Invalid(f"{what} manquant")
    if len(value) > limit:
        raise Invalid(f"{what} trop long (au plus {limit} caractères)")
    return value


async def create(core: Core, actor: Actor, *, family_name: str, given_names: str, email: str | None,
                 phone: str | None, at: datetime, patient_id: int | None = None) -> dict[str, Any]:
    """Book it: ``{id, patient_link, sent_by_email, sms_text, expires_at}``."""
    family = _name(family_name, "nom de famille", 100)
    given = _name(given_names, "prénoms", 200)
    address = None
    if email:
        address = normalize_address(email)
        if address is None:
            raise Invalid("adresse e-mail du patient mal formée")
    number = None
    if phone:
        number = re.sub(r"[ .\-]", "", phone)
        if not _PHONE.match(number):
            raise Invalid("numéro de téléphone mobile mal formé (ex. 06 12 34 56 78)")
    if at.tzinfo is None:
        raise Invalid("heure du rendez-vous sans fuseau horaire")
    at = as_utc(at)
    now = utcnow()
    if at < now - timedelta(hours=1):
        raise Invalid("l'heure du rendez-vous est déjà passée")
    if at > now + timedelta(days=366):
        raise Invalid("rendez-vous trop lointain (au plus un an)")
    secret = secrets.token_urlsafe(32)
    link = f"{core.settings.base_url}/teleconsultation/{secret}"
    async with core.write() as tx:
        s = tx.session
        if patient_id is not None:
            from monsisra.services import care_team

            if not await care_team.is_member(s, actor.account_id, patient_id):
                raise NotFound("patient introuvable dans vos prises en charge")
        me = await s.get(Account, actor.account_id)
        pro = accounts.display_name(me) if me else actor.username
        tc = Teleconsultation(created_by=actor.account_id, patient_id=patient_id, family_name=family,
                              given_names=given, email=address, phone=number, at=at, token_hash=_hash(secret),
                              expires_at=at + timedelta(hours=max(core.settings.teleconsultation_hours, 1)),
                              created_at=now)
        s.add(tc)
        await s.flush()
        audit.record(s, actor.account_id, "teleconsultation.create", object_type="teleconsultation",
                     object_id=tc.id, patient_id=patient_id, client=actor.client,
                     detail={"email": bool(address), "phone": bool(number)})
        tc_id, expires = tc.id, tc.expires_at
    when = in_paris(at)
    sms = (f"{pro} vous attend en téléconsultation le {when:%d/%m/%Y à %H:%M}. "
           f"Ouvrez ce lien (une seule fois, sur l'appareil de la consultation) : {link}")
    sent = False
    if address and core.mailer is not None:
        text = (f"Bonjour {given} {family.upper()},\n\n{pro} vous a donné rendez-vous en téléconsultation le "
                f"{when:%d/%m/%Y à %H:%M}.\n\nAu moment du rendez-vous, ouvrez ce lien sur l'appareil (ordinateur, "
                f"téléphone) que vous utiliserez ; il ne fonctionne que sur cet appareil et expire après la "
                f"consultation :\n\n{link}\n\nVous pourrez tester votre caméra et votre micro, puis patienter en "
                "salle d'attente jusqu'à ce que votre soignant vous fasse entrer.\n\n-- \nMonSisra\n")
        sender = core.settings.notify_from or f"ne-pas-repondre@{core.settings.domain}"
        data = mime.build(message_id=new_message_id(core.settings.domain), sender=("MonSisra", sender),
                          to=[(f"{given} {family}", address)], cc=[], subject="Votre téléconsultation", text=text,
                          html=None, date=utcnow(), files=[], headers={"Auto-Submitted": "auto-generated"})
        try:
            await core.mailer(sender, [address], data)
            sent = True
        except Exception as exc:
            log.warning("teleconsultation link %s not sent: %s", tc_id, exc)
    return {"id": tc_id, "patient_link": link, "sent_by_email": sent, "sms_text": sms, "expires_at": iso(expires)}


def _view(tc: Teleconsultation) -> dict[str, Any]:
    return {"id": tc.id, "patient": {"family_name": tc.family_name, "given_names": tc.given_names},
            "at": iso(tc.at), "state": tc.state, "waiting": tc.state == "waiting",
            "waiting_since": iso(tc.waiting_since) if tc.waiting_since else None, "call_id": tc.call_id,
            "expires_at": iso(tc.expires_at)}


async def list_mine(core: Core, actor: Actor) -> list[dict[str, Any]]:
    """The actor's teleconsultations still to come or going on, waiting patients first."""
    async with core.read() as s:
        rows = (await s.scalars(sa.select(Teleconsultation).where(
            Teleconsultation.created_by == actor.account_id, Teleconsultation.state != "ended",
            Teleconsultation.expires_at > utcnow()).order_by(Teleconsultation.at).limit(200))).all()
    items = [_view(t) for t in rows]
    items.sort(key=lambda i: (not i["waiting"], i["at"]))
    return items


async def _by_link(s: Any, secret: str, browser: str | None, *, bind: bool) -> tuple[Teleconsultation, str | None]:
    """The teleconsultation of a link opened by this browser; a cookie value to set when it binds now."""
    if not secret or len(secret) > 200:
        raise NotFound(BAD_LINK)
    tc = await s.scalar(sa.select(Teleconsultation).where(Teleconsultation.token_hash == _hash(secret)))
    if tc is None:
        raise NotFound(BAD_LINK)
    if tc.state == "ended" or as_utc(tc.expires_at) <= utcnow():
        raise NotFound(EXPIRED)
    new_cookie = None
    if tc.browser_hash is None:
        if not bind:
            raise Forbidden(USED)
        new_cookie = secrets.token_urlsafe(32)
        tc.browser_hash = _hash(new_cookie)
    elif not browser or _hash(browser) != tc.browser_hash:
        raise Forbidden(USED)
    return tc, new_cookie


async def open_link(core: Core, secret: str, browser: str | None) -> tuple[dict[str, Any], str | None]:
    """The patient opens the link: (what the page shows, a cookie to set the first time)."""
    async with core.write() as tx:
        tc, cookie = await _by_link(tx.session, secret, browser, bind=True)
        pro = await tx.session.get(Account, tc.created_by)
        if cookie:
            audit.record(tx.session, None, "teleconsultation.link.open", object_type="teleconsultation",
                         object_id=tc.id, patient_id=tc.patient_id)
        view = {**_view(tc), "professional": accounts.display_name(pro) if pro else ""}
    return view, cookie


async def patient_of(core: Core, secret: str, browser: str | None) -> int:
    """The teleconsultation id the link and the bound browser stand for (signalling, live socket)."""
    async with core.read() as s:
        tc, _ = await _by_link(s, secret, browser, bind=False)
        return tc.id


async def wait(core: Core, secret: str, browser: str | None) -> dict[str, Any]:
    """The patient enters the waiting room: the professional's pages see it live."""
    async with core.write() as tx:
        tc, _ = await _by_link(tx.session, secret, browser, bind=False)
        if tc.state == "booked":
            tc.state, tc.waiting_since = "waiting", utcnow()
        tx.emit("teleconsultation.waiting", [tc.created_by], teleconsultation=_view(tc))
        result = _view(tc)
        if tc.state == "admitted" and tc.call_id:
            result["call"] = await _admitted_view(core, tx.session, tc)
    return result


async def _admitted_view(core: Core, s: Any, tc: Teleconsultation) -> dict[str, Any] | None:
    member = await s.scalar(sa.select(CallMember).where(CallMember.call_id == tc.call_id, CallMember.is_patient))
    if member is None:
        return None
    return {"call_id": tc.call_id, "peer": member.peer, "ice_servers": turn.ice_servers(core.settings, tc.call_id)}


async def admit(core: Core, actor: Actor, teleconsultation_id: int) -> dict[str, Any]:
    """Let the waiting patient in: the call starts, the professional joins it at ``url``."""
    started = await calls.start_call(core, actor, "teleconsultation", teleconsultation_id)
    async with core.write() as tx:
        s = tx.session
        tc = await s.get(Teleconsultation, teleconsultation_id)
        if tc is None or tc.created_by != actor.account_id:
            raise NotFound(NOT_FOUND)
        if tc.state not in ("waiting", "admitted"):
            raise Conflict("le patient n'est pas en salle d'attente")
        member = await s.scalar(sa.select(CallMember).where(CallMember.call_id == started["id"],
                                                           CallMember.is_patient))
        if member is None:
            member = CallMember(call_id=started["id"], account_id=None, is_patient=True,
                                name=f"{tc.given_names} {tc.family_name.upper()}"[:300], peer="")
            s.add(member)
        member.peer, member.joined_at, member.left_at = secrets.token_urlsafe(24), utcnow(), None
        tc.state, tc.call_id = "admitted", started["id"]
        await s.flush()
        audit.record(s, actor.account_id, "teleconsultation.admit", object_type="teleconsultation", object_id=tc.id,
                     patient_id=tc.patient_id, client=actor.client)
        tx.emit("call.admitted", [calls.patient_bus_id(tc.id)], **(await _admitted_view(core, s, tc) or {}))
    return {"id": teleconsultation_id, "call_id": started["id"], "url": started["url"]}


async def _ended(tx: Any, call: Call) -> None:
    if call.context != "teleconsultation":
        return
    tc = await tx.session.get(Teleconsultation, call.context_id)
    if tc is not None:
        tc.state = "ended"  # the link is dead from now on
        tx.emit("teleconsultation.ended", [tc.created_by], teleconsultation=_view(tc))


calls.ENDED_HOOKS.append(_ended)
