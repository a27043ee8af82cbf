"""Imports every model module so that ``Base.metadata`` knows all tables (Alembic, tests)."""

from monsisra.store import (
    accounts,  # noqa: F401
    audit,  # noqa: F401
    conversations,  # noqa: F401
    directory,  # noqa: F401
    gateway,  # noqa: F401
    identity,  # noqa: F401
    models,  # noqa: F401
    patients,  # noqa: F401
    reach,  # noqa: F401
    teleexpertise,  # noqa: F401
    video,  # noqa: F401
)
