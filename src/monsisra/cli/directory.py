"""``monsisra directory import | export | reindex``: the national directory from the command line."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from monsisra.cli.runner import console, run_with_core

directory_app = typer.Typer(help="Annuaire national : import, export, index.", no_args_is_help=True)
out = Console()

LABELS = {"people": "professionnels", "activities": "activités", "mailboxes": "boîtes (BAL)",
          "organisations": "structures"}


def _progress_bar() -> tuple[Progress, callable]:
    bar = Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(),
                   console=console, transient=False)
    tasks: dict[str, int] = {}

    def update(phase: str, done: int, total: int) -> None:
        label = {"index": "Index de recherche", "vocabulary": "Vocabulaire (fautes de frappe)"}.get(phase, phase)
        if phase not in tasks:
            tasks[phase] = bar.add_task(label, total=max(total, 1))
        bar.update(tasks[phase], completed=done, total=max(total, 1))

    return bar, update


@directory_app.command("import")
def import_(
    paths: Annotated[list[Path], typer.Argument(help="Fichiers d'extraction (.txt ou .zip)")],
    as_json: Annotated[bool, typer.Option("--json", help="Rapport en JSON sur la sortie standard")] = False,
) -> None:
    """Importe les extractions nationales (personnes/activités, correspondance MSSanté)."""
    from monsisra.services import directory

    bar, update = _progress_bar()

    async def go(core):
        with bar:
            return await directory.import_files(core, paths, progress=update)

    report = run_with_core(go)
    data = report.as_dict()
    if as_json:
        out.print_json(json.dumps(data, ensure_ascii=False))
    table = Table(title="Rapport d'import")
    for col in ("fichier", "entité", "créés", "mis à jour", "désactivés", "inchangés", "rejetés"):
        table.add_column(col)
    for f in report.files:
        first = True
        for entity, c in f.entities.items():
            table.add_row(f.name if first else "", LABELS.get(entity, entity), str(c.created), str(c.updated),
                          str(c.deactivated), str(c.unchanged), str(f.rejected) if first else "")
            first = False
        if first:
            table.add_row(f.name, "—", "0", "0", "0", "0", str(f.rejected))
    console.print(table)
    t = report.totals
    console.print(f"Total : {t.created} créé(s), {t.updated} mis à jour, {t.deactivated} désactivé(s), "
                  f"{report.rejected} ligne(s) rejetée(s)"
                  + (f" ; {report.indexed} fiche(s) indexée(s)" if report.indexed is not None else ""))
    for f in report.files:
        for err in f.errors[:20]:
            console.print(f"[yellow]Rejet :[/yellow] {err}")
        if len(f.errors) > 20:
            console.print(f"[yellow]… et {f.rejected - 20} autre(s) rejet(s) dans {f.name}[/yellow]")
        if f.deactivation_skipped:
            console.print(f"[yellow]{f.name} : trop de lignes rejetées, aucune fiche désactivée.[/yellow]")


@directory_app.command("export")
def export(
    output: Annotated[Path, typer.Option("-o", "--output", help="Fichier à écrire")],
    format_: Annotated[Literal["correspondance", "fhir"], typer.Option("--format", help="correspondance | fhir")
                       ] = "correspondance",
) -> None:
    """Publie nos boîtes : format de correspondance national (31 colonnes) ou Bundle FHIR R4."""
    from monsisra.services import directory

    async def go(core):
        tmp = output.with_name(output.name + ".tmp")
        if format_ == "fhir":
            bundle = await directory.fhir_bundle(core)
            tmp.write_text(json.dumps(bundle, ensure_ascii=False, indent=1), encoding="utf-8")
            n = len(bundle["entry"])
        else:
            buffer = io.StringIO()
            n = await directory.export_correspondance(core, buffer)
            tmp.write_text(buffer.getvalue(), encoding="utf-8", newline="")
        tmp.replace(output)
        return n

    n = run_with_core(go)
    console.print(f"[green]{n} {'ressource(s)' if format_ == 'fhir' else 'boîte(s)'} écrite(s) dans {output}[/green]")


@directory_app.command("reindex")
def reindex() -> None:
    """Reconstruit l'index de recherche de l'annuaire."""
    from monsisra.services import directory

    bar, update = _progress_bar()

    async def go(core):
        with bar:
            return await directory.rebuild_index(core, progress=update)

    n = run_with_core(go)
    console.print(f"[green]{n} fiche(s) nationale(s) indexée(s).[/green]")
