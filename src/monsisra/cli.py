"""Command line: ``monsisra serve | db upgrade | demo | account create | …``."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import typer
from rich.console import Console

from monsisra.cli_directory import directory_app
from monsisra.config import Settings
from monsisra.gateway.cli import trust_app
from monsisra.services.errors import ServiceError

app = typer.Typer(help="MonSisra — messagerie sécurisée de santé et télémédecine.", no_args_is_help=True,
                  add_completion=False)
db_app = typer.Typer(help="Base de données : schéma et migrations.", no_args_is_help=True)
account_app = typer.Typer(help="Comptes des utilisateurs.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(account_app, name="account")
mailbox_app = typer.Typer(help="Boîtes aux lettres : services (ORG/APP), membres et délégués.", no_args_is_help=True)
app.add_typer(mailbox_app, name="mailbox")
app.add_typer(trust_app, name="trust")
app.add_typer(directory_app, name="directory")
console = Console(stderr=True)
T = TypeVar("T")


@app.callback()
def _private_files() -> None:
    # Every file this process creates (database, journal, keys, blobs) is the owner's only.
    os.umask(0o077)


def run_with_core(fn: Callable[..., Awaitable[T]], settings: Settings | None = None) -> T:
    """Run ``fn(core)`` on a fresh core, turning service errors into a message and exit code 1."""
    from monsisra.services.core import Core

    settings = settings or Settings()

    async def main() -> T:
        core = Core(settings)
        try:
            return await fn(core)
        finally:
            await core.bus.stop()
            await core.db.dispose()

    try:
        return asyncio.run(main())
    except ServiceError as exc:
        console.print(f"[red]Erreur :[/red] {exc.detail}")
        raise typer.Exit(1) from None


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Crée ou met à jour le schéma de la base (migrations Alembic)."""
    from monsisra.store.migrate import upgrade

    settings = Settings()
    upgrade(settings.database_url)
    console.print("[green]Schéma à jour.[/green]")


@app.command()
def demo(if_empty: Annotated[bool, typer.Option("--if-empty", help="Seulement si la base n'a aucun compte.")] = False
         ) -> None:
    """Charge les données de démonstration (idempotent ; mots de passe « demo »)."""
    from monsisra.services import demo as demo_service

    async def go(core):
        if if_empty and not await demo_service.is_empty(core):
            console.print("Base déjà remplie : démonstration non rechargée.")
            return
        await demo_service.load(core, progress=console)

    run_with_core(go)


@account_app.command("create")
def account_create(
    username: Annotated[str, typer.Argument(help="Identifiant de connexion, ex. alice.martin")],
    first_name: Annotated[str, typer.Option("--first-name", "-p", help="Prénom")] = "",
    last_name: Annotated[str, typer.Option("--last-name", "-n", help="Nom")] = "",
    civility: Annotated[str, typer.Option(help="Civilité d'exercice, ex. Dr")] = "",
    profession: Annotated[str, typer.Option(help="Profession, ex. Médecin")] = "",
    specialty: Annotated[str, typer.Option(help="Spécialité, ex. Médecine générale")] = "",
    national_id: Annotated[str | None, typer.Option("--rpps", help="Identifiant national (8 + RPPS)")] = None,
    admin: Annotated[bool, typer.Option("--admin", help="Administrateur de la plateforme")] = False,
    password: Annotated[str | None, typer.Option(help="Mot de passe (demandé si absent)")] = None,
) -> None:
    """Crée un compte et, pour un professionnel, sa BAL personnelle prenom.nom@domaine."""
    from monsisra.services import accounts

    if password is None:
        password = typer.prompt("Mot de passe", hide_input=True, confirmation_prompt=True)
    new = accounts.NewAccount(username=username, password=password, first_name=first_name, last_name=last_name,
                              civility=civility, profession=profession, specialty=specialty,
                              national_id=national_id, is_admin=admin,
                              personal_mailbox=bool(first_name or last_name))

    async def go(core):
        return await accounts.create_account(core, new)

    account, mailbox = run_with_core(go)
    console.print(f"[green]Compte créé :[/green] {account.username}"
                  + (f" — BAL {mailbox.address}" if mailbox else ""))


@account_app.command("password")
def account_password(username: str, password: Annotated[str | None, typer.Option()] = None) -> None:
    """Change le mot de passe d'un compte (et révoque ses jetons)."""
    from monsisra.services import accounts

    if password is None:
        password = typer.prompt("Nouveau mot de passe", hide_input=True, confirmation_prompt=True)
    run_with_core(lambda core: accounts.set_password(core, username, password))
    console.print("[green]Mot de passe changé.[/green]")


@account_app.command("deactivate")
def account_deactivate(username: str) -> None:
    """Désactive un compte : plus de connexion, ses sessions et connexions temps réel se ferment."""
    from monsisra.services import accounts

    run_with_core(lambda core: accounts.set_active(core, username, False))
    console.print(f"[green]Compte désactivé :[/green] {username}")


@account_app.command("activate")
def account_activate(username: str) -> None:
    """Réactive un compte désactivé."""
    from monsisra.services import accounts

    run_with_core(lambda core: accounts.set_active(core, username, True))
    console.print(f"[green]Compte réactivé :[/green] {username}")


@mailbox_app.command("create")
def mailbox_create(
    local: Annotated[str, typer.Argument(help="Partie locale de l'adresse, ex. cardiologie.chu-clermont")],
    name: Annotated[str, typer.Option("--name", help="Nom affiché, ex. « Cardiologie — CHU Clermont-Ferrand »")],
    kind: Annotated[str, typer.Option(help="ORG (service), APP (logiciel) ou CAB (cabinet)")] = "ORG",
    organisation: Annotated[str, typer.Option(help="Structure de rattachement")] = "",
    finess: Annotated[str | None, typer.Option(help="Numéro FINESS")] = None,
    expert: Annotated[bool, typer.Option("--expert", help="Service expert déclaré (téléexpertise)")] = False,
    resource_team: Annotated[bool, typer.Option("--resource-team", help="Équipe ressource (DAC, CPTS…)")] = False,
) -> None:
    """Crée une BAL de service ou applicative local@domaine (l'adresse ne change jamais)."""
    from monsisra.services import mailboxes

    mailbox = run_with_core(lambda core: mailboxes.create_service_mailbox(
        core, local=local, display_name=name, kind=kind.upper(), organisation=organisation, finess=finess,
        is_expert=expert, is_resource_team=resource_team))
    console.print(f"[green]BAL créée :[/green] {mailbox.address} ({mailbox.kind})")


@mailbox_app.command("grant")
def mailbox_grant(
    address: Annotated[str, typer.Argument(help="Adresse de la BAL")],
    username: Annotated[str, typer.Argument(help="Compte qui reçoit l'accès")],
    delegate: Annotated[bool, typer.Option("--delegate", help="Délégué (secrétariat) plutôt que membre")] = False,
) -> None:
    """Donne à un compte l'accès à une BAL : membre d'un service, ou délégué d'un professionnel."""
    import sqlalchemy as sa

    from monsisra.services import mailboxes
    from monsisra.services.errors import NotFound
    from monsisra.store.models import Account, Mailbox

    async def go(core):
        async with core.read() as s:
            mailbox_id = await s.scalar(sa.select(Mailbox.id).where(Mailbox.address == address.lower()))
            account_id = await s.scalar(sa.select(Account.id).where(Account.username == username))
        if mailbox_id is None:
            raise NotFound(f"BAL {address} introuvable")
        if account_id is None:
            raise NotFound(f"compte {username} introuvable")
        await mailboxes.grant(core, mailbox_id, account_id, "delegate" if delegate else "member")

    run_with_core(go)
    console.print(f"[green]Accès donné :[/green] {username} → {address} ({'délégué' if delegate else 'membre'})")


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Adresse d'écoute HTTP et HTTPS")] = None,
    port: Annotated[int | None, typer.Option(help="Port HTTP (MONSISRA_HTTP_PORT)")] = None,
    https_port: Annotated[int | None, typer.Option("--https-port",
                                                   help="Port HTTPS (MONSISRA_HTTPS_PORT ; 0 : pas de HTTPS)")] = None,
    migrate: Annotated[bool, typer.Option(help="Met le schéma à jour avant de démarrer")] = True,
) -> None:
    """Sert l'application web, l'API, les évènements temps réel, la passerelle SMTP et les tâches."""
    from monsisra import serving
    from monsisra.api.app import create_app
    from monsisra.store.migrate import upgrade

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings()
    if migrate:
        upgrade(settings.database_url)
    application = create_app(settings)
    host = host or settings.http_host
    port = port or settings.http_port
    https_port = settings.https_port if https_port is None else https_port
    console.print(f"MonSisra sur http://{host}:{port}" + (f" et https://{host}:{https_port}" if https_port else "")
                  + f" — SMTP sur {settings.smtp_host}:{settings.smtp_port}")
    code = serving.run(application, settings, host=host, port=port, https_port=https_port)
    if code:
        raise typer.Exit(code)


def main() -> None:  # pragma: no cover - console entry point
    app(sys.argv[1:])


if __name__ == "__main__":  # pragma: no cover
    main()
