"""Helpers of the identity tests (issue 15, items 1-4): real ``monsisra serve`` processes,
CPS-like certificates from a test CA, the audit log read straight from the database, and the
Node programs (an OpenID provider standing for Pro Santé Connect, a relying party) installed by
the tests themselves into a cache directory with ``npm ci``."""

from __future__ import annotations

import datetime as dt
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from sqlalchemy.ext.asyncio import create_async_engine

from monsisra.gateway import tls
from monsisra.store.models import AuditEvent
from tests.support import _run_alone, free_port

EXE = [sys.executable, "-m", "monsisra.cli"]
NODE_DIR = Path(__file__).parent / "node"
WAIT = 30.0


class ServeProcess:
    """One real ``monsisra serve``; stdout and stderr in ``log``."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log = env, log
        self.http_port, self.https_port = int(env["MONSISRA_HTTP_PORT"]), int(env["MONSISRA_HTTPS_PORT"])
        out = log.open("ab")
        self.proc = subprocess.Popen([*EXE, "serve", "--no-migrate"], env=env, stdout=out, stderr=out)
        out.close()
        deadline = time.monotonic() + 90
        while True:
            assert self.proc.poll() is None, log.read_text()[-3000:]
            try:
                if httpx.get(f"{self.http}/openapi.json", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "serve did not start"
            time.sleep(0.2)

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def https(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)


def serve_env(url: str, data_dir: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "MONSISRA_DATABASE_URL": url, "MONSISRA_DATA_DIR": str(data_dir),
            "MONSISRA_SECRET_KEY": "identity-test-secret-" + "x" * 32, "MONSISRA_SMTP_ENABLED": "false",
            "MONSISRA_RUN_WORKERS": "false", "MONSISRA_SMTP_PORT": str(free_port()),
            "MONSISRA_HTTP_PORT": str(free_port()), "MONSISRA_HTTPS_PORT": str(free_port()), **extra}


def cli(env: dict[str, str], *args: str) -> str:
    r = subprocess.run([*EXE, *args], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def audit_rows(url: str, action: str) -> list[dict]:
    """The audit entries of ``action`` (detail, account_id, client), read from the database."""

    async def read() -> list[dict]:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as conn:
                rows = (await conn.execute(sa.select(AuditEvent.detail, AuditEvent.account_id, AuditEvent.client)
                                           .where(AuditEvent.action == action).order_by(AuditEvent.id))).all()
        finally:
            await engine.dispose()
        return [{**(json.loads(d) if isinstance(d, str) else (d or {})), "account_id": a, "client": c}
                for d, a, c in rows]

    return _run_alone(read())


def wait_for_audit(url: str, action: str, predicate, timeout: float = WAIT) -> dict:
    """The first ``action`` entry for which ``predicate`` holds, waiting a bounded time (some are
    written just after the response, such as a refused TLS handshake's)."""
    deadline = time.monotonic() + timeout
    while True:
        for row in audit_rows(url, action):
            if predicate(row):
                return row
        assert time.monotonic() < deadline, f"no matching {action!r} audit entry within {timeout}s"
        time.sleep(0.2)


# --- certificates ---------------------------------------------------------------------------


def new_ca(base: Path, name: str) -> tuple[Path, Path]:
    base.mkdir(parents=True, exist_ok=True)
    cert, key = tls.issue(name, [], is_ca=True)
    (base / f"{name}.pem").write_bytes(cert)
    (base / f"{name}.key").write_bytes(key)
    return base / f"{name}.pem", base / f"{name}.key"


def card(ca: tuple[Path, Path], out: Path, national_id: str, given: str, family: str, *,
         days: tuple[int, int] = (-1, 365)) -> tuple[Path, Path]:
    """A certificate shaped like a CPS's authentication one: the national id in the subject's
    serialNumber and CN, names, clientAuth; valid from ``days[0]`` to ``days[1]`` days from now."""
    ca_cert, ca_key = tls.load_ca(ca[0].read_bytes(), ca[1].read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    subject = x509.Name([
        x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "CABINET MEDICAL TEST"),
        x509.NameAttribute(NameOID.SURNAME, family.upper()),
        x509.NameAttribute(NameOID.GIVEN_NAME, given),
        x509.NameAttribute(NameOID.SERIAL_NUMBER, national_id),
        x509.NameAttribute(NameOID.COMMON_NAME, f"{national_id}/{family.upper()} {given}"),
    ])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now + dt.timedelta(days=days[0]))
            .not_valid_after(now + dt.timedelta(days=days[1]))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    out.mkdir(parents=True, exist_ok=True)
    c, k = out / f"{national_id}-{days[1]}.pem", out / f"{national_id}-{days[1]}.key"
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    return c, k


def server_cert(ca: tuple[Path, Path], out: Path) -> tuple[Path, Path]:
    cert, key = tls.issue("127.0.0.1", ["127.0.0.1", "localhost"], ca=tls.load_ca(ca[0].read_bytes(),
                                                                                    ca[1].read_bytes()))
    (out / "server.pem").write_bytes(cert)
    (out / "server.key").write_bytes(key)
    return out / "server.pem", out / "server.key"


# --- Node programs ----------------------------------------------------------------------------


def node_modules(cache: Path) -> Path:
    """``tests/node`` installed (``npm ci`` from its lock file) into ``cache``, once per cache
    directory; skips when Node or npm is missing."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.skip("Node.js and npm are needed for the OpenID tests (.ci/run installs them)")
    target = cache / "node"
    stamp = target / ".installed"
    lock = (NODE_DIR / "package-lock.json").read_bytes()
    if not stamp.exists() or stamp.read_bytes() != lock:
        target.mkdir(parents=True, exist_ok=True)
        for name in ("package.json", "package-lock.json"):
            shutil.copy(NODE_DIR / name, target / name)
        r = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error"],
                           cwd=target, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout + r.stderr
        stamp.write_bytes(lock)
    for script in NODE_DIR.glob("*.mjs"):
        shutil.copy(script, target / script.name)
    return target


class NodeProcess:
    """A Node program of ``tests/node`` that prints one JSON line per event, the first when it is
    ready; a thread reads them into a queue (no event loop: Playwright's may be running)."""

    def __init__(self, modules: Path, script: str, config: dict, log: Path) -> None:
        self.log = log
        out = log.open("ab")
        self.proc = subprocess.Popen(["node", str(modules / script), json.dumps(config)], cwd=modules,
                                     stdout=subprocess.PIPE, stderr=out, text=True)
        out.close()
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self.ready = self.read_line()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put("")

    def read_line(self, timeout: float = 60.0) -> dict:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"{self.proc.args[1]} said nothing within {timeout}s") from None
        assert line, f"{self.proc.args[1]} ended: {self.log.read_text()[-3000:]}"
        return json.loads(line)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
