"""``monsisra mailbox``: service and application mailboxes, members and delegates."""

from __future__ import annotations

from typing import Annotated

import typer

from monsisra.cli.runner import console, run_with_core

mailbox_app = typer.Typer(help="Boîtes aux lettres : services (ORG/APP), membres et délégués.", no_args_is_help=True)


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
