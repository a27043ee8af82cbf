"""Publication of our mailboxes: the national correspondence format (31 columns) and FHIR R4
(Practitioner, PractitionerRole, Organization with their MSSanté mailboxes).
"""

from __future__ import annotations

import io
from typing import Any

import sqlalchemy as sa

from monsisra.domain import directory_format as fmt
from monsisra.domain import directory_search as ds
from monsisra.domain.clock import utcnow
from monsisra.services.core import Core
from monsisra.services.directory.local import sync_local
from monsisra.store.directory import (
    DirMailbox,
)
from monsisra.store.models import Account, Mailbox


async def _local_entries(core: Core) -> list[tuple[Mailbox, Account | None, DirMailbox | None]]:
    await sync_local(core)
    async with core.read() as s:
        boxes = (await s.execute(sa.select(Mailbox).where(Mailbox.active.is_(True)).order_by(Mailbox.id))
                 ).scalars().all()
        owners = {a.id: a for a in (await s.execute(sa.select(Account).where(
            Account.id.in_({b.owner_account_id for b in boxes if b.owner_account_id})))).scalars()}
        entries = {e.address: e for e in (await s.execute(sa.select(DirMailbox).where(
            DirMailbox.source == "local"))).scalars()}
    return [(b, owners.get(b.owner_account_id) if b.kind == "PER" else None, entries.get(b.address)) for b in boxes]


_PROFESSION_CODES = {"medecin": "10", "pharmacien": "21", "chirurgien dentiste": "40", "sage femme": "50",
                     "infirmier": "60", "infirmiere": "60", "masseur kinesitherapeute": "70",
                     "pedicure podologue": "80", "orthophoniste": "91", "orthoptiste": "92"}


def _profession_code(account: Account) -> str:
    return account.profession_code or _PROFESSION_CODES.get(" ".join(ds.words(account.profession)), "")


async def export_correspondance(core: Core, out: io.TextIOBase) -> int:
    """Write our mailboxes in the national correspondence format (31 columns); returns lines written."""
    header = list(fmt.MAILBOX_COLUMNS)
    out.write("|".join(header) + "\n")
    n = 0
    for box, owner, entry in await _local_entries(core):
        if box.kind == "PER" and owner is None:
            continue
        nid = (owner.national_id or "") if owner else ""
        row = dict.fromkeys(fmt.MAILBOX_COLUMNS.values(), "")
        row.update(kind=box.kind, address=box.address, country="France", paperless="O")
        if owner is not None:
            row.update(id_type=nid[:1], pp_id=nid[1:], national_id=nid,
                       title={"Dr": "Docteur", "Pr": "Professeur"}.get(owner.civility, owner.civility),
                       last_name=owner.last_name.upper(), first_name=owner.first_name, category_code="C",
                       category="Civil", profession_code=_profession_code(owner), profession=owner.profession,
                       specialty=owner.specialty)
        else:
            row.update(service=box.display_name, org_name=box.organisation,
                       structure_id_type="1" if box.finess else "", structure_id=f"1{box.finess}" if box.finess
                       else "")
        if entry is not None:
            row.update(postcode=entry.postcode, department_code=entry.department_code,
                       delivery_line=f"{entry.postcode} {entry.city.upper()}".strip())
        out.write("|".join(str(row[k]).replace("|", " ").replace("\n", " ") for k in fmt.MAILBOX_COLUMNS.values())
                  + "\n")
        n += 1
    return n


MSS_EXTENSION = "https://interop.esante.gouv.fr/ig/fhir/annuaire/StructureDefinition/as-ext-mailbox-mss-metadata"


RPPS_SYSTEM = "urn:oid:1.2.250.1.71.4.2.1"


FINESS_SYSTEM = "urn:oid:1.2.250.1.71.4.2.2"


PROFESSION_SYSTEM = "https://mos.esante.gouv.fr/NOS/TRE_G15-ProfessionSante/FHIR/TRE-G15-ProfessionSante"


BAL_TYPE_SYSTEM = "https://mos.esante.gouv.fr/NOS/TRE_R257-TypeBAL/FHIR/TRE-R257-TypeBAL"


def _telecom(box: Mailbox) -> dict[str, Any]:
    return {"system": "email", "value": box.address, "use": "work", "extension": [{
        "url": MSS_EXTENSION,
        "extension": [
            {"url": "type", "valueCodeableConcept": {"coding": [{"system": BAL_TYPE_SYSTEM, "code": box.kind}]}},
            {"url": "description", "valueString": box.display_name},
            {"url": "digitization", "valueBoolean": True},
        ]}]}


async def fhir_bundle(core: Core, *, name: str = "", identifier: str = "", mailbox: str = "",
                      resource_type: str | None = None, bundle_type: str = "collection") -> dict[str, Any]:
    """Our mailboxes as a FHIR R4 Bundle (Practitioner, PractitionerRole, Organization, HealthcareService)."""
    wanted_name = ds.words(name)
    entries: list[dict[str, Any]] = []
    orgs: dict[str, str] = {}
    base = f"https://{core.settings.domain}/fhir"

    def keep(text: str, ids: list[str], address: str) -> bool:
        haystack = set(ds.words(text))
        if wanted_name and not all(any(h.startswith(w) for h in haystack) for w in wanted_name):
            return False
        if identifier and identifier.split("|")[-1] not in ids:
            return False
        return not (mailbox and mailbox.lower() != address)

    def add(resource: dict[str, Any]) -> None:
        if resource_type is None or resource["resourceType"] == resource_type:
            entries.append({"fullUrl": f"{base}/{resource['resourceType']}/{resource['id']}", "resource": resource,
                            **({"search": {"mode": "match"}} if bundle_type == "searchset" else {})})

    for box, owner, entry in await _local_entries(core):
        if owner is not None:
            nid = owner.national_id or ""
            if not keep(f"{owner.first_name} {owner.last_name}", [nid], box.address):
                continue
            pid = f"pr-{box.id}"
            practitioner: dict[str, Any] = {
                "resourceType": "Practitioner", "id": pid, "active": True,
                "name": [{"family": owner.last_name.upper(), "given": [owner.first_name] if owner.first_name else [],
                          **({"prefix": [owner.civility]} if owner.civility else {})}],
                "telecom": [_telecom(box)]}
            if nid:
                practitioner["identifier"] = [{"system": RPPS_SYSTEM, "value": nid}]
            add(practitioner)
            role: dict[str, Any] = {"resourceType": "PractitionerRole", "id": f"prr-{box.id}", "active": True,
                                    "practitioner": {"reference": f"Practitioner/{pid}"},
                                    "telecom": [_telecom(box)]}
            code = _profession_code(owner)
            if owner.profession:
                role["code"] = [{"coding": [{"system": PROFESSION_SYSTEM, "code": code or "00",
                                             "display": owner.profession}], "text": owner.profession}]
            if owner.specialty:
                role["specialty"] = [{"text": owner.specialty}]
            add(role)
        elif box.kind != "PER":
            if not keep(f"{box.display_name} {box.organisation}", [box.finess or ""], box.address):
                continue
            org_name = box.organisation or box.display_name
            if org_name not in orgs:
                orgs[org_name] = f"org-{len(orgs) + 1}"
                org: dict[str, Any] = {"resourceType": "Organization", "id": orgs[org_name], "active": True,
                                       "name": org_name}
                if box.finess:
                    org["identifier"] = [{"system": FINESS_SYSTEM, "value": box.finess}]
                add(org)
            service: dict[str, Any] = {"resourceType": "HealthcareService", "id": f"hs-{box.id}", "active": True,
                                       "providedBy": {"reference": f"Organization/{orgs[org_name]}"},
                                       "name": box.display_name, "telecom": [_telecom(box)]}
            if box.description:
                service["comment"] = box.description[:1000]
            if entry is not None and entry.city:
                service["extraDetails"] = f"{entry.postcode} {entry.city}".strip()
            add(service)
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": bundle_type, "timestamp": utcnow().isoformat(),
                              "entry": entries}
    if bundle_type == "searchset":
        bundle["total"] = len(entries)
    _validate_fhir(bundle)
    return bundle


def _validate_fhir(bundle: dict[str, Any]) -> None:
    from fhir.resources.R4B.bundle import Bundle

    Bundle.model_validate(bundle)
