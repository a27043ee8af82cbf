"""Administration of accounts, mailboxes and the audit log (pages beside the CLI; the services
check that the user is an administrator: 403 page otherwise, 404 for what does not exist)."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from monsisra.api.deps import PathId
from monsisra.domain import delegation
from monsisra.services import admin_accounts as admin
from monsisra.services import audit
from monsisra.services.errors import Invalid, ServiceError
from monsisra.web.common import core_of, form_actor, int_param, page_actor, render, set_flash
from monsisra.web.delegations import PRESET_LABELS

router = APIRouter(include_in_schema=False)


def _err(exc: ServiceError) -> str:
    return exc.detail[:1].upper() + exc.detail[1:]


def _back(request: Request, url: str, text: str) -> Response:
    response = RedirectResponse(url, status_code=303)
    set_flash(request, response, text)
    return response


# --- accounts ---------------------------------------------------------------------------------------


@router.get("/admin/comptes")
async def accounts_page(request: Request) -> Response:
    actor = await page_actor(request)
    q = (request.query_params.get("q") or "")[:120]
    offset = max(0, int_param(request.query_params.get("depart"), 0) or 0)
    page = await admin.list_accounts(core_of(request), actor, q, offset)
    return render(request, "admin_accounts/accounts.html", q=q, items=page["items"], next_offset=page["next_offset"])


@router.get("/admin/comptes/nouveau")
async def account_new_page(request: Request) -> Response:
    actor = await page_actor(request)
    admin.require_admin(actor)
    return render(request, "admin_accounts/account_new.html", form={"personal_mailbox": True})


FIELDS = ("username", "civility", "first_name", "last_name", "profession", "specialty", "national_id", "email",
          "password")


@router.post("/admin/comptes/nouveau")
async def account_create(request: Request) -> Response:
    actor, form = await form_actor(request)
    values: dict[str, Any] = {k: str(form.get(k, "")).strip() if k != "password" else str(form.get(k, ""))
                              for k in FIELDS}
    values.update(is_admin=form.get("is_admin") == "1", personal_mailbox=form.get("personal_mailbox") == "1")
    try:
        created = await admin.create_account(core_of(request), actor, admin.AccountForm(
            **{**values, "national_id": values["national_id"] or None, "email": values["email"] or None,
               "password": values["password"] or None}))
    except ServiceError as exc:
        values.pop("password")
        return render(request, "admin_accounts/account_new.html", status=exc.status, form=values, error=_err(exc))
    text = f"Compte {created['username']} créé" + (f", boîte {created['mailbox']}" if created["mailbox"] else "")
    text += " ; lien pour choisir le mot de passe envoyé." if created["link_sent"] else "."
    return _back(request, f"/admin/comptes/{quote(created['username'])}", text)


async def _account_page(request: Request, username: str, status: int = 200, error: str | None = None) -> Response:
    actor = await page_actor(request)
    account = await admin.account_detail(core_of(request), actor, username)
    return render(request, "admin_accounts/account.html", status=status, account=account, error=error,
                  presets=PRESET_LABELS)


@router.get("/admin/comptes/{username}")
async def account_page(request: Request, username: str) -> Response:
    return await _account_page(request, username[:120])


@router.post("/admin/comptes/{username}/{action}")
async def account_action(request: Request, username: str, action: str) -> Response:
    actor, form = await form_actor(request)
    core = core_of(request)
    username = username[:120]
    url = f"/admin/comptes/{quote(username)}"
    try:
        if action == "desactiver":
            await admin.set_active(core, actor, username, False)
            return _back(request, url, "Compte désactivé : ses sessions sont fermées.")
        if action == "activer":
            await admin.set_active(core, actor, username, True)
            return _back(request, url, "Compte réactivé.")
        if action == "lien":
            await admin.send_link(core, actor, username)
            return _back(request, url, "Lien pour choisir un mot de passe envoyé (s'il a une adresse de notification).")
        if action == "sessions":
            await admin.end_sessions(core, actor, username)
            return _back(request, url, "Toutes ses sessions sont fermées.")
        if action == "acces":
            mailbox_id = await _mailbox_by_address(request, str(form.get("address", "")))
            access = str(form.get("access", "member"))
            rights = sorted(delegation.PRESETS.get(str(form.get("rights", "complete")), delegation.ALL_RIGHTS))
            await admin.grant(core, actor, mailbox_id, username, access, rights)
            return _back(request, url, "Accès donné.")
        if action == "retirer":
            mailbox_id = int_param(str(form.get("mailbox_id", "")), 0) or 0
            await admin.revoke(core, actor, mailbox_id, username)
            return _back(request, url, "Accès retiré.")
    except ServiceError as exc:
        if exc.status in (403, 404) and action != "retirer" and action != "acces":
            raise
        return await _account_page(request, username, status=exc.status, error=_err(exc))
    return await _account_page(request, username, status=404, error="Action inconnue")


async def _mailbox_by_address(request: Request, address: str) -> int:
    actor = await page_actor(request)
    found = await admin.list_mailboxes(core_of(request), actor, address.strip(), kind="all", limit=5)
    exact = [m for m in found["items"] if m["address"] == address.strip().lower()]
    if not exact:
        raise Invalid(f"aucune boîte à l'adresse « {address.strip()} »")
    return exact[0]["id"]


# --- mailboxes --------------------------------------------------------------------------------------


@router.get("/admin/boites")
async def mailboxes_page(request: Request) -> Response:
    actor = await page_actor(request)
    q = (request.query_params.get("q") or "")[:120]
    offset = max(0, int_param(request.query_params.get("depart"), 0) or 0)
    page = await admin.list_mailboxes(core_of(request), actor, q, "services", offset)
    return render(request, "admin_accounts/mailboxes.html", q=q, items=page["items"], next_offset=page["next_offset"],
                  form={"kind": "ORG"}, domain=core_of(request).settings.domain)


@router.post("/admin/boites")
async def mailbox_create(request: Request) -> Response:
    actor, form = await form_actor(request)
    values = {k: str(form.get(k, "")).strip() for k in ("local", "display_name", "kind", "organisation", "finess",
                                                       "description")}
    try:
        created = await admin.create_mailbox(
            core_of(request), actor, local=values["local"], display_name=values["display_name"],
            kind=values["kind"] or "ORG", organisation=values["organisation"], finess=values["finess"] or None,
            is_expert=form.get("is_expert") == "1", is_resource_team=form.get("is_resource_team") == "1",
            description=values["description"])
    except ServiceError as exc:
        page = await admin.list_mailboxes(core_of(request), actor, "", "services", 0)
        return render(request, "admin_accounts/mailboxes.html", status=exc.status, q="", items=page["items"],
                      next_offset=page["next_offset"], form=values, error=_err(exc),
                      domain=core_of(request).settings.domain)
    return _back(request, f"/admin/boites/{created['id']}", f"Boîte {created['address']} créée.")


async def _mailbox_page(request: Request, mailbox_id: int, status: int = 200, error: str | None = None) -> Response:
    actor = await page_actor(request)
    mailbox = await admin.mailbox_detail(core_of(request), actor, mailbox_id)
    return render(request, "admin_accounts/mailbox.html", status=status, mailbox=mailbox, error=error,
                  presets=PRESET_LABELS)


@router.get("/admin/boites/{mailbox_id}")
async def mailbox_page(request: Request, mailbox_id: PathId) -> Response:
    return await _mailbox_page(request, mailbox_id)


@router.post("/admin/boites/{mailbox_id}/acces")
async def mailbox_grant(request: Request, mailbox_id: PathId) -> Response:
    actor, form = await form_actor(request)
    username = str(form.get("username", "")).strip()[:120]
    access = str(form.get("access", "member"))
    rights = sorted(delegation.PRESETS.get(str(form.get("rights", "complete")), delegation.ALL_RIGHTS))
    try:
        await admin.grant(core_of(request), actor, mailbox_id, username, access, rights)
    except ServiceError as exc:
        if exc.status == 403:
            raise
        return await _mailbox_page(request, mailbox_id, status=exc.status, error=_err(exc))
    return _back(request, f"/admin/boites/{mailbox_id}", f"Accès donné à {username}.")


@router.post("/admin/boites/{mailbox_id}/gestionnaire")
async def mailbox_manager(request: Request, mailbox_id: PathId) -> Response:
    actor, form = await form_actor(request)
    username = str(form.get("username", "")).strip()[:120]
    manager = form.get("manager") == "1"
    try:
        await admin.set_manager(core_of(request), actor, mailbox_id, username, manager)
    except ServiceError as exc:
        if exc.status == 403:
            raise
        return await _mailbox_page(request, mailbox_id, status=exc.status, error=_err(exc))
    done = "est maintenant gestionnaire de la boîte" if manager else "n'est plus gestionnaire de la boîte"
    return _back(request, f"/admin/boites/{mailbox_id}", f"{username} {done}.")


@router.post("/admin/boites/{mailbox_id}/retirer")
async def mailbox_revoke(request: Request, mailbox_id: PathId) -> Response:
    actor, form = await form_actor(request)
    username = str(form.get("username", "")).strip()[:120]
    try:
        await admin.revoke(core_of(request), actor, mailbox_id, username)
    except ServiceError as exc:
        if exc.status == 403:
            raise
        return await _mailbox_page(request, mailbox_id, status=exc.status, error=_err(exc))
    return _back(request, f"/admin/boites/{mailbox_id}", f"Accès de {username} retiré.")


# --- audit log --------------------------------------------------------------------------------------


def _date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value[:32])
    except ValueError:
        raise Invalid(f"date invalide : {value[:32]} (attendu AAAA-MM-JJ)") from None


@router.get("/admin/journal")
async def audit_page(request: Request) -> Response:
    actor = await page_actor(request)
    qp = request.query_params
    values = {k: (qp.get(k) or "").strip()[:200] for k in ("compte", "action", "boite", "patient", "adresse",
                                                          "depuis", "jusqu", "avant")}
    error = None
    try:
        filters = audit.Search(account=values["compte"] or None, action=values["action"] or None,
                               mailbox=values["boite"] or None,
                               patient_id=int_param(values["patient"]) if values["patient"] else None,
                               client=values["adresse"] or None, since=_date(values["depuis"]),
                               until=_date(values["jusqu"]))
        page = await audit.search(core_of(request), actor, filters, cursor=values["avant"] or None, limit=100)
    except Invalid as exc:
        error, page = _err(exc), {"items": [], "next_cursor": None}
    more = None
    if page["next_cursor"]:
        more = "/admin/journal?" + urlencode({**{k: v for k, v in values.items() if v and k != "avant"},
                                              "avant": page["next_cursor"]})
    return render(request, "admin_accounts/audit.html", status=422 if error else 200, values=values,
                  items=page["items"], more=more, error=error, labels=audit.ACTION_LABELS)


@router.post("/admin/journal/verifier")
async def audit_verify(request: Request) -> Response:
    actor, _ = await form_actor(request)
    admin.require_admin(actor)
    verdict = await audit.verify(core_of(request))
    return render(request, "admin_accounts/verify.html", verdict=verdict)
