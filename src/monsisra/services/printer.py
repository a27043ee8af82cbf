"""The virtual printer: workstations registered per account (a token each, kept as SHA-256),
and print jobs — a printed PDF becomes a draft in the user's « Brouillons » with the PDF
attached, and what its text says (patient: INS, birth date, name; professionals of this
platform named in it) is kept as suggestions the user confirms on the compose page.

A job without a valid workstation token is refused before anything is read or stored.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import secrets
from collections.abc import AsyncIterator
from typing import Any

import sqlalchemy as sa

from monsisra.domain.clock import iso, utcnow
from monsisra.domain.ins import OID_NIR, PatientIdentity
from monsisra.domain.model import Access, MailboxKind
from monsisra.domain.printed import guess_patient, names_in
from monsisra.domain.text import TextRefused, check_line
from monsisra.services import attachments, audit, mailboxes, messages
from monsisra.services.core import Actor, Core
from monsisra.services.errors import AuthFailed, Invalid, NotFound, TooLarge
from monsisra.store.models import Account, Mailbox, MailboxAccess
from monsisra.store.reach import PrintJob, PrintWorkstation

log = logging.getLogger(__name__)
TOKEN_PREFIX = "mswk_"  # noqa: S105 (the prefix of workstation tokens, not a secret)
MAX_TEXT_PAGES = 5
MAX_SUGGESTED = 5
DEFAULT_TITLE = "Document imprimé"


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


# --- workstations -----------------------------------------------------------------------------


async def register_workstation(core: Core, actor: Actor, name: str) -> dict[str, Any]:
    """A new workstation token for the acting account (shown once)."""
    try:
        name = check_line(name or "", "nom du poste").strip()[:120] or "Poste de travail"
    except TextRefused as exc:
        raise Invalid(str(exc)) from None
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    async with core.write() as tx:
        row = PrintWorkstation(account_id=actor.account_id, name=name, token_hash=_digest(token))
        tx.session.add(row)
        await tx.session.flush()
        audit.record(tx.session, actor.account_id, "printer.workstation.register", object_type="workstation",
                     object_id=row.id, client=actor.client, detail={"name": name})
        return {"id": row.id, "name": name, "token": token, "created_at": iso(row.created_at)}


async def list_workstations(core: Core, actor: Actor) -> list[dict[str, Any]]:
    async with core.read() as s:
        rows = (await s.scalars(sa.select(PrintWorkstation).where(
            PrintWorkstation.account_id == actor.account_id, PrintWorkstation.revoked_at.is_(None))
            .order_by(PrintWorkstation.id))).all()
    return [{"id": r.id, "name": r.name, "created_at": iso(r.created_at), "last_used_at": iso(r.last_used_at)}
            for r in rows]


async def revoke_workstation(core: Core, actor: Actor, workstation_id: int) -> None:
    async with core.write() as tx:
        done = (await tx.session.execute(sa.update(PrintWorkstation).where(
            PrintWorkstation.id == workstation_id, PrintWorkstation.account_id == actor.account_id,
            PrintWorkstation.revoked_at.is_(None)).values(revoked_at=utcnow()))).rowcount
        if not done:
            raise NotFound("poste introuvable")
        audit.record(tx.session, actor.account_id, "printer.workstation.revoke", object_type="workstation",
                     object_id=workstation_id, client=actor.client)


async def workstation_actor(core: Core, token: str, client: str | None = None) -> tuple[Actor, int]:
    """The account a workstation token prints for, and the workstation; :class:`AuthFailed` else."""
    if not token.startswith(TOKEN_PREFIX):
        raise AuthFailed("jeton de poste d'impression invalide")
    async with core.read() as s:
        row = (await s.execute(
            sa.select(PrintWorkstation.id, PrintWorkstation.revoked_at, Account.id.label("account_id"),
                      Account.username, Account.is_admin, Account.active)
            .join(Account, Account.id == PrintWorkstation.account_id)
            .where(PrintWorkstation.token_hash == _digest(token)))).first()
    if row is None or row.revoked_at is not None or not row.active:
        raise AuthFailed("jeton de poste d'impression invalide ou révoqué")
    return Actor(row.account_id, row.username, row.is_admin, client), row.id


# --- jobs -----------------------------------------------------------------------------------


def _pdf_text(data: bytes) -> str:
    """Text of the first pages; a PDF pypdf cannot read is refused."""
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(io.BytesIO(data))
        parts = []
        for page in reader.pages[:MAX_TEXT_PAGES]:
            parts.append(page.extract_text() or "")
    except (PyPdfError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise Invalid(f"document illisible : ce n'est pas un PDF valide ({type(exc).__name__})") from None
    return "\n".join(parts)


async def _read_all(chunks: AsyncIterator[bytes], limit: int) -> bytes:
    buf = bytearray()
    async for chunk in chunks:
        buf += chunk
        if len(buf) > limit:
            raise TooLarge(f"document trop volumineux : la limite est de {limit // (1024 * 1024)} Mo")
    return bytes(buf)


async def _draft_mailbox(core: Core, actor: Actor) -> int:
    """Where the draft goes: the mailbox the account lands in when it may write there, else its own."""
    boxes = [b for b in await mailboxes.list_for(core, actor) if b.may("draft")]
    if not boxes:
        raise Invalid("aucune boîte où préparer un brouillon")
    landing = await mailboxes.landing(core, actor)
    for b in boxes:
        if b.id == landing:
            return b.id
    own = [b for b in boxes if b.access == Access.OWNER]
    return (own or boxes)[0].id


async def _suggested_people(core: Core, actor: Actor, text: str) -> list[dict[str, str]]:
    """Professionals of this platform named in the text (their personal mailboxes)."""
    async with core.read() as s:
        rows = (await s.execute(
            sa.select(Account.id, Account.first_name, Account.last_name, Mailbox.address, Mailbox.display_name)
            .join(Mailbox, Mailbox.owner_account_id == Account.id)
            .where(Account.active.is_(True), Mailbox.kind == MailboxKind.PER, Mailbox.active.is_(True),
                   Account.id != actor.account_id))).all()
    by_id = {r.id: r for r in rows}
    ids = names_in(text, [(r.id, r.first_name, r.last_name) for r in rows])[:MAX_SUGGESTED]
    return [{"address": by_id[i].address, "name": by_id[i].display_name} for i in ids]


async def submit(core: Core, token: str, chunks: AsyncIterator[bytes], title: str | None,
                 client: str | None = None) -> dict[str, Any]:
    """A printed PDF → a draft with the PDF attached, and the suggestions read from its text."""
    actor, workstation_id = await workstation_actor(core, token, client)  # before reading anything
    data = await _read_all(chunks, core.settings.max_message_bytes)
    if not data.lstrip()[:5] == b"%PDF-":
        raise Invalid("le document imprimé doit être un PDF")
    text = await asyncio.to_thread(_pdf_text, data)
    try:
        subject = check_line((title or "").strip(), "titre")[:200] or DEFAULT_TITLE
    except TextRefused:
        subject = DEFAULT_TITLE
    patient = guess_patient(text)
    people = await _suggested_people(core, actor, text)
    mailbox_id = await _draft_mailbox(core, actor)
    filename = subject if subject.lower().endswith(".pdf") else f"{subject}.pdf"

    async def one() -> AsyncIterator[bytes]:
        yield data

    attachment = await attachments.upload(core, actor, filename, one())
    draft = await messages.send(core, actor, messages.Compose(
        from_mailbox=mailbox_id, subject=subject, body="", attachments=[attachment.id], draft=True))
    suggestions = {"patient": None if patient.empty() else patient.as_dict(), "recipients": people}
    async with core.write() as tx:
        job = PrintJob(account_id=actor.account_id, workstation_id=workstation_id, mailbox_id=mailbox_id,
                       message_id=draft["id"], title=subject, suggestions=suggestions)
        tx.session.add(job)
        await tx.session.execute(sa.update(PrintWorkstation).where(PrintWorkstation.id == workstation_id)
                                 .values(last_used_at=utcnow()))
        await tx.session.flush()
        audit.record(tx.session, actor.account_id, "printer.job", object_type="message", object_id=draft["id"],
                     mailbox_id=mailbox_id, client=client,
                     detail={"workstation": workstation_id, "size": len(data), "patient_guessed": not patient.empty(),
                             "recipients_guessed": len(people)})
        job_id = job.id
    return {"job_id": job_id, "draft_id": draft["id"], "mailbox_id": mailbox_id, "subject": subject,
            "attachment": attachment.as_dict(), "suggestions": suggestions,
            "url": f"{core.settings.base_url}/ecrire?brouillon={mailbox_id}:{draft['id']}"}


async def job_for_draft(core: Core, actor: Actor, mailbox_id: int, message_id: int) -> dict[str, Any] | None:
    """The print job that made this draft (its suggestions), when the actor printed it."""
    async with core.read() as s:
        job = await s.scalar(sa.select(PrintJob).where(
            PrintJob.account_id == actor.account_id, PrintJob.mailbox_id == mailbox_id,
            PrintJob.message_id == message_id))
    if job is None:
        return None
    return {"id": job.id, "title": job.title, "suggestions": job.suggestions or {}}


async def confirm(core: Core, actor: Actor, job_id: int, recipients: list[str], use_patient: bool) -> dict[str, Any]:
    """The user confirms suggestions: the draft is saved again with those recipients added and
    the patient linked; returns the new draft (``{mailbox_id, draft_id}``)."""
    async with core.read() as s:
        job = await s.scalar(sa.select(PrintJob).where(PrintJob.id == job_id,
                                                       PrintJob.account_id == actor.account_id))
        if job is None or job.message_id is None:
            raise NotFound("impression introuvable")
        allowed = await s.scalar(sa.select(MailboxAccess.access).where(
            MailboxAccess.mailbox_id == job.mailbox_id, MailboxAccess.account_id == actor.account_id))
        if allowed is None:
            raise NotFound("impression introuvable")
    suggestions = job.suggestions or {}
    offered = {r["address"] for r in suggestions.get("recipients") or []}
    wanted = [a for a in recipients if a in offered]
    current = await messages.get(core, actor, job.mailbox_id, job.message_id, mark_read=False)
    patient = None
    guessed = suggestions.get("patient") or {}
    if use_patient:
        if not guessed.get("ins"):
            raise Invalid("aucun INS n'a été trouvé dans le document : le patient ne peut pas être lié")
        patient = PatientIdentity(ins=guessed["ins"], oid=OID_NIR, family_name=guessed.get("family_name") or "",
                                  given_names=guessed.get("given_names") or "", birth_date=guessed.get("birth_date"))
    elif current.get("patient"):
        p = current["patient"]
        patient = PatientIdentity(ins=p["ins"], oid=p["oid"], family_name=p["family_name"],
                                  given_names=p["given_names"], birth_date=p["birth_date"], sex=p["sex"])
    to = [r["address"] for r in current["to"]]
    to += [a for a in wanted if a not in to]
    saved = await messages.send(core, actor, messages.Compose(
        from_mailbox=job.mailbox_id, to=to, cc=[r["address"] for r in current["cc"]], subject=current["subject"],
        body=current["body"], category=current["category"], attachments=[a["id"] for a in current["attachments"]],
        patient=patient, draft=True, draft_id=job.message_id))
    async with core.write() as tx:
        await tx.session.execute(sa.update(PrintJob).where(PrintJob.id == job.id).values(message_id=saved["id"]))
    return {"mailbox_id": job.mailbox_id, "draft_id": saved["id"], "to": to,
            "patient": saved.get("patient")}


async def list_jobs(core: Core, actor: Actor, limit: int = 20) -> list[dict[str, Any]]:
    """The account's latest print jobs, with their drafts and suggestions."""
    async with core.read() as s:
        rows = (await s.scalars(sa.select(PrintJob).where(PrintJob.account_id == actor.account_id)
                                .order_by(PrintJob.id.desc()).limit(limit))).all()
    return [{"id": j.id, "title": j.title, "mailbox_id": j.mailbox_id, "draft_id": j.message_id,
             "suggestions": j.suggestions or {}, "created_at": iso(j.created_at),
             "url": f"/ecrire?brouillon={j.mailbox_id}:{j.message_id}"} for j in rows]
