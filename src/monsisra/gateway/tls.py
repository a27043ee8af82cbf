"""TLS for the gateway: certificates (a self-signed development one when none is configured,
a small CA for tests) and the server/client contexts (TLS 1.2 minimum, ECDHE AES-GCM)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from monsisra.config import Settings

# TLS 1.2 suites allowed by the MSSanté rules; TLS 1.3 suites are all AEAD and stay enabled.
CIPHERS = "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:" \
          "ECDHE-ECDSA-AES128-GCM-SHA256"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "MonSisra"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _san(names: list[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for n in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            entries.append(x509.DNSName(n))
    return x509.SubjectAlternativeName(entries)


def _write(path: Path, data: bytes, private: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    tmp.replace(path)


def issue(cn: str, names: list[str], *, ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None,
          is_ca: bool = False, days: int = 825) -> tuple[bytes, bytes]:
    """A (certificate PEM, key PEM) pair, self-signed or signed by ``ca``."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    issuer_name, issuer_key = (ca[0].subject, ca[1]) if ca else (_name(cn), key)
    builder = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(issuer_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True))
    if is_ca:
        builder = builder.add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False),
                                        critical=True)
    else:
        builder = builder.add_extension(_san(names), critical=False).add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    cert = builder.sign(issuer_key, hashes.SHA256())
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def load_ca(cert_pem: bytes, key_pem: bytes) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return x509.load_pem_x509_certificate(cert_pem), key


def certificate_paths(settings: Settings) -> tuple[Path, Path]:
    """The configured certificate, or a development one generated once into the data dir."""
    if settings.tls_cert and settings.tls_key:
        return settings.tls_cert, settings.tls_key
    cert_path = settings.data_dir / "tls" / "dev-cert.pem"
    key_path = settings.data_dir / "tls" / "dev-key.pem"
    if not (cert_path.exists() and key_path.exists()):
        cert, key = issue(settings.domain, [settings.domain, "localhost", "127.0.0.1"])
        _write(key_path, key, private=True)
        _write(cert_path, cert)
    return cert_path, key_path


def _harden(ctx: ssl.SSLContext) -> ssl.SSLContext:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION
    return ctx


def server_context(settings: Settings) -> ssl.SSLContext:
    """STARTTLS for inbound SMTP; client certificates checked against ``tls_trust`` when given."""
    cert, key = certificate_paths(settings)
    ctx = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    ctx.load_cert_chain(cert, key)
    if settings.tls_trust:
        ctx.load_verify_locations(cafile=str(settings.tls_trust))
        ctx.verify_mode = ssl.CERT_REQUIRED if settings.smtp_verify_client else ssl.CERT_OPTIONAL
    return ctx


def client_context(settings: Settings) -> ssl.SSLContext:
    """Outbound: the peer must present a certificate chained to ``tls_trust`` (IGC-Santé)."""
    ctx = _harden(ssl.create_default_context(cafile=str(settings.tls_trust) if settings.tls_trust else None))
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    cert, key = certificate_paths(settings)
    ctx.load_cert_chain(cert, key)  # our operator certificate, for peers that ask for one
    return ctx


def user_context(settings: Settings) -> ssl.SSLContext:
    """Mail clients (IMAP, SMTP submission): the same certificate and TLS rules, no client
    certificate asked for — users log in with their password, inside TLS."""
    cert, key = certificate_paths(settings)
    ctx = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    ctx.load_cert_chain(cert, key)
    return ctx
