"""The MSSanté trust space: the whitelist of operator domains we exchange mail with.

Mail from or to a domain outside the list is refused. Our own domain is always trusted.
An entry ``*.example.fr`` trusts every sub-domain of ``example.fr``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from monsisra.services import audit
from monsisra.services.core import Actor, Core
from monsisra.services.errors import Forbidden, Invalid, NotFound
from monsisra.store.gateway import TrustedDomain

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DOMAIN = re.compile(rf"^(?:\*\.)?(?:{_LABEL}\.)+{_LABEL}$")


_changes = [0]


def generation() -> int:
    """Bumped on every change made by this process (lets caches drop stale answers at once)."""
    return _changes[0]


def normalize_domain(raw: str) -> str:
    domain = (raw or "").strip().lower().rstrip(".")
    if "@" in domain:
        domain = domain.rsplit("@", 1)[1]
    if len(domain) > 253 or not _DOMAIN.match(domain):
        raise Invalid(f"domaine invalide : {raw!r}")
    return domain


def _candidates(domain: str) -> list[str]:
    """The entries that would trust ``domain``: itself and ``*.parent`` for each parent."""
    domain = domain.lower().rstrip(".")
    parts = domain.split(".")
    return [domain] + ["*." + ".".join(parts[i:]) for i in range(1, len(parts) - 1)]


async def is_trusted(session: AsyncSession, domain: str, local_domain: str) -> bool:
    if domain.lower() == local_domain.lower():
        return True
    return await operator_of(session, domain) is not None


async def operator_of(session: AsyncSession, domain: str, *, parents: bool = False) -> str | None:
    """The domain of the trust-list entry that covers ``domain`` (``ch-vichy.mssante.fr`` for an
    entry ``*.ch-vichy.mssante.fr``), or None. With ``parents``, a host under a listed domain is
    covered too (a report sent as ``MAILER-DAEMON@mx.ch-vichy.mssante.fr``)."""
    domain = domain.lower().rstrip(".")
    wanted = _candidates(domain)
    if parents:
        labels = domain.split(".")
        wanted += [".".join(labels[i:]) for i in range(1, len(labels) - 1)]
    rows = set(await session.scalars(sa.select(TrustedDomain.domain).where(TrustedDomain.domain.in_(wanted))))
    for candidate in wanted:  # the closest entry first
        if candidate in rows:
            return candidate.removeprefix("*.")
    return None


def _require_admin(actor: Actor | None) -> None:
    if actor is not None and not actor.is_admin:
        raise Forbidden("réservé aux administrateurs de la plateforme")


async def list_domains(core: Core, actor: Actor | None = None) -> list[dict[str, Any]]:
    _require_admin(actor)
    async with core.read() as s:
        rows = await s.scalars(sa.select(TrustedDomain).order_by(TrustedDomain.domain))
        return [{"domain": r.domain, "note": r.note, "added_at": r.added_at.isoformat()} for r in rows]


async def add(core: Core, domains: list[str], note: str = "", actor: Actor | None = None) -> list[str]:
    """Trust these domains (idempotent); returns those newly added. ``actor`` None = CLI."""
    _require_admin(actor)
    wanted = list(dict.fromkeys(normalize_domain(d) for d in domains))
    if not wanted:
        raise Invalid("aucun domaine donné")
    async with core.write() as tx:
        s = tx.session
        have = set(await s.scalars(sa.select(TrustedDomain.domain).where(TrustedDomain.domain.in_(wanted))))
        new = [d for d in wanted if d not in have]
        _changes[0] += 1
        s.add_all(TrustedDomain(domain=d, note=note[:200]) for d in new)
        if new:
            audit.record(s, actor.account_id if actor else None, "trust.add", object_type="domain",
                         object_id=",".join(new)[:64], detail={"domains": new})
    return new


async def remove(core: Core, domain: str, actor: Actor | None = None) -> None:
    _require_admin(actor)
    domain = normalize_domain(domain)
    async with core.write() as tx:
        result = await tx.session.execute(sa.delete(TrustedDomain).where(TrustedDomain.domain == domain))
        _changes[0] += 1
        if result.rowcount == 0:
            raise NotFound(f"domaine absent de la liste de confiance : {domain}")
        audit.record(tx.session, actor.account_id if actor else None, "trust.remove", object_type="domain",
                     object_id=domain[:64])


def parse_file(path: Path) -> list[str]:
    """Domains of a list file: one per line (or the first CSV/whitespace column); ``#`` comments."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise Invalid(f"fichier illisible : {exc}") from None
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        first = re.split(r"[\s;,|]+", line)[0]
        try:
            out.append(normalize_domain(first))
        except Invalid:
            raise Invalid(f"ligne {n} : domaine invalide {first!r}") from None
    return out
