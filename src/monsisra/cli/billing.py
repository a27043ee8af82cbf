"""``monsisra billing export --month YYYY-MM [--output file]``: the month's tele-expertise billing
lines (RQD / TE2) as CSV, on standard output or into a file, with a progress bar when long."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import Progress

from monsisra.cli.runner import console, run_with_core

billing_app = typer.Typer(help="Facturation des téléexpertises (RQD, TE2).", no_args_is_help=True)


@billing_app.command("export")
def billing_export(
    month: Annotated[str, typer.Option("--month", help="Mois au format AAAA-MM")],
    output: Annotated[Path | None, typer.Option("--output", help="Fichier CSV (sinon la sortie standard)")] = None,
) -> None:
    """Exporte en CSV les lignes de facturation du mois (date, acte, montant, NIR, numéro AM)."""
    from monsisra.services import teleexpertise

    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("Export", total=None)

        def step(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        text = run_with_core(lambda core: teleexpertise.export_csv(core, month, step))
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")
        console.print(f"{max(0, text.count(chr(10)) - 1)} ligne(s) écrite(s) dans {output}")
