"""Imports every model module so that ``Base.metadata`` knows all tables (Alembic, tests)."""

from monsisra.store import models  # noqa: F401
from monsisra.store import gateway  # noqa: F401
from monsisra.store import directory  # noqa: F401
