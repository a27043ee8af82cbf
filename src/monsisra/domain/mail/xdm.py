# ruff: noqa: E501 - the XML templates below read best unwrapped
"""IHE_XDM archives (IHE ITI-32 on media, as MSSanté carries them): a safe reader and a writer.

Reading never trusts the archive: bounded number of entries, total and per-entry size,
compression ratio, no absolute or ``..`` paths, no DTD in the XML. Writing produces the
minimal archive MSSanté expects: INDEX.HTM, README.TXT, ``IHE_XDM/SUBSET01/METADATA.XML``
(ebRIM SubmitObjectsRequest) and a CDA R2 document embedding the PDF.
"""

from __future__ import annotations

import base64
import hashlib
import io
import posixpath
import re
import uuid
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from xml.sax.saxutils import escape, quoteattr

from monsisra.domain.ins import PatientIdentity

MAX_ENTRIES = 100
MAX_TOTAL = 64 * 1024 * 1024
MAX_ENTRY = 32 * 1024 * 1024
MAX_RATIO = 100  # uncompressed / compressed, for entries above 64 KiB
MAX_XML = 4 * 1024 * 1024

RIM = "urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0"
LCM = "urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0"
HL7 = "urn:hl7-org:v3"
SCHEME_TYPE_CODE = "urn:uuid:f0306f51-975f-434e-a61c-c59651d33983"
SCHEME_CLASS_CODE = "urn:uuid:41a5887f-8865-4c09-adf7-e362475b143a"
SCHEME_PATIENT_ID = "urn:uuid:58a6f841-87b3-4a3e-92fd-a8ffeff98427"
SCHEME_UNIQUE_ID = "urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab"
STABLE_DOCUMENT = "urn:uuid:7edca82f-054d-47f2-a032-9b2a5b5186c1"
METADATA_PATH = "IHE_XDM/SUBSET01/METADATA.XML"
LOINC = "2.16.840.1.113883.6.1"

# LOINC document types that are results (biology, imaging); the rest are letters.
RESULT_CODES = {"11502-2", "18748-4", "18842-5x", "52033-8", "85430-7", "68604-8", "18719-5", "18717-9",
                "18723-7", "18725-2", "18728-6", "18729-4", "18767-4", "26436-6", "30954-2"}


class XdmError(Exception):
    """The archive is refused; the message says why (shown to the sender in the SMTP reply)."""


@dataclass
class XdmDocument:
    uri: str = ""
    title: str = ""
    type_code: str = ""
    type_name: str = ""
    mime_type: str = ""
    patient_ins: str | None = None
    patient_oid: str | None = None


XdmPatient = PatientIdentity  # the patient named by METADATA.XML and the CDA


@dataclass
class XdmContent:
    documents: list[XdmDocument] = field(default_factory=list)
    patient: XdmPatient | None = None

    @property
    def title(self) -> str:
        return next((d.title for d in self.documents if d.title), "")

    @property
    def type_codes(self) -> list[str]:
        return [d.type_code for d in self.documents if d.type_code]


def _safe_name(name: str) -> str:
    if "\\" in name or name.startswith("/") or re.match(r"^[A-Za-z]:", name) or "\x00" in name:
        raise XdmError(f"archive IHE_XDM : chemin interdit {name!r}")
    norm = posixpath.normpath(name)
    if norm.startswith("..") or "/../" in f"/{norm}/":
        raise XdmError(f"archive IHE_XDM : chemin interdit {name!r}")
    return norm


def _check(zf: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    infos = zf.infolist()
    if len(infos) > MAX_ENTRIES:
        raise XdmError(f"archive IHE_XDM : trop d'entrées ({len(infos)}, au plus {MAX_ENTRIES})")
    total = 0
    by_name: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        name = _safe_name(info.filename)
        if info.flag_bits & 0x1:
            raise XdmError("archive IHE_XDM : entrée chiffrée")
        total += info.file_size
        if info.file_size > MAX_ENTRY or total > MAX_TOTAL:
            raise XdmError("archive IHE_XDM : contenu décompressé trop volumineux")
        if info.file_size > 65536 and info.file_size > MAX_RATIO * max(info.compress_size, 1):
            raise XdmError("archive IHE_XDM : taux de compression anormal (bombe de décompression)")
        by_name[name.upper()] = info
    return by_name


def _read_bounded(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    # The sizes in the directory may lie: count what really comes out.
    out = bytearray()
    with zf.open(info) as f:
        while chunk := f.read(65536):
            out += chunk
            if len(out) > limit:
                raise XdmError("archive IHE_XDM : entrée plus grande que déclarée")
    return bytes(out)


def _parse_xml(data: bytes) -> ET.Element:
    head = data[:4096].upper()
    if b"<!DOCTYPE" in head or b"<!ENTITY" in data.upper():
        raise XdmError("archive IHE_XDM : DTD interdite dans le XML")
    try:
        return ET.fromstring(data)  # noqa: S314 - DTDs and entities are refused above
    except ET.ParseError as exc:
        raise XdmError(f"archive IHE_XDM : XML invalide ({exc})") from None


def read(data: bytes) -> XdmContent:
    """Open an IHE_XDM.ZIP and read its metadata; raises :class:`XdmError` when refused."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise XdmError(f"archive IHE_XDM illisible ({exc})") from None
    with zf:
        entries = _check(zf)
        meta_info = entries.get(METADATA_PATH)
        if meta_info is None:
            meta_info = next((i for n, i in entries.items() if n.endswith("/METADATA.XML")), None)
        if meta_info is None:
            raise XdmError("archive IHE_XDM sans METADATA.XML")
        try:
            root = _parse_xml(_read_bounded(zf, meta_info, MAX_XML))
            content = _metadata(root)
            subset = posixpath.dirname(_safe_name(meta_info.filename))
            for doc in content.documents:
                info = entries.get(posixpath.join(subset, doc.uri).upper()) if doc.uri else None
                if info is not None and doc.uri.upper().endswith(".XML") and content.patient:
                    _enrich_from_cda(_parse_xml(_read_bounded(zf, info, MAX_XML)), content.patient)
        except (zipfile.BadZipFile, RuntimeError, EOFError, OSError, NotImplementedError) as exc:
            raise XdmError(f"archive IHE_XDM corrompue ({exc})") from None
    return content


def _split_cx(value: str) -> tuple[str | None, str | None]:
    """``247101513112191^^^&1.2.250.1.213.1.4.8&ISO^NH`` → (INS, OID)."""
    ident, _, rest = value.partition("^^^")
    parts = rest.split("&")
    oid = parts[1] if len(parts) > 1 else None
    return (ident.strip() or None), (oid.strip() if oid else None)


def _metadata(root: ET.Element) -> XdmContent:
    content = XdmContent()
    for obj in root.iter(f"{{{RIM}}}ExtrinsicObject"):
        doc = XdmDocument(mime_type=obj.get("mimeType", ""))
        name = obj.find(f"{{{RIM}}}Name/{{{RIM}}}LocalizedString")
        doc.title = (name.get("value", "") if name is not None else "").strip()[:300]
        for slot in obj.findall(f"{{{RIM}}}Slot"):
            values = [v.text or "" for v in slot.iter(f"{{{RIM}}}Value")]
            if slot.get("name") == "URI" and values:
                doc.uri = values[0].strip()
            elif slot.get("name") == "sourcePatientId" and values and not doc.patient_ins:
                doc.patient_ins, doc.patient_oid = _split_cx(values[0])
            elif slot.get("name") == "sourcePatientInfo":
                _patient_info(values, content)
        for cl in obj.findall(f"{{{RIM}}}Classification"):
            if cl.get("classificationScheme") == SCHEME_TYPE_CODE:
                doc.type_code = (cl.get("nodeRepresentation") or "").strip()[:64]
                n = cl.find(f"{{{RIM}}}Name/{{{RIM}}}LocalizedString")
                doc.type_name = (n.get("value", "") if n is not None else "")[:200]
        for ei in obj.findall(f"{{{RIM}}}ExternalIdentifier"):
            if ei.get("identificationScheme") == SCHEME_PATIENT_ID and ei.get("value"):
                doc.patient_ins, doc.patient_oid = _split_cx(ei.get("value", ""))
        content.documents.append(doc)
    first = next((d for d in content.documents if d.patient_ins), None)
    if first is not None:
        pending = content.patient
        content.patient = XdmPatient(ins=first.patient_ins or "", oid=first.patient_oid or "")
        if pending is not None:
            content.patient.family_name = pending.family_name
            content.patient.given_names = pending.given_names
            content.patient.birth_date = pending.birth_date
            content.patient.sex = pending.sex
    return content


def _patient_info(values: list[str], content: XdmContent) -> None:
    p = content.patient or XdmPatient(ins="", oid="")
    for v in values:
        field_, _, val = v.partition("|")
        if field_ == "PID-5":
            parts = val.split("^")
            p.family_name = parts[0][:120]
            p.given_names = (parts[1] if len(parts) > 1 else "")[:200]
        elif field_ == "PID-7":
            p.birth_date = _date(val)
        elif field_ == "PID-8" and val[:1] in "MFU":
            p.sex = val[:1]
    content.patient = p


def _date(hl7: str) -> str | None:
    d = re.sub(r"\D", "", hl7 or "")[:8]
    return f"{d[:4]}-{d[4:6]}-{d[6:8]}" if len(d) == 8 else None


def _enrich_from_cda(cda: ET.Element, patient: XdmPatient) -> None:
    """Fill the patient's traits from the CDA's recordTarget when the metadata lacked them."""
    p = cda.find(f".//{{{HL7}}}recordTarget/{{{HL7}}}patientRole/{{{HL7}}}patient")
    if p is None:
        return
    family = p.find(f"{{{HL7}}}name/{{{HL7}}}family")
    given = p.find(f"{{{HL7}}}name/{{{HL7}}}given")
    if not patient.family_name and family is not None and family.text:
        patient.family_name = family.text.strip()[:120]
    if not patient.given_names and given is not None and given.text:
        patient.given_names = given.text.strip()[:200]
    gender = p.find(f"{{{HL7}}}administrativeGenderCode")
    if not patient.sex and gender is not None and (gender.get("code") or "")[:1] in ("M", "F", "U"):
        patient.sex = gender.get("code", "")[:1]
    birth = p.find(f"{{{HL7}}}birthTime")
    if not patient.birth_date and birth is not None:
        patient.birth_date = _date(birth.get("value", ""))


# --- writing ---------------------------------------------------------------------------------


@dataclass
class XdmAuthor:
    national_id: str = ""
    family_name: str = ""
    given_name: str = ""
    organisation: str = ""


def _ts(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y%m%d%H%M%S")


def build_cda(pdf: bytes, *, title: str, type_code: str, type_name: str, patient: XdmPatient,
              author: XdmAuthor, doc_id: str, at: datetime) -> bytes:
    """A minimal CDA R2 "N1" document (non-XML body) carrying the PDF."""
    fam = escape(patient.family_name)
    giv = escape(patient.given_names)
    birth = (patient.birth_date or "").replace("-", "")
    gender = patient.sex if patient.sex in ("M", "F") else "U"
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<ClinicalDocument xmlns="urn:hl7-org:v3" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <realmCode code="FR"/>
  <typeId root="2.16.840.1.113883.1.3" extension="POCD_HD000040"/>
  <templateId root="2.16.840.1.113883.2.8.2.1"/>
  <templateId root="1.2.250.1.213.1.1.1.1"/>
  <id root="{doc_id}"/>
  <code code={quoteattr(type_code)} codeSystem="{LOINC}" displayName={quoteattr(type_name)}/>
  <title>{escape(title)}</title>
  <effectiveTime value="{_ts(at)}+0000"/>
  <confidentialityCode code="N" codeSystem="2.16.840.1.113883.5.25"/>
  <languageCode code="fr-FR"/>
  <recordTarget><patientRole>
    <id root={quoteattr(patient.oid)} extension={quoteattr(patient.ins)}/>
    <patient><name><family qualifier="BR">{fam}</family><given>{giv}</given></name>
      <administrativeGenderCode code="{gender}" codeSystem="2.16.840.1.113883.5.1"/>
      {f'<birthTime value="{birth}"/>' if birth else '<birthTime nullFlavor="UNK"/>'}</patient>
  </patientRole></recordTarget>
  <author><time value="{_ts(at)}+0000"/><assignedAuthor><id root="1.2.250.1.71.4.2.1" extension={quoteattr(author.national_id or "inconnu")}/>
    <assignedPerson><name><family>{escape(author.family_name)}</family><given>{escape(author.given_name)}</given></name></assignedPerson></assignedAuthor></author>
  <custodian><assignedCustodian><representedCustodianOrganization><id root="1.2.250.1.71.4.2.2" extension="MonSisra"/>
    <name>{escape(author.organisation or "MonSisra")}</name></representedCustodianOrganization></assignedCustodian></custodian>
  <component><nonXMLBody><text mediaType="application/pdf" representation="B64">{base64.b64encode(pdf).decode()}</text></nonXMLBody></component>
</ClinicalDocument>
""".encode()


def _slot(name: str, *values: str) -> str:
    vals = "".join(f"<rim:Value>{escape(v)}</rim:Value>" for v in values)
    return f'<rim:Slot name="{name}"><rim:ValueList>{vals}</rim:ValueList></rim:Slot>'


def build(pdf: bytes, *, title: str, type_code: str = "11488-4", type_name: str = "Note de consultation",
          patient: XdmPatient, author: XdmAuthor, source_address: str, at: datetime | None = None) -> bytes:
    """An IHE_XDM.ZIP holding one CDA R2 document (the PDF inside) and its metadata."""
    at = at or datetime.now(UTC)
    doc_oid = "2.25." + str(uuid.uuid4().int)
    cda = build_cda(pdf, title=title, type_code=type_code, type_name=type_name, patient=patient, author=author,
                    doc_id=doc_oid, at=at)
    pid = f"{patient.ins}^^^&{patient.oid}&ISO^NH"
    pinfo = [f"PID-3|{pid}", f"PID-5|{patient.family_name}^{patient.given_names}^^^^^L"]
    if patient.birth_date:
        pinfo.append("PID-7|" + patient.birth_date.replace("-", ""))
    if patient.sex:
        pinfo.append("PID-8|" + patient.sex)
    author_slot = (f'<rim:Classification classificationScheme="urn:uuid:93606bcf-9494-43ec-9b4e-a7748d1a838d" '
                   f'classifiedObject="Document01" nodeRepresentation="" id="cl00">'
                   f'{_slot("authorPerson", f"{author.national_id}^{author.family_name}^{author.given_name}")}'
                   f"</rim:Classification>")
    metadata = f"""<?xml version="1.0" encoding="UTF-8"?>
<lcm:SubmitObjectsRequest xmlns:lcm="{LCM}" xmlns:rim="{RIM}">
 <rim:RegistryObjectList>
  <rim:ExtrinsicObject id="Document01" mimeType="text/xml" objectType="{STABLE_DOCUMENT}">
   {_slot("creationTime", _ts(at))}
   {_slot("languageCode", "fr-FR")}
   {_slot("hash", hashlib.sha1(cda, usedforsecurity=False).hexdigest())}
   {_slot("size", str(len(cda)))}
   {_slot("URI", "DOC0001.XML")}
   {_slot("sourcePatientId", pid)}
   {_slot("sourcePatientInfo", *pinfo)}
   <rim:Name><rim:LocalizedString value={quoteattr(title)}/></rim:Name>
   {author_slot}
   <rim:Classification classificationScheme="{SCHEME_TYPE_CODE}" classifiedObject="Document01" nodeRepresentation={quoteattr(type_code)} id="cl01">
    {_slot("codingScheme", LOINC)}
    <rim:Name><rim:LocalizedString value={quoteattr(type_name)}/></rim:Name></rim:Classification>
   <rim:ExternalIdentifier identificationScheme="{SCHEME_PATIENT_ID}" value={quoteattr(pid)} registryObject="Document01" id="ei01">
    <rim:Name><rim:LocalizedString value="XDSDocumentEntry.patientId"/></rim:Name></rim:ExternalIdentifier>
   <rim:ExternalIdentifier identificationScheme="{SCHEME_UNIQUE_ID}" value="{doc_oid}" registryObject="Document01" id="ei02">
    <rim:Name><rim:LocalizedString value="XDSDocumentEntry.uniqueId"/></rim:Name></rim:ExternalIdentifier>
  </rim:ExtrinsicObject>
  <rim:RegistryPackage id="SubmissionSet01">
   {_slot("submissionTime", _ts(at))}
   {_slot("intendedRecipient", "")}
   <rim:Name><rim:LocalizedString value={quoteattr(title)}/></rim:Name>
   <rim:ExternalIdentifier identificationScheme="urn:uuid:554ac39e-e3fe-47fe-b233-965d2a147832" value={quoteattr(source_address)} registryObject="SubmissionSet01" id="ei03">
    <rim:Name><rim:LocalizedString value="XDSSubmissionSet.sourceId"/></rim:Name></rim:ExternalIdentifier>
  </rim:RegistryPackage>
 </rim:RegistryObjectList>
</lcm:SubmitObjectsRequest>
""".encode()
    index = (f"<html><head><meta charset=\"utf-8\"><title>IHE_XDM</title></head><body><p>"
             f"{escape(title)}</p><a href=\"IHE_XDM/SUBSET01/DOC0001.XML\">DOC0001.XML</a></body></html>").encode()
    readme = b"Archive IHE_XDM produite par MonSisra (messagerie securisee de sante MSSante).\r\n"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("INDEX.HTM", index)
        zf.writestr("README.TXT", readme)
        zf.writestr(METADATA_PATH, metadata)
        zf.writestr("IHE_XDM/SUBSET01/DOC0001.XML", cda)
    return buf.getvalue()
