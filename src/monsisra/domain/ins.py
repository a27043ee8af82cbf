"""INS (Identifiant National de Santé): format and key, per DESIGN §5."""

from __future__ import annotations

import re
from dataclasses import dataclass

OID_NIR = "1.2.250.1.213.1.4.8"
OID_NIA = "1.2.250.1.213.1.4.9"
OID_TEST = "1.2.250.1.213.1.4.10"
OID_DEMO = "1.2.250.1.213.1.4.11"
KNOWN_OIDS = {OID_NIR, OID_NIA, OID_TEST, OID_DEMO}

_INS = re.compile(r"^[12378]\d{4}(?:\d{2}|2A|2B)\d{6}\d{2}$")


class InvalidINS(ValueError):
    pass


def ins_key(first13: str) -> int:
    """97 − (first 13 digits mod 97), with Corsica's 2A → 19 and 2B → 18."""
    digits = first13.upper().replace("2A", "19").replace("2B", "18")
    return 97 - int(digits) % 97


def validate_ins(value: str) -> str:
    """The INS in canonical form (upper-case, no spaces) or :class:`InvalidINS`."""
    ins = re.sub(r"\s", "", value).upper()
    if not _INS.match(ins):
        raise InvalidINS("l'INS doit compter 15 caractères (sexe, année, mois, lieu, ordre, clé)")
    if ins_key(ins[:13]) != int(ins[13:]):
        raise InvalidINS("la clé de l'INS est invalide")
    return ins


def is_valid_ins(value: str) -> bool:
    try:
        validate_ins(value)
    except InvalidINS:
        return False
    return True


@dataclass
class PatientIdentity:
    """A patient as messages name them: INS with its OID, and the identity traits when known."""

    ins: str
    oid: str = OID_NIR
    family_name: str = ""
    given_names: str = ""
    birth_date: str | None = None  # ISO date
    sex: str | None = None  # M / F / U
    birthplace: str | None = None  # INSEE code
