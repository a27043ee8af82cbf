"""What a delegate may do in the mailbox delegated to her (secrétariat).

Reading is always given; on top of it the owner chooses among preparing drafts, sending on the
owner's behalf and managing the flags (read, favourite, to do, archive, bin). Stored as a sorted,
comma-separated list on the access row; no list (NULL) means every right, as for the owner and the
members of a service mailbox.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum


class Right(StrEnum):
    READ = "read"
    DRAFT = "draft"
    SEND = "send"
    FLAGS = "flags"
    # Not a delegate's right: a member who manages a service mailbox (its card, its expert
    # declaration). Stored on that member's access row; plain members have NULL (ALL_RIGHTS).
    MANAGE = "manage"


ALL_RIGHTS = frozenset({Right.READ, Right.DRAFT, Right.SEND, Right.FLAGS})
MANAGER_RIGHTS = ALL_RIGHTS | {Right.MANAGE}
READ_ONLY = frozenset({Right.READ})

RIGHT_LABELS = {
    Right.READ: "lire les messages",
    Right.DRAFT: "préparer des brouillons",
    Right.SEND: "envoyer de la part du titulaire",
    Right.FLAGS: "classer (lu, favori, à traiter, archive, corbeille)",
    Right.MANAGE: "gérer la boîte de service (fiche, déclaration d'expert)",
}

# Presets offered by the pages; the API takes any list.
PRESETS = {
    "complete": ALL_RIGHTS,
    "lecture": READ_ONLY,
    "brouillons": frozenset({Right.READ, Right.DRAFT, Right.FLAGS}),
}


class BadRights(ValueError):
    """Unknown right names (French message)."""


def parse(values: Iterable[str] | None) -> frozenset[Right]:
    """Rights from names; ``None`` means all of them. Reading is always included."""
    if values is None:
        return ALL_RIGHTS
    names = {str(v).strip().lower() for v in values if str(v).strip()}
    unknown = sorted(n for n in names if n not in {r.value for r in ALL_RIGHTS})
    if unknown:
        raise BadRights(f"droits inconnus : {', '.join(unknown)} (attendus : read, draft, send, flags)")
    return frozenset({Right.READ, *(Right(n) for n in names)})


def encode(rights: frozenset[Right]) -> str | None:
    """The stored form: None for every right (the default), else the sorted list."""
    return None if rights == ALL_RIGHTS else ",".join(sorted(r.value for r in rights))


def decode(stored: str | None) -> frozenset[Right]:
    if stored is None:
        return ALL_RIGHTS
    return frozenset({Right.READ, *(Right(n) for n in stored.split(",") if n in {r.value for r in Right})})


def describe(rights: frozenset[Right]) -> str:
    """« lecture seule », « complète », or the list of what is allowed, in French."""
    if rights >= ALL_RIGHTS:
        return "complète, gestionnaire de la boîte" if Right.MANAGE in rights else "complète"
    if rights <= READ_ONLY:
        return "lecture seule"
    return ", ".join(RIGHT_LABELS[r] for r in Right if r in rights)


def as_list(rights: frozenset[Right]) -> list[str]:
    return [r.value for r in Right if r in rights]
