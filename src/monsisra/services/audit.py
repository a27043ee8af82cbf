"""Audit log: every access to patient data and every security-relevant act is written here."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from monsisra.store.models import AuditEvent


def record(
    session: AsyncSession,
    account_id: int | None,
    action: str,
    *,
    object_type: str = "",
    object_id: object = "",
    patient_id: int | None = None,
    client: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """Add an audit row to the caller's transaction (it commits, or vanishes, with it)."""
    session.add(
        AuditEvent(
            account_id=account_id,
            action=action,
            object_type=object_type,
            object_id=str(object_id),
            patient_id=patient_id,
            client=client,
            detail=detail,
        )
    )
