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
    """The INS in canonical form (upper-case, no spaces) or :class:`InvalidINS`.

    Spaces (and the dots some cards print) are accepted as typed from the card: « 1 80 01 15 014
    001 23 ». The message says which rule failed, in words a secretary understands."""
    ins = re.sub(r"[\s.\-]", "", value or "").upper()
    if not ins:
        raise InvalidINS("l'INS est obligatoire")
    if len(ins) != 15:
        raise InvalidINS(f"l'INS doit compter 15 caractères (sexe, année, mois, lieu, ordre, clé) : "
                         f"{len(ins)} saisi{'s' if len(ins) > 1 else ''}")
    if not _INS.match(ins):
        raise InvalidINS("l'INS ne contient que des chiffres (2A ou 2B pour la Corse) et commence par 1, 2, 3, 7 "
                         "ou 8")
    if ins_key(ins[:13]) != int(ins[13:]):
        raise InvalidINS("la clé de l'INS (deux derniers chiffres) ne correspond pas : vérifiez la saisie")
    return ins


def format_ins(ins: str) -> str:
    """As printed on the card: « 1 80 01 15 014 001 23 »."""
    if len(ins) != 15:
        return ins
    return " ".join((ins[0], ins[1:3], ins[3:5], ins[5:7], ins[7:10], ins[10:13], ins[13:]))


def is_nia(ins: str, oid: str) -> bool:
    """A NIA (numéro d'identification d'attente, people awaiting their NIR) rather than a NIR."""
    return oid == OID_NIA or ins[:1] in ("7", "8")


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


SEXES = {"M": "Masculin", "F": "Féminin", "U": "Inconnu"}
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_BIRTHPLACE = re.compile(r"^(?:\d{5}|2[AB]\d{3})$")
MAX_NAME = 120


def identity_errors(p: PatientIdentity) -> dict[str, str]:
    """Field → French message for each trait that is wrong (empty: the identity is usable).

    Also normalises ``p`` in place: canonical INS, family names upper-case, one space between
    words, sex upper-case, birthplace upper-case."""
    errors: dict[str, str] = {}
    try:
        p.ins = validate_ins(p.ins)
    except InvalidINS as exc:
        errors["ins"] = str(exc)
    if p.oid not in KNOWN_OIDS:
        errors["oid"] = "OID d'INS inconnu (NIR, NIA, test ou démonstration)"
    elif "ins" not in errors and p.oid == OID_NIR and p.ins[:1] in ("7", "8"):
        errors["ins"] = "un INS commençant par 7 ou 8 est un NIA : choisissez l'OID NIA"
    for field, limit in (("family_name", MAX_NAME), ("given_names", 200)):
        value = " ".join(str(getattr(p, field) or "").split())
        if any(ord(c) < 32 or 0x7F <= ord(c) < 0xA0 for c in value):
            errors[field] = "caractère interdit"
        elif len(value) > limit:
            errors[field] = f"au plus {limit} caractères"
        setattr(p, field, value.upper() if field == "family_name" else value)
    if p.birth_date:
        value = p.birth_date.strip()
        if not _DATE.match(value):
            errors["birth_date"] = "date de naissance au format AAAA-MM-JJ"
        else:
            from datetime import date

            try:
                born = date.fromisoformat(value)
            except ValueError:
                errors["birth_date"] = "date de naissance impossible"
            else:
                if born > date.today() or born.year < 1880:
                    errors["birth_date"] = "date de naissance impossible"
        p.birth_date = value
    else:
        p.birth_date = None
    if p.sex:
        p.sex = p.sex.strip().upper()[:1] or None
        if p.sex not in SEXES:
            errors["sex"] = "sexe : M, F ou U"
    else:
        p.sex = None
    if p.birthplace:
        p.birthplace = p.birthplace.strip().upper()
        if not _BIRTHPLACE.match(p.birthplace):
            errors["birthplace"] = "lieu de naissance : code INSEE de la commune (5 caractères, 99xxx à l'étranger)"
    else:
        p.birthplace = None
    return errors
