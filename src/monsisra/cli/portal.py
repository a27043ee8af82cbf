"""``monsisra portal add-client|list|disable|enable|rotate-keys``: the services of « Mon portail »
(MonSisra's OpenID provider) and its signing keys."""

from __future__ import annotations

from typing import Annotated

import typer

from monsisra.cli.runner import console, run_with_core

portal_app = typer.Typer(help="Mon portail : services reliés par OpenID Connect (authentification unique).",
                         no_args_is_help=True)


@portal_app.command("add-client")
def add_client(
    name: Annotated[str, typer.Argument(help="Nom affiché sur la tuile, ex. « Dossier de coordination »")],
    redirect_uri: Annotated[list[str], typer.Option("--redirect-uri", help="Adresse de retour (répétable)")],
    login_url: Annotated[str, typer.Option("--login-url", help="Adresse qu'ouvre la tuile (initiate_login_uri)")],
    backchannel_logout_uri: Annotated[str | None, typer.Option(
        "--backchannel-logout-uri", help="Adresse de déconnexion par canal arrière")] = None,
    client_id: Annotated[str | None, typer.Option("--client-id", help="Identifiant (sinon tiré du nom)")] = None,
    description: Annotated[str, typer.Option(help="Description de la tuile")] = "",
) -> None:
    """Enregistre un service ; affiche son client_id et son secret (une seule fois)."""
    from monsisra.services import portal

    client, secret = run_with_core(lambda core: portal.add_client(
        core, name=name, redirect_uris=redirect_uri, login_url=login_url,
        backchannel_logout_uri=backchannel_logout_uri, client_id=client_id, description=description))
    console.print(f"[green]Service enregistré :[/green] {client['name']}")
    typer.echo(f"client_id={client['client_id']}")
    typer.echo(f"client_secret={secret}")


@portal_app.command("list")
def list_() -> None:
    """Les services enregistrés."""
    from monsisra.services import portal

    for c in run_with_core(lambda core: portal.list_clients(core, None)):
        typer.echo(f"{c['client_id']}\t{c['name']}\t{'actif' if c['active'] else 'retiré'}\t"
                   + " ".join(c["redirect_uris"]))


@portal_app.command("disable")
def disable(client_id: str) -> None:
    """Retire un service du portail (tuile, codes et jetons)."""
    from monsisra.services import portal

    run_with_core(lambda core: portal.set_client_active(core, client_id, False, None))
    console.print(f"[green]Service retiré :[/green] {client_id}")


@portal_app.command("enable")
def enable(client_id: str) -> None:
    """Remet un service dans le portail."""
    from monsisra.services import portal

    run_with_core(lambda core: portal.set_client_active(core, client_id, True, None))
    console.print(f"[green]Service remis :[/green] {client_id}")


@portal_app.command("rotate-keys")
def rotate_keys() -> None:
    """Nouvelle clé de signature ; les anciennes restent publiées jusqu'à l'expiration de leurs jetons."""
    from monsisra.services import portal

    kid = run_with_core(lambda core: portal.rotate_keys(core))
    console.print(f"[green]Nouvelle clé de signature :[/green] {kid}")
