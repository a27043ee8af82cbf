"""Alembic environment: runs migrations on the async engine of the configured database."""

from __future__ import annotations

import asyncio

from alembic import context

import monsisra.store.schema  # noqa: F401  (registers every table)
from monsisra.store.db import make_engine
from monsisra.store.models import Base

target_metadata = Base.metadata


def _include(obj, name, type_, reflected, compare_to) -> bool:
    # Full-text search objects are created by hand in the migrations, per engine.
    return not (name and (name.startswith(("message_fts", "search_signature")) or name == "search_vector"))


def _run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        include_object=_include,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _main() -> None:
    url = context.config.get_main_option("sqlalchemy.url")
    engine = make_engine(url)
    async with engine.connect() as connection:
        await connection.run_sync(_run)
        await connection.commit()
    await engine.dispose()


connection = context.config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    asyncio.run(_main())
