"""CPS card login: a TLS client certificate chained to the configured trust anchors
(``MONSISRA_TLS_TRUST``: the IGC-Santé roots in production) names a national id, which names the
account (``accounts.national_id``).

The certificate arrives two ways, both named by the transport: verified by our own HTTPS
listener (``via="tls"``: OpenSSL checked the chain and dates during the handshake), or forwarded,
PEM url-encoded, by a reverse proxy from ``MONSISRA_TRUSTED_PROXIES`` (``via="proxy"``), which
we verify again here (cryptography's path validation, at the current time). Where the id sits in
the subject is configurable (``MONSISRA_CPS_ID_ATTRIBUTES``, ``MONSISRA_CPS_ID_PATTERN``): a CPS
carries the RPPS-based id ``8`` + 11 digits in its subject's serialNumber and CN.

Every refusal (another CA, expired, no id, no account) is audited as ``login.cps.failure``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import Criticality, ExtensionPolicy, PolicyBuilder, Store

from monsisra.config import Settings
from monsisra.domain.clock import utcnow
from monsisra.services import audit, signin
from monsisra.services.core import Core
from monsisra.services.errors import AuthFailed

_ATTRIBUTES = {
    "serialnumber": NameOID.SERIAL_NUMBER, "cn": NameOID.COMMON_NAME, "uid": NameOID.USER_ID,
    "o": NameOID.ORGANIZATION_NAME, "ou": NameOID.ORGANIZATIONAL_UNIT_NAME, "sn": NameOID.SURNAME,
    "gn": NameOID.GIVEN_NAME, "title": NameOID.TITLE,
}


@dataclass(frozen=True)
class Presented:
    """A client certificate (PEM) and how it reached us: ``tls`` (our listener verified it)
    or ``proxy`` (a trusted reverse proxy forwarded it)."""

    pem: str
    via: str


class Refused(Exception):
    def __init__(self, reason: str, detail: dict | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail or {}


@lru_cache(maxsize=4)
def _anchors(path: str, mtime: float) -> tuple[x509.Certificate, ...]:
    return tuple(x509.load_pem_x509_certificates(Path(path).read_bytes()))


def trust_anchors(settings: Settings) -> tuple[x509.Certificate, ...]:
    if not settings.tls_trust:
        return ()
    path = Path(settings.tls_trust)
    return _anchors(str(path), path.stat().st_mtime)


def _verify_chain(settings: Settings, cert: x509.Certificate, now: dt.datetime) -> None:
    anchors = trust_anchors(settings)
    if not anchors:
        raise Refused("aucune ancre de confiance configurée (MONSISRA_TLS_TRUST)")
    # IGC-Santé certificates are not web PKI ones: keep the path checks (signatures, validity,
    # CA flags, lengths), not the web profile's extension rules.
    ca_policy = ExtensionPolicy.permit_all().require_present(x509.BasicConstraints, Criticality.AGNOSTIC, None)
    verifier = (PolicyBuilder().store(Store(list(anchors))).time(now)
                .extension_policies(ca_policy=ca_policy, ee_policy=ExtensionPolicy.permit_all())
                .build_client_verifier())
    try:
        verifier.verify(cert, [])
    except Exception as exc:  # VerificationError, or a malformed extension met on the way
        text = str(exc)
        reason = "certificat expiré ou pas encore valide" if "not valid at validation time" in text \
            else "certificat non émis par une autorité de confiance"
        raise Refused(reason, {"error": text[:200]}) from None


def _check_usage(cert: x509.Certificate) -> None:
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return
    if ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
        raise Refused("certificat non prévu pour l'authentification d'une personne")


def national_id(settings: Settings, cert: x509.Certificate) -> str | None:
    """The national id in the subject: the first configured attribute whose value matches."""
    pattern = re.compile(settings.cps_id_pattern)
    for name in (a.strip().lower() for a in settings.cps_id_attributes.split(",")):
        oid = _ATTRIBUTES.get(name)
        if oid is None:
            continue
        for attribute in cert.subject.get_attributes_for_oid(oid):
            value = attribute.value if isinstance(attribute.value, str) else attribute.value.decode(errors="replace")
            match = pattern.search(value)
            if match:
                return match.group(1) if match.groups() else match.group(0)
    return None


def identify(settings: Settings, presented: Presented, now: dt.datetime | None = None) -> tuple[str, dict]:
    """The national id a presented certificate proves, and what to audit about it."""
    try:
        cert = x509.load_pem_x509_certificate(presented.pem.encode())
    except ValueError:
        raise Refused("certificat illisible") from None
    info = {"via": presented.via, "subject": cert.subject.rfc4514_string()[:300],
            "issuer": cert.issuer.rfc4514_string()[:300], "serial": format(cert.serial_number, "x")[:64],
            "fingerprint": hashlib.sha256(presented.pem.encode()).hexdigest()[:32]}
    now = now or utcnow()
    if presented.via == "tls":
        # Verified in the handshake; its dates again, in case a connection outlived them.
        if not (cert.not_valid_before_utc <= now <= cert.not_valid_after_utc):
            raise Refused("certificat expiré ou pas encore valide", info)
    else:
        try:
            _verify_chain(settings, cert, now)
        except Refused as exc:
            raise Refused(exc.reason, {**info, **exc.detail}) from None
    try:
        _check_usage(cert)
    except Refused as exc:
        raise Refused(exc.reason, info) from None
    found = national_id(settings, cert)
    if not found:
        raise Refused("aucun identifiant national dans le certificat", info)
    return found, info


async def login(core: Core, presented: Presented | None, client: str | None) -> signin.Login:
    """The account of the card presented with this request, or an audited refusal."""
    if presented is None:
        raise AuthFailed("aucune carte CPS présentée : insérez votre carte et choisissez son certificat")
    try:
        nid, info = identify(core.settings, presented)
    except Refused as exc:
        async with core.write() as tx:
            audit.record(tx.session, None, "login.cps.failure", client=client,
                         detail={"reason": exc.reason, **exc.detail})
        raise AuthFailed(f"carte refusée : {exc.reason}") from None
    account = await signin.account_for_national_id(core, nid, "cps", client, info)
    return signin.Login(account, "cps")


async def record_refusal(core: Core, client: str | None, reason: str) -> None:
    """A certificate the TLS handshake itself refused (another CA, expired): no account to name."""
    async with core.write() as tx:
        audit.record(tx.session, None, "login.cps.failure", client=client,
                     detail={"reason": "certificat refusé à la poignée de main TLS", "via": "tls",
                             "error": reason[:200]})
