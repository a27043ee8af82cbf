"""Command line: ``monsisra serve | db upgrade | demo | account create | …``."""

from __future__ import annotations

import asyncio
import logging
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
app.add_typer(trust_app, name="trust")
app.add_typer(directory_app, name="directory")
console = Console(stderr=True)
T = TypeVar("T")


def run_with_core(fn: Callable[..., Awaitable[T]], settings: Settings | None = None) -> T:
    """Run ``fn(core)`` on a fresh core, turning service errors into a message and exit code 1."""
    from monsisra.services.core import Core

    settings = settings or Settings()

    async def main() -> T:
        core = Core(settings)
        try:
            return await fn(core)
        finally:
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


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Adresse d'écoute HTTP")] = None,
    port: Annotated[int | None, typer.Option(help="Port HTTP (MONSISRA_HTTP_PORT)")] = None,
    migrate: Annotated[bool, typer.Option(help="Met le schéma à jour avant de démarrer")] = True,
) -> None:
    """Sert l'application web, l'API, les évènements temps réel, la passerelle SMTP et les tâches."""
    import uvicorn

    from monsisra.api.app import create_app
    from monsisra.store.migrate import upgrade

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings()
    if migrate:
        upgrade(settings.database_url)
    application = create_app(settings)
    console.print(f"MonSisra sur http://{host or settings.http_host}:{port or settings.http_port}"
                  f" — SMTP sur {settings.smtp_host}:{settings.smtp_port}")
    uvicorn.run(application, host=host or settings.http_host, port=port or settings.http_port,
                log_level="info", proxy_headers=False, ws="websockets-sansio")


def main() -> None:  # pragma: no cover - console entry point
    app(sys.argv[1:])


if __name__ == "__main__":  # pragma: no cover
    main()
