"""``monsisra demo``: the demonstration data (idempotent)."""

from __future__ import annotations

from typing import Annotated

import typer

from monsisra.cli.runner import console, run_with_core


def demo(if_empty: Annotated[bool, typer.Option("--if-empty", help="Seulement si la base n'a aucun compte.")] = False
         ) -> None:
    """Charge les données de démonstration (idempotent ; mots de passe « demo »)."""
    from monsisra.services import demo as demo_service

    async def go(core):
        if if_empty and not await demo_service.is_empty(core):
            await demo_service.keep_demo_exempt(core)
            console.print("Base déjà remplie : démonstration non rechargée.")
            return
        await demo_service.load(core, progress=console)

    run_with_core(go)
