"""Audit log: every access to patient data and every security-relevant act is written here.

Append-only and tamper-evident: entries are chained by hash when their transaction commits
(:mod:`store.audit`, :mod:`domain.audit_chain`). Logins and their failures, every read of a
message, sends, delegation changes and everything done in someone else's mailbox are recorded;
an account reads who acted in its mailboxes (« Journal d'accès »), administrators search the
whole log, and :func:`verify` walks the chain.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from monsisra.domain import audit_chain
from monsisra.domain.clock import as_utc, iso, utcnow
from monsisra.domain.model import Access
from monsisra.services.errors import Forbidden, Invalid
from monsisra.store import audit as chain
from monsisra.store.audit import AuditHead
from monsisra.store.models import Account, AuditEvent, Mailbox, MailboxAccess

# French labels of the actions (pages, API ``label``).
ACTION_LABELS = {
    "login.success": "Connexion",
    "login.failure": "Échec de connexion",
    "login.throttled": "Connexion bloquée (trop de tentatives)",
    "logout": "Déconnexion",
    "message.read": "Lecture d'un message",
    "patient.read": "Lecture d'un message lié à un patient",
    "message.send": "Envoi d'un message",
    "patient.message": "Envoi d'un message lié à un patient",
    "patient.message.smtp": "Réception d'un message lié à un patient",
    "message.draft": "Brouillon enregistré",
    "message.flags": "Classement d'un message",
    "attachment.read": "Ouverture d'une pièce jointe",
    "delegation.grant": "Délégation accordée",
    "delegation.update": "Délégation modifiée",
    "delegation.revoke": "Délégation retirée",
    "access.refused": "Accès refusé (accès retiré)",
    "mailbox.create": "Boîte aux lettres créée",
    "mailbox.grant": "Accès à une boîte donné",
    "mailbox.revoke": "Accès à une boîte retiré",
    "account.create": "Compte créé",
    "account.update": "Compte modifié",
    "account.activate": "Compte réactivé",
    "account.deactivate": "Compte désactivé",
    "account.password": "Mot de passe défini par un administrateur",
    "password.change": "Mot de passe changé",
    "password.change.failure": "Échec du changement de mot de passe",
    "password.reset.request": "Lien de réinitialisation demandé",
    "password.reset.refused": "Lien de réinitialisation refusé",
    "password.reset": "Mot de passe réinitialisé",
    "session.revoke": "Session révoquée",
    "device.revoke": "Appareil oublié",
    "socket.close": "Connexion temps réel fermée",
    "trust.add": "Domaine ajouté à l'espace de confiance",
    "trust.remove": "Domaine retiré de l'espace de confiance",
    "patient.register": "Patient enregistré",
    "patient.view": "Consultation d'une fiche patient",
    "patient.search": "Recherche de patients",
    "patient.care_team.join": "Déclaration dans l'équipe de soins d'un patient",
    "patient.care_team.leave": "Retrait de l'équipe de soins d'un patient",
    "patient.care_team.read": "Consultation de l'équipe de soins d'un patient",
    "patient.record.read": "Consultation du dossier partagé d'un patient",
    "patient.record.document": "Ouverture d'un document du dossier partagé",
    "patient.record.refused": "Accès refusé au dossier partagé (hors équipe de soins)",
    "support.create": "Demande d'appui envoyée",
    "support.take": "Demande d'appui prise en charge",
    "support.close": "Demande d'appui clôturée",
}
# What an account sees of its own account in its access log (besides its mailboxes).
OWN_ACTIONS = ("login.success", "login.failure", "login.throttled", "logout", "password.change",
               "password.change.failure", "password.reset.request", "password.reset", "password.reset.refused",
               "account.password", "session.revoke", "device.revoke")
PAGE_MAX = 200
_SIZES = {"action": 40, "object_type": 30, "object_id": 64, "client": 64}


def entry(account_id: int | None, action: str, *, object_type: str = "", object_id: object = "",
          patient_id: int | None = None, mailbox_id: int | None = None, client: str | None = None,
          detail: dict[str, Any] | None = None) -> dict[str, Any]:
    """One entry as a row (bounded to its columns' sizes), ready for :func:`add`."""
    return {"at": utcnow(), "account_id": account_id, "action": action[:_SIZES["action"]],
            "object_type": object_type[:_SIZES["object_type"]], "object_id": str(object_id)[:_SIZES["object_id"]],
            "patient_id": patient_id, "mailbox_id": mailbox_id,
            "client": client[:_SIZES["client"]] if client else None, "detail": detail or None}


def add(session: Any, row: dict[str, Any]) -> None:
    """Put an entry built by :func:`entry` on ``session``'s transaction."""
    chain.add(session, row)


def record(
    session: Any,
    account_id: int | None,
    action: str,
    *,
    object_type: str = "",
    object_id: object = "",
    patient_id: int | None = None,
    mailbox_id: int | None = None,
    client: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """Add an audit entry to the caller's transaction (it commits, or vanishes, with it)."""
    chain.add(session, entry(account_id, action, object_type=object_type, object_id=object_id,
                             patient_id=patient_id, mailbox_id=mailbox_id, client=client, detail=detail))


# --- reading ------------------------------------------------------------------------------------


def _cursor(value: str | None) -> int | None:
    if not value:
        return None
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode()
        if len(value) > 40 or not raw.startswith("a") or not raw[1:].isdigit() or int(raw[1:]) > 2**63 - 1:
            raise ValueError
        return int(raw[1:])
    except (ValueError, UnicodeDecodeError):
        raise Invalid("curseur de pagination invalide") from None


def _next_cursor(rows: list[Any], limit: int) -> str | None:
    if len(rows) <= limit:
        return None
    return base64.urlsafe_b64encode(f"a{rows[limit - 1].id}".encode()).decode().rstrip("=")


def _who(row: Any) -> dict[str, Any] | None:
    if row.account_id is None:
        return None
    name = " ".join(p for p in (row.civility, row.first_name, (row.last_name or "").upper()) if p)
    return {"username": row.username, "name": name or row.username}


_ROW = (AuditEvent.id, AuditEvent.at, AuditEvent.account_id, AuditEvent.action, AuditEvent.object_type,
        AuditEvent.object_id, AuditEvent.patient_id, AuditEvent.mailbox_id, AuditEvent.client, AuditEvent.detail,
        AuditEvent.seq, AuditEvent.hash, Account.username, Account.civility, Account.first_name, Account.last_name,
        Mailbox.address.label("mailbox_address"))


def _select() -> sa.Select:
    return (sa.select(*_ROW).select_from(AuditEvent)
            .outerjoin(Account, Account.id == AuditEvent.account_id)
            .outerjoin(Mailbox, Mailbox.id == AuditEvent.mailbox_id))


def _item(row: Any, me: int | None = None) -> dict[str, Any]:
    detail = row.detail or {}
    return {"id": row.id, "at": iso(row.at), "action": row.action, "label": ACTION_LABELS.get(row.action, row.action),
            "actor": _who(row), "self": me is not None and row.account_id == me,
            "mailbox": row.mailbox_address, "object_type": row.object_type or None,
            "object_id": row.object_id or None, "client": row.client,
            "on_behalf_of": detail.get("on_behalf_of"), "detail": detail}


async def access_log(core: Any, actor: Any, *, cursor: str | None = None, limit: int = 50,
                     others_only: bool = False) -> dict[str, Any]:
    """Who acted in the mailboxes this account owns, and the logins and password events of the
    account itself, newest first. ``others_only``: leave out what the account did itself."""
    limit = max(1, min(limit, PAGE_MAX))
    after = _cursor(cursor)
    async with core.read() as s:
        owned = list(await s.scalars(sa.select(MailboxAccess.mailbox_id).where(
            MailboxAccess.account_id == actor.account_id, MailboxAccess.access == Access.OWNER)))
        about_me = sa.and_(AuditEvent.account_id == actor.account_id, AuditEvent.action.in_(OWN_ACTIONS))
        wanted = sa.or_(AuditEvent.mailbox_id.in_(owned), about_me) if owned else about_me
        stmt = _select().where(wanted)
        if others_only:
            stmt = stmt.where(sa.or_(AuditEvent.account_id.is_(None), AuditEvent.account_id != actor.account_id))
        if after is not None:
            stmt = stmt.where(AuditEvent.id < after)
        rows = (await s.execute(stmt.order_by(AuditEvent.id.desc()).limit(limit + 1))).all()
    items = [_item(r, actor.account_id) for r in rows[:limit]]
    for item in items:
        item["detail"] = {k: v for k, v in item["detail"].items() if k in ("on_behalf_of", "flags", "rights",
                                                                            "access", "username", "kind", "source")}
    return {"items": items, "next_cursor": _next_cursor(rows, limit)}


@dataclass
class Search:
    """Filters of the administrators' search (all optional)."""

    account: str | None = None  # username
    action: str | None = None  # exact, or a prefix ending with "." (« login. »)
    mailbox: str | None = None  # address
    patient_id: int | None = None
    client: str | None = None
    object_type: str | None = None
    object_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None


async def search(core: Any, actor: Any, filters: Search, *, cursor: str | None = None,
                 limit: int = 50) -> dict[str, Any]:
    """The whole log, filtered, newest first (administrators only)."""
    if not actor.is_admin:
        raise Forbidden("réservé aux administrateurs de la plateforme")
    limit = max(1, min(limit, PAGE_MAX))
    after = _cursor(cursor)
    stmt = _select()
    async with core.read() as s:
        if filters.account:
            account_id = await s.scalar(sa.select(Account.id).where(Account.username == filters.account.strip()))
            stmt = stmt.where(AuditEvent.account_id == (account_id or -1))
        if filters.mailbox:
            mailbox_id = await s.scalar(sa.select(Mailbox.id).where(Mailbox.address == filters.mailbox.strip().lower()))
            stmt = stmt.where(AuditEvent.mailbox_id == (mailbox_id or -1))
        if filters.action:
            action = filters.action.strip()
            stmt = stmt.where(AuditEvent.action.startswith(action, autoescape=True) if action.endswith(".")
                              else AuditEvent.action == action)
        if filters.patient_id is not None:
            stmt = stmt.where(AuditEvent.patient_id == filters.patient_id)
        if filters.client:
            stmt = stmt.where(AuditEvent.client == filters.client.strip())
        if filters.object_type:
            stmt = stmt.where(AuditEvent.object_type == filters.object_type.strip())
        if filters.object_id:
            stmt = stmt.where(AuditEvent.object_id == filters.object_id.strip())
        if filters.since:
            stmt = stmt.where(AuditEvent.at >= as_utc(filters.since))
        if filters.until:
            stmt = stmt.where(AuditEvent.at < as_utc(filters.until))
        if after is not None:
            stmt = stmt.where(AuditEvent.id < after)
        rows = (await s.execute(stmt.order_by(AuditEvent.id.desc()).limit(limit + 1))).all()
    items = []
    for r in rows[:limit]:
        item = _item(r)
        item.update(patient_id=r.patient_id, mailbox_id=r.mailbox_id, seq=r.seq, hash=r.hash)
        items.append(item)
    return {"items": items, "next_cursor": _next_cursor(rows, limit)}


# --- verification -------------------------------------------------------------------------------


@dataclass
class Problem:
    kind: str  # altered | removed | inserted | link | head
    seq: int | None
    id: int | None
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "seq": self.seq, "id": self.id, "detail": self.detail}


@dataclass
class Verdict:
    entries: int = 0
    head_seq: int = 0
    head_hash: str = audit_chain.GENESIS
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "entries": self.entries, "head": {"seq": self.head_seq, "hash": self.head_hash},
                "problems": [p.as_dict() for p in self.problems]}


_COLUMNS = [getattr(AuditEvent, name) for name in ("id", "hash", *audit_chain.FIELDS)]
MAX_PROBLEMS = 100


async def verify(core: Any, batch: int = 2000) -> Verdict:
    """Walk the chain from its first entry: every entry's hash recomputed, every link to the
    previous entry checked, the numbering without gap, nothing outside the chain, the head equal
    to the last entry. Reads in pages, so a long log is walked in bounded memory."""
    verdict = Verdict()
    problems = verdict.problems

    def note(kind: str, seq: int | None, id_: int | None, detail: str) -> None:
        if len(problems) < MAX_PROBLEMS:
            problems.append(Problem(kind, seq, id_, detail))

    expected_seq, prev = 1, audit_chain.GENESIS
    async with core.read() as s:
        head = (await s.execute(sa.select(AuditHead.seq, AuditHead.hash).where(AuditHead.id == chain.HEAD_ID))).first()
        outside = list(await s.scalars(sa.select(AuditEvent.id).where(AuditEvent.seq.is_(None))
                                       .order_by(AuditEvent.id).limit(MAX_PROBLEMS)))
        for id_ in outside:
            note("inserted", None, id_, f"entrée id {id_} ajoutée hors de la chaîne (sans numéro ni empreinte)")
        last_seq = 0
        while True:
            rows = (await s.execute(sa.select(*_COLUMNS).where(AuditEvent.seq >= expected_seq)
                                    .order_by(AuditEvent.seq).limit(batch))).mappings().all()
            if not rows:
                break
            for row in rows:
                seq = row["seq"]
                verdict.entries += 1
                if seq > expected_seq:
                    missing = (f"l'entrée n° {expected_seq} a été supprimée" if seq == expected_seq + 1
                               else f"les entrées n° {expected_seq} à {seq - 1} ont été supprimées")
                    note("removed", expected_seq, None, missing)
                elif row["prev_hash"] != prev:
                    note("link", seq, row["id"], f"chaînage rompu à l'entrée n° {seq} : l'entrée précédente a été "
                                                 "modifiée, remplacée ou insérée")
                if audit_chain.entry_hash(row) != row["hash"]:
                    note("altered", seq, row["id"], f"l'entrée n° {seq} (id {row['id']}) a été modifiée")
                prev, expected_seq, last_seq = row["hash"], seq + 1, seq
    if head is None:
        note("head", None, None, "la tête de la chaîne a disparu")
    else:
        verdict.head_seq, verdict.head_hash = head.seq, head.hash
        if head.seq > last_seq:
            note("removed", last_seq + 1, None, f"les dernières entrées (n° {last_seq + 1} à {head.seq}) ont été "
                                                "supprimées")
        elif head.seq < last_seq or head.hash != prev:
            note("head", last_seq, None, f"la tête de la chaîne (n° {head.seq}) ne correspond pas à la dernière "
                                         f"entrée (n° {last_seq}) : entrées ajoutées ou modifiées à la fin")
    return verdict


# --- refusals written even though the request fails ---------------------------------------------


async def record_now(core: Any, rows: list[dict[str, Any]]) -> None:
    """Write entries in a transaction of their own (a refusal: the caller's transaction is
    rolled back with the error it raises)."""
    if not rows:
        return
    async with core.db.write() as session:
        for row in rows:
            chain.add(session, row)
