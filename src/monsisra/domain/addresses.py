"""Mail addresses: validation and the ``prenom.nom@domain`` rule for new mailboxes."""

from __future__ import annotations

import re

from monsisra.domain.text import fold

# A deliberately strict addr-spec: dot-atom local part and a DNS domain. MSSanté addresses
# are always of this form; anything else is refused rather than guessed at.
_LOCAL = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
_DOMAIN = r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_ADDRESS = re.compile(rf"^({_LOCAL})@({_DOMAIN})$")

PATIENT_DOMAIN = "patient.mssante.fr"


def normalize_address(address: str) -> str | None:
    """The canonical (lower-case, trimmed) address, or ``None`` when it is malformed."""
    candidate = address.strip()
    if len(candidate) > 254 or not _ADDRESS.match(candidate):
        return None
    local, domain = candidate.rsplit("@", 1)
    if len(local) > 64:
        return None
    return f"{local.lower()}@{domain.lower()}"


def domain_of(address: str) -> str:
    return address.rsplit("@", 1)[1].lower()


def local_part(text: str) -> str:
    """A name folded to the ``[a-z0-9-]`` alphabet of local parts."""
    folded = fold(text)
    folded = re.sub(r"[\s'’]+", "-", folded)
    folded = re.sub(r"[^a-z0-9-]", "", folded)
    return re.sub(r"-{2,}", "-", folded).strip("-")


def base_local_part(first_name: str, last_name: str) -> str:
    """``prenom.nom`` for a person; either part may be empty."""
    parts = [p for p in (local_part(first_name), local_part(last_name)) if p]
    if not parts:
        raise ValueError("un nom ou un prénom est nécessaire pour créer une adresse")
    return ".".join(parts)


def candidate_addresses(base: str, domain: str):
    """``base@domain``, then ``base2@domain``, ``base3@domain``… for collisions."""
    yield f"{base}@{domain}"
    n = 2
    while True:
        yield f"{base}{n}@{domain}"
        n += 1
