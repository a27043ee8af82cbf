"""Command line: ``monsisra serve | db upgrade | demo | account … | mailbox … | trust … | directory …
| audit … | printer … | billing …``.

One module per capability, each with its Typer group; ``runner`` holds what they share.
"""

from __future__ import annotations

import os
import sys

import typer

from monsisra.cli.accounts import account_app
from monsisra.cli.audit import audit_app
from monsisra.cli.billing import billing_app
from monsisra.cli.db import db_app
from monsisra.cli.demo import demo
from monsisra.cli.directory import directory_app
from monsisra.cli.mailboxes import mailbox_app
from monsisra.cli.portal import portal_app
from monsisra.cli.printer import printer_app
from monsisra.cli.runner import console, run_with_core
from monsisra.cli.serve import serve
from monsisra.cli.trust import trust_app

app = typer.Typer(help="MonSisra — messagerie sécurisée de santé et télémédecine.", no_args_is_help=True,
                  add_completion=False)
app.add_typer(db_app, name="db")
app.add_typer(account_app, name="account")
app.add_typer(mailbox_app, name="mailbox")
app.add_typer(trust_app, name="trust")
app.add_typer(directory_app, name="directory")
app.add_typer(audit_app, name="audit")
app.add_typer(portal_app, name="portal")
app.add_typer(printer_app, name="printer")
app.add_typer(billing_app, name="billing")
app.command()(demo)
app.command()(serve)


@app.callback()
def _private_files() -> None:
    # Every file this process creates (database, journal, keys, blobs) is the owner's only.
    os.umask(0o077)


def main() -> None:  # pragma: no cover - console entry point
    app(sys.argv[1:])


__all__ = ["app", "console", "main", "run_with_core"]
