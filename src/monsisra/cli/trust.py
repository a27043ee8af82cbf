"""``monsisra trust add|remove|list|import``: the whitelist of MSSanté operator domains."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from monsisra.cli.runner import console, run_with_core

trust_app = typer.Typer(help="Espace de confiance MSSanté : domaines des opérateurs acceptés.",
                        no_args_is_help=True)


@trust_app.command("add")
def add(domains: Annotated[list[str], typer.Argument(help="Domaines, ex. ch-vichy.mssante.fr")],
        note: Annotated[str, typer.Option(help="Commentaire")] = "") -> None:
    """Ajoute des domaines à la liste de confiance."""
    from monsisra.services import trust

    added = run_with_core(lambda core: trust.add(core, domains, note))
    console.print(f"[green]{len(added)} domaine(s) ajouté(s)[/green]" + (f" : {', '.join(added)}" if added else ""))


@trust_app.command("remove")
def remove(domain: str) -> None:
    """Retire un domaine de la liste de confiance."""
    from monsisra.services import trust

    run_with_core(lambda core: trust.remove(core, domain))
    console.print(f"[green]Domaine retiré :[/green] {domain}")


@trust_app.command("list")
def list_() -> None:
    """Affiche la liste de confiance."""
    from monsisra.services import trust

    for item in run_with_core(lambda core: trust.list_domains(core)):
        typer.echo(item["domain"] + (f"\t{item['note']}" if item["note"] else ""))


@trust_app.command("import")
def import_(path: Annotated[Path, typer.Argument(help="Fichier : un domaine par ligne, # pour commenter")],
            note: Annotated[str, typer.Option(help="Commentaire")] = "import") -> None:
    """Importe une liste de domaines depuis un fichier."""
    from monsisra.services import trust
    from monsisra.services.errors import ServiceError

    try:
        domains = trust.parse_file(path)
    except ServiceError as exc:
        console.print(f"[red]Erreur :[/red] {exc.detail}")
        raise typer.Exit(1) from None
    added = run_with_core(lambda core: trust.add(core, domains, note)) if domains else []
    console.print(f"[green]{len(domains)} domaine(s) lu(s), {len(added)} ajouté(s).[/green]")
