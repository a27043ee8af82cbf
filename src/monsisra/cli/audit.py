"""``monsisra audit verify``: walk the audit log's hash chain; non-zero exit on any tampering."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from monsisra.cli.runner import console, run_with_core

audit_app = typer.Typer(help="Journal d'audit (chaîné par empreintes).", no_args_is_help=True)


@audit_app.command("verify")
def audit_verify(
    as_json: Annotated[bool, typer.Option("--json", help="Résultat en JSON sur la sortie standard")] = False,
) -> None:
    """Vérifie tout le journal : chaque entrée, son lien avec la précédente, la numérotation et la tête.
    Code de sortie 0 si le journal est intact, 1 s'il a été modifié (entrée altérée, ajoutée ou supprimée)."""
    from monsisra.services import audit

    verdict = run_with_core(lambda core: audit.verify(core))
    if as_json:
        typer.echo(json.dumps(verdict.as_dict(), ensure_ascii=False))
    elif verdict.ok:
        console.print(f"[green]Journal intact :[/green] {verdict.entries} entrées ; tête n° {verdict.head_seq}, "
                      f"empreinte {verdict.head_hash}")
        console.print("Notez cette empreinte ailleurs : elle permettra de montrer plus tard que rien n'a été "
                      "réécrit jusqu'ici.")
    else:
        console.print(f"[red]Journal altéré :[/red] {len(verdict.problems)} anomalie(s) sur {verdict.entries} entrées")
        for p in verdict.problems:
            console.print(f" - {p.detail}")
    if not verdict.ok:
        raise typer.Exit(1)
