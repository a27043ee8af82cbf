"""``monsisra serve``: the web application, the API, live events, the SMTP gateway and the
background work, in one process."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from monsisra.cli.runner import console
from monsisra.config import Settings


def serve(
    host: Annotated[str | None, typer.Option(help="Adresse d'écoute HTTP et HTTPS")] = None,
    port: Annotated[int | None, typer.Option(help="Port HTTP (MONSISRA_HTTP_PORT)")] = None,
    https_port: Annotated[int | None, typer.Option("--https-port",
                                                   help="Port HTTPS (MONSISRA_HTTPS_PORT ; 0 : pas de HTTPS)")] = None,
    migrate: Annotated[bool, typer.Option(help="Met le schéma à jour avant de démarrer")] = True,
    workers: Annotated[int, typer.Option(min=1, help="Processus qui se partagent les ports (SO_REUSEPORT) ; "
                                         "plus d'un : PostgreSQL et MONSISRA_REDIS_URL")] = 1,
    turn_server: Annotated[bool, typer.Option(hidden=True)] = True,
) -> None:
    """Sert l'application web, l'API, les évènements temps réel, la passerelle SMTP et les tâches."""
    from monsisra import serving
    from monsisra.store.migrate import upgrade

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings()
    if workers > 1:
        _check_workers(settings)
    if migrate:
        upgrade(settings.database_url)
    host = host or settings.http_host
    port = port or settings.http_port
    https_port = settings.https_port if https_port is None else https_port
    console.print(f"MonSisra sur http://{host}:{port}" + (f" et https://{host}:{https_port}" if https_port else "")
                  + f" — SMTP sur {settings.smtp_host}:{settings.smtp_port}"
                  + (f" — IMAP sur {settings.imap_host}:{settings.imap_port} (STARTTLS) et {settings.imaps_port} (TLS),"
                     f" soumission sur {settings.submission_port} et {settings.submissions_port}"
                     if settings.imap_port or settings.submission_port else ""))
    coturn = None
    from monsisra.services.video import turn

    if turn_server and turn.local_coturn(settings):
        # No TURN configured and coturn installed: STUN/TURN on 127.0.0.1 for the calls.
        from monsisra.gateway import turnserver

        coturn = turnserver.start(turn.secret(settings), settings.turn_port, settings.data_dir / "run")
        if coturn is not None:
            console.print(f"TURN/STUN (coturn) sur 127.0.0.1:{settings.turn_port}")
    try:
        if workers > 1:
            console.print(f"{workers} processus sur ces ports (SO_REUSEPORT)")
            code = serving.supervise(serving.serve_command(host, port, https_port), workers, serving.worker_env())
        else:
            from monsisra.api.app import create_app

            code = serving.run(create_app(settings), settings, host=host, port=port, https_port=https_port)
    finally:
        if coturn is not None:
            from monsisra.gateway import turnserver

            turnserver.stop(coturn)
    if code:
        raise typer.Exit(code)


def _check_workers(settings: Settings) -> None:
    if settings.is_sqlite:
        console.print("[red]Plusieurs processus demandent PostgreSQL (MONSISRA_DATABASE_URL=postgresql+asyncpg://…) : "
                      "SQLite n'a qu'un écrivain à la fois.[/red]")
        raise typer.Exit(2)
    if not settings.redis_url:
        console.print("[red]Plusieurs processus demandent MONSISRA_REDIS_URL : les évènements temps réel "
                      "passent d'un processus à l'autre par Redis.[/red]")
        raise typer.Exit(2)
