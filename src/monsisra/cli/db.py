"""``monsisra db``: the schema and its migrations."""

from __future__ import annotations

import typer

from monsisra.cli.runner import console
from monsisra.config import Settings

db_app = typer.Typer(help="Base de données : schéma et migrations.", no_args_is_help=True)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Crée ou met à jour le schéma de la base (migrations Alembic)."""
    from monsisra.store.migrate import upgrade

    settings = Settings()
    upgrade(settings.database_url)
    console.print("[green]Schéma à jour.[/green]")
