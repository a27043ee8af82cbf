"""The two national open-data extraction formats of the directory (pure parsing, no I/O).

* ``PS_LibreAcces_Personne_activite`` — 56 columns, one line per professional *activity*.
* ``Extraction_Correspondance_MSSante`` — 31 columns, one line per published mailbox.

Both are UTF-8, ``|``-separated, one header line; the first ends every line with a trailing
``|``, the second does not (both are accepted on both). Columns are found by header name, so
a reordered file still parses; a header that lacks a column is refused, naming what is missing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from monsisra.domain.text import flatten_line

PERSONS = "personnes"
MAILBOXES = "correspondance"

# Header name → field key, in the order of the official files.
PERSON_COLUMNS: dict[str, str] = {
    "Type d'identifiant PP": "id_type",
    "Identifiant PP": "pp_id",
    "Identification nationale PP": "national_id",
    "Code civilité d'exercice": "title_code",
    "Libellé civilité exercice": "title",
    "Code civilité": "civility_code",
    "Libellé civilité": "civility",
    "Nom d'exercice": "last_name",
    "Prénom d'exercice": "first_name",
    "Code profession": "profession_code",
    "Libellé profession": "profession",
    "Code catégorie professionnelle": "category_code",
    "Libellé catégorie professionnelle": "category",
    "Code type savoir-faire": "skill_type_code",
    "Libellé type savoir-faire": "skill_type",
    "Code savoir-faire": "specialty_code",
    "Libellé savoir-faire": "specialty",
    "Code mode exercice": "mode_code",
    "Libellé mode exercice": "mode",
    "Numéro SIRET site": "siret",
    "Numéro SIREN site": "siren",
    "Numéro FINESS site": "finess",
    "Numéro FINESS établissement juridique": "finess_legal",
    "Identifiant technique de la structure": "structure_id",
    "Raison sociale site": "site_name",
    "Enseigne commerciale site": "trade_name",
    "Complément destinataire (coord. structure)": "addr_recipient",
    "Complément point géographique (coord. structure)": "addr_place",
    "Numéro Voie (coord. structure)": "street_number",
    "Indice répétition voie (coord. Structure)": "street_number_suffix",
    "Code type de voie (coord. structure)": "street_type_code",
    "Libellé type de voie (coord. structure)": "street_type",
    "Libellé Voie (coord. structure)": "street",
    "Mention distribution (coord. structure)": "distribution",
    "Bureau cedex (coord. structure)": "cedex",
    "Code postal (coord. structure)": "postcode",
    "Code commune (coord. structure)": "commune_code",
    "Libellé commune (coord. structure)": "commune",
    "Code pays (coord. structure)": "country_code",
    "Libellé pays (coord. structure)": "country",
    "Téléphone (coord. structure)": "phone",
    "Téléphone 2 (coord. structure)": "phone2",
    "Télécopie (coord. structure)": "fax",
    "Adresse e-mail (coord. structure)": "email",
    "Code département (coord. structure)": "department_code",
    "Libellé département (coord. structure)": "department",
    "Ancien identifiant de la structure": "old_structure_id",
    "Autorité d'enregistrement": "authority",
    "Code secteur d'activité": "sector_code",
    "Libellé secteur d'activité": "sector",
    "Code section tableau pharmaciens": "pharma_section_code",
    "Libellé section tableau pharmaciens": "pharma_section",
    "Code fonction": "function_code",
    "Libellé fonction": "function",
    "Code genre d'activité": "genre_code",
    "Libellé genre d'activité": "genre",
}

MAILBOX_COLUMNS: dict[str, str] = {
    "Type de BAL": "kind",
    "Adresse BAL": "address",
    "Type Identifiant PP": "id_type",
    "Identifiant PP": "pp_id",
    "Identification nationale PP": "national_id",
    "Type identifiant structure": "structure_id_type",
    "Identification Structure": "structure_id",
    "Service de rattachement": "service",
    "Civilité d'exercice": "title",
    "Nom d'exercice": "last_name",
    "Prénom d'exercice": "first_name",
    "Catégorie profession": "category_code",
    "Libellé de catégorie profession": "category",
    "Code Profession": "profession_code",
    "Libellé Profession": "profession",
    "Code savoir-faire": "specialty_code",
    "Libellé savoir-faire": "specialty",
    "Dématérialisation": "paperless",
    "Raison Sociale structure BAL": "org_name",
    "Enseigne commerciale structure BAL": "trade_name",
    "L2COMPLEMENTLOCALISATION": "addr_place",
    "L3COMPLEMENTDISTRIBUTION": "addr_distribution",
    "L4NUMEROVOIE": "street_number",
    "L4COMPLEMENTNUMEROVOIE": "street_number_suffix",
    "NL4TYPEVOIE": "street_type",
    "L4LIBELLEVOIE": "street",
    "L5LIEUDITMENTION": "locality",
    "L6LIGNEACHEMINEMENT": "delivery_line",
    "Code postal": "postcode",
    "Département": "department_code",
    "Pays": "country",
}

FORMATS = {PERSONS: PERSON_COLUMNS, MAILBOXES: MAILBOX_COLUMNS}
FILE_PREFIXES = {"PS_LibreAcces_Personne_activite": PERSONS, "Extraction_Correspondance_MSSante": MAILBOXES}

MAILBOX_KINDS = frozenset({"PER", "ORG", "APP", "CAB"})
_NATIONAL_ID = re.compile(r"^[0-9][0-9A-Z]{4,19}$")
_ADDRESS = re.compile(r"^[^@\s|]{1,64}@[A-Za-z0-9.-]{1,190}\.[A-Za-z]{2,}$")
_STAMP = re.compile(r"_(\d{12})(?:\.\w+)?$")


class HeaderError(ValueError):
    """The first line is not the header of a known extraction format."""

    def __init__(self, message: str, missing: list[str] | None = None) -> None:
        super().__init__(message)
        self.missing = missing or []


class LineError(ValueError):
    """A data line that cannot be used; carries its 1-based line number."""

    def __init__(self, line_no: int, message: str) -> None:
        super().__init__(f"ligne {line_no} : {message}")
        self.line_no = line_no
        self.reason = message


@dataclass(frozen=True)
class Layout:
    """Where each field sits in the lines of one file."""

    kind: str
    width: int
    positions: dict[str, int] = field(default_factory=dict)


def split_line(line: str) -> list[str]:
    """Fields of one line, without the line end; ``|`` is never escaped in these files."""
    return line.rstrip("\r\n").split("|")


def _clean_header(names: list[str]) -> list[str]:
    out = [n.strip().lstrip("\ufeff") for n in names]
    if out and out[-1] == "":
        out.pop()  # trailing "|"
    return out


def detect(header_line: str, filename: str = "") -> Layout:
    """The layout of a file from its header line, or :class:`HeaderError` naming missing columns."""
    names = _clean_header(split_line(header_line))
    present = set(names)
    expected_kind = next((k for prefix, k in FILE_PREFIXES.items() if prefix in filename), None)
    scores = {kind: len(present & set(cols)) for kind, cols in FORMATS.items()}
    kind = expected_kind or max(scores, key=lambda k: scores[k])
    columns = FORMATS[kind]
    missing = [c for c in columns if c not in present]
    if missing:
        label = "personnes/activités (56 colonnes)" if kind == PERSONS else "correspondance MSSanté (31 colonnes)"
        shown = ", ".join(f"« {m} »" for m in missing[:12]) + (" …" if len(missing) > 12 else "")
        raise HeaderError(f"en-tête non conforme au format {label} : colonne(s) manquante(s) {shown}", missing)
    positions = {key: names.index(name) for name, key in columns.items()}
    return Layout(kind, len(names), positions)


def parse(layout: Layout, line: str, line_no: int) -> dict[str, str]:
    """One data line as ``{field: value}`` (stripped), or :class:`LineError`. Control characters
    in a field become spaces (DESIGN §6: no NUL or stray line break enters the store)."""
    values = split_line(flatten_line(line))
    if len(values) == layout.width + 1 and values[-1] == "":
        values.pop()
    if len(values) != layout.width:
        raise LineError(line_no, f"{len(values)} champs au lieu de {layout.width}")
    row = {key: values[i].strip() for key, i in layout.positions.items()}
    if layout.kind == PERSONS:
        nid = row["national_id"]
        if not nid or not _NATIONAL_ID.match(nid):
            raise LineError(line_no, f"identification nationale PP invalide : « {nid} »")
        if not row["last_name"]:
            raise LineError(line_no, "nom d'exercice absent")
    else:
        address = row["address"].lower()
        if not _ADDRESS.match(address):
            raise LineError(line_no, f"adresse BAL invalide : « {row['address']} »")
        row["address"] = address
        kind = row["kind"].upper()
        if kind not in MAILBOX_KINDS:
            raise LineError(line_no, f"type de BAL inconnu : « {row['kind']} »")
        row["kind"] = kind
        nid = row["national_id"]
        if nid and not _NATIONAL_ID.match(nid):
            raise LineError(line_no, f"identification nationale PP invalide : « {nid} »")
    return row


def read_lines(layout: Layout, lines: Iterable[tuple[int, str]]) -> Iterator[dict[str, str] | LineError]:
    """Parsed rows (or the error of each bad line) of ``(line_no, text)`` pairs; blanks skipped."""
    for line_no, text in lines:
        if not text.strip():
            continue
        try:
            yield parse(layout, text, line_no)
        except LineError as exc:
            yield exc


def file_stamp(name: str) -> str | None:
    """The ``YYYYMMDDhhmm`` extraction stamp of a file name, if any."""
    m = _STAMP.search(name)
    return m.group(1) if m else None


def street_line(row: dict[str, str]) -> str:
    """The street part of an address (number, suffix, type, name) on one line."""
    parts = [row.get("street_number", ""), row.get("street_number_suffix", ""),
             row.get("street_type", "") or row.get("street_type_code", ""), row.get("street", "")]
    return " ".join(p for p in parts if p)
