"""``monsisra account``: create accounts, set passwords, deactivate and reactivate."""

from __future__ import annotations

from typing import Annotated

import typer

from monsisra.cli.runner import console, run_with_core

account_app = typer.Typer(help="Comptes des utilisateurs.", no_args_is_help=True)


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


@account_app.command("reset-totp")
def account_reset_totp(username: str) -> None:
    """Retire le second facteur d'un compte (téléphone et codes de secours perdus) : il en
    enrôlera un nouveau à sa prochaine connexion."""
    from monsisra.services import totp

    run_with_core(lambda core: totp.reset(core, username))
    console.print(f"[green]Second facteur retiré :[/green] {username}")
