"""What every command shares: the console, and a core for the length of one command."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import typer
from rich.console import Console

from monsisra.config import Settings
from monsisra.services.errors import ServiceError

console = Console(stderr=True)
T = TypeVar("T")


def run_with_core(fn: Callable[..., Awaitable[T]], settings: Settings | None = None) -> T:
    """Run ``fn(core)`` on a fresh core, turning service errors into a message and exit code 1."""
    from monsisra.services.core import Core

    settings = settings or Settings()

    async def main() -> T:
        core = Core(settings)
        try:
            return await fn(core)
        finally:
            await core.bus.stop()
            await core.db.dispose()

    try:
        return asyncio.run(main())
    except ServiceError as exc:
        console.print(f"[red]Erreur :[/red] {exc.detail}")
        raise typer.Exit(1) from None
