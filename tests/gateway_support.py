"""Test peers for the gateway: a test CA, a private Postfix instance standing for another
MSSanté operator, small SMTP helpers (smtplib with STARTTLS, swaks), and the ``gw`` fixture (our
server with its SMTP gateway, next to that Postfix) shared by the gateway test modules."""

from __future__ import annotations

import contextlib
import email
import email.policy
import os
import pwd
import re
import shutil
import smtplib
import ssl
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path

from monsisra.gateway import tls
from monsisra.services import demo as demo_service
from monsisra.services import trust
from tests.support import FIXTURES, RunningServer, free_port, fresh_database, make_settings, start_server

POSTFIX = Path("/usr/sbin/postfix")
SWAKS = Path("/usr/bin/swaks")
OTHER_DOMAIN = "autre-operateur.localhost"


@dataclass
class PKI:
    """A CA standing for IGC-Santé, and certificates it issued."""

    dir: Path
    ca_cert: Path
    ca_key: Path

    @classmethod
    def create(cls, base: Path) -> PKI:
        base.mkdir(parents=True, exist_ok=True)
        cert, key = tls.issue("IGC-Test CA", [], is_ca=True)
        (base / "ca.pem").write_bytes(cert)
        (base / "ca.key").write_bytes(key)
        return cls(base, base / "ca.pem", base / "ca.key")

    def issue(self, name: str, names: list[str]) -> tuple[Path, Path]:
        ca = tls.load_ca(self.ca_cert.read_bytes(), self.ca_key.read_bytes())
        cert, key = tls.issue(names[0], names, ca=ca)
        c, k = self.dir / f"{name}.pem", self.dir / f"{name}.key"
        c.write_bytes(cert)
        k.write_bytes(key)
        k.chmod(0o640)
        return c, k


def client_ssl(pki: PKI, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
    if cert:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    return ctx


def smtp_send(port: int, mail_from: str, rcpts: list[str], data: bytes, ctx: ssl.SSLContext,
              starttls: bool = True) -> tuple[int, str]:
    """One SMTP transaction; returns the final reply (or the first refusal)."""
    data = re.sub(rb"\r?\n", b"\r\n", data)  # SMTP lines end with CRLF
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as c:
        c.ehlo("client.test")
        if starttls:
            c.starttls(context=ctx)
            c.ehlo("client.test")
        code, msg = c.mail(mail_from)
        if code >= 400:
            return code, msg.decode()
        for r in rcpts:
            code, msg = c.rcpt(r)
            if code >= 400:
                return code, msg.decode()
        code, msg = c.data(data)
        return code, msg.decode()


class Postfix:
    """A private Postfix instance on 127.0.0.1:<port> for ``OTHER_DOMAIN``.

    It stores mail for its own domain in maildirs under ``mail/`` and relays mail for
    ``relay_domain`` to ``relay_to`` (our gateway) over TLS.
    """

    def __init__(self, base: Path, port: int, pki: PKI, relay_domain: str, relay_to: str,
                 users: tuple[str, ...] = ("bob", "secretariat", "labo"), extra_config: str = "") -> None:
        self.base = base
        self.port = port
        self.conf = base / "etc"
        self.queue = base / "queue"
        self.mail = base / "mail"
        self.log = base / "maillog"
        cert, key = pki.issue("postfix", ["localhost", "mx." + OTHER_DOMAIN, "127.0.0.1"])
        pw = pwd.getpwnam("postfix")
        for d in (self.conf, self.mail, base / "data", self.queue):
            d.mkdir(parents=True, exist_ok=True)
        # Postfix's unprivileged daemons must be able to walk down to the maildirs (the caller
        # gives a base directory whose parents they may enter).
        base.chmod(0o711)
        os.chown(self.mail, pw.pw_uid, pw.pw_gid)
        os.chown(base / "data", pw.pw_uid, pw.pw_gid)
        shutil.copy(key, self.conf / "key.pem")
        shutil.copy(cert, self.conf / "cert.pem")
        shutil.copy(pki.ca_cert, self.conf / "ca.pem")
        host, _, relay_port = relay_to.rpartition(":")
        # Our domain goes to our gateway, its own domain to maildirs, anything else is dropped.
        (self.conf / "transport").write_text(f"{relay_domain} smtp:[{host}]:{relay_port}\n"
                                             f"{OTHER_DOMAIN} virtual:\n* discard:\n")
        # A mailbox that is always "full" (temporary failure), for the retry tests.
        (self.conf / "access").write_text(f"plein@{OTHER_DOMAIN} 452 4.2.2 Boite pleine\n")
        (self.conf / "vmailbox").write_text("".join(f"{u}@{OTHER_DOMAIN} {u}/\n" for u in users))
        (self.conf / "main.cf").write_text(f"""
compatibility_level = 3.6
queue_directory = {self.queue}
data_directory = {base / 'data'}
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
shlib_directory = /usr/lib/postfix
meta_directory = /etc/postfix
mail_owner = postfix
setgid_group = postdrop
myhostname = mx.{OTHER_DOMAIN}
mydomain = {OTHER_DOMAIN}
myorigin = {OTHER_DOMAIN}
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
maillog_file = {self.log}
maillog_file_prefixes = {base}
alias_maps =
alias_database =
smtputf8_enable = no
biff = no
message_size_limit = 60000000
virtual_mailbox_limit = 0
bounce_queue_lifetime = 1h
virtual_mailbox_domains = {OTHER_DOMAIN}
virtual_mailbox_base = {self.mail}
virtual_mailbox_maps = texthash:{self.conf / 'vmailbox'}
virtual_uid_maps = static:{pw.pw_uid}
virtual_gid_maps = static:{pw.pw_gid}
relay_domains = {relay_domain}
transport_maps = texthash:{self.conf / 'transport'}
smtpd_relay_restrictions = permit_mynetworks, permit_auth_destination, reject
smtpd_recipient_restrictions = check_recipient_access texthash:{self.conf / 'access'}, permit
smtpd_tls_cert_file = {self.conf / 'cert.pem'}
smtpd_tls_key_file = {self.conf / 'key.pem'}
smtpd_tls_CAfile = {self.conf / 'ca.pem'}
smtpd_tls_security_level = may
smtpd_tls_ask_ccert = yes
smtpd_tls_mandatory_protocols = >=TLSv1.2
smtp_tls_security_level = encrypt
smtp_tls_mandatory_protocols = >=TLSv1.2
smtp_tls_CAfile = {self.conf / 'ca.pem'}
smtp_tls_cert_file = {self.conf / 'cert.pem'}
smtp_tls_key_file = {self.conf / 'key.pem'}
smtp_dns_support_level = disabled
smtp_host_lookup = native
maximal_queue_lifetime = 1h
queue_run_delay = 5s
minimal_backoff_time = 5s
maximal_backoff_time = 10s
smtpd_client_connection_count_limit = 0
smtpd_client_message_rate_limit = 0
default_process_limit = 100
{extra_config}
""")
        master = Path("/etc/postfix/master.cf").read_text()
        lines = []
        for line in master.splitlines():
            if line.startswith("smtp      inet"):
                line = f"127.0.0.1:{port} inet n - n - - smtpd"
            elif line and not line[0].isspace() and not line.startswith("#"):
                fields = line.split()
                if len(fields) >= 8:
                    fields[4] = "n"  # no chroot: the queue is outside /var/spool/postfix
                    line = " ".join(fields)
            lines.append(line)
        (self.conf / "master.cf").write_text("\n".join(lines) + "\n")

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        # Postfix reports errors on a terminal only (or syslog): give it one through script(1).
        cmd = " ".join([str(POSTFIX), "-c", str(self.conf), *args])
        result = subprocess.run(["script", "-qec", cmd, "/dev/null"], capture_output=True, text=True, timeout=60)
        if check and result.returncode != 0:
            raise RuntimeError(f"{cmd}: {result.stdout.strip()} {result.stderr.strip()}")
        return result

    def master_pid(self) -> int:
        return int((self.queue / "pid" / "master.pid").read_text().split()[0])

    def start(self) -> None:
        self._run("set-permissions", check=False)
        self._run("start")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), smtplib.SMTP("127.0.0.1", self.port, timeout=5) as c:
                if c.noop()[0] == 250:
                    return
            time.sleep(0.2)
        raise RuntimeError("postfix did not start: " + self.log_text())

    def stop(self) -> None:
        self._run("stop", check=False)

    def flush(self) -> None:
        self._run("flush", check=False)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def maildir_messages(self, local: str) -> list[email.message.EmailMessage]:
        out = []
        new = self.mail / local / "new"
        for f in sorted(new.glob("*")) if new.exists() else []:
            out.append(email.message_from_bytes(f.read_bytes(), policy=email.policy.default))
        return out

    def queue_count(self) -> int:
        return sum(1 for d in ("incoming", "active", "deferred", "maildrop") if (self.queue / d).exists()
                   for _ in (self.queue / d).rglob("*") if _.is_file())


def wait_for(predicate, timeout: float = 60, interval: float = 0.2):
    """Poll until ``predicate()`` is truthy (bounded); returns its value or raises."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)


# --- the gateway under test ------------------------------------------------------------------

DOMAIN = "monsisra.localhost"
TRUSTED = [OTHER_DOMAIN, "ch-vichy.mssante.fr", "labo-aurillac.mssante.fr", "patient.mssante.fr",
           "evil.mssante.fr"]


@dataclass
class Gateway:
    server: RunningServer
    postfix: Postfix
    pki: PKI
    client_cert: tuple[Path, Path]
    _certs: dict[str, tuple[Path, Path]] = field(default_factory=dict)

    @property
    def port(self) -> int:
        return self.server.settings.smtp_port

    def ctx(self, domain: str | None = None) -> ssl.SSLContext:
        """A client context presenting the certificate of the operator of ``domain`` (the peer's
        certificate must name the sender's domain), by default the other operator's."""
        if domain is None or domain == OTHER_DOMAIN:
            return client_ssl(self.pki, self.client_cert)
        if domain not in self._certs:
            self._certs[domain] = self.pki.issue(f"client-{domain}", [f"mx.{domain}"])
        return client_ssl(self.pki, self._certs[domain])

    def send(self, raw: bytes, mail_from: str, rcpts: list[str], cert_domain: str | None = None
             ) -> tuple[int, str]:
        domain = cert_domain or (mail_from.rsplit("@", 1)[1] if "@" in mail_from else None)
        return smtp_send(self.port, mail_from, rcpts, raw, self.ctx(domain))


@contextlib.contextmanager
def running_gateway(backend: str, tmp_path_factory):
    """Our server with its SMTP gateway and delivery worker, a test CA, and a private Postfix
    standing for the other operator (the ``gw`` fixture of ``conftest.py``)."""
    tmp = tmp_path_factory.mktemp(f"gw-{backend}")
    pki = PKI.create(tmp / "pki")
    cert, key = pki.issue("monsisra", ["localhost", DOMAIN, "127.0.0.1"])
    client_cert = pki.issue("client", ["client.autre-operateur.localhost"])
    pf_port = free_port()
    with fresh_database(backend, tmp / "db") as url:
        settings = make_settings(url, tmp / "data", tls_cert=cert, tls_key=key, tls_trust=pki.ca_cert,
                                 smtp_relay=f"127.0.0.1:{pf_port}", outbound_poll_seconds=0.2,
                                 outbound_retry_base_seconds=1, max_message_bytes=3 * 1024 * 1024,
                                 smtp_enabled=True, run_workers=True)
        server = start_server(settings)
        # Postfix's unprivileged daemons cannot enter pytest's private temp dir: use one of its own.
        pf_dir = Path(tempfile.mkdtemp(prefix="monsisra-postfix-"))
        postfix = Postfix(pf_dir, pf_port, pki, DOMAIN, f"127.0.0.1:{settings.smtp_port}")
        try:
            server.call(demo_service.load, server.core)
            server.call(trust.add, server.core, TRUSTED, "tests")
            postfix.start()
            yield Gateway(server, postfix, pki, client_cert)
        finally:
            postfix.stop()
            server.stop()
            shutil.rmtree(pf_dir, ignore_errors=True)


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def find(client, mailbox_id: int, subject: str, view: str = "all") -> list[dict]:
    r = client.get(f"/api/v1/mailboxes/{mailbox_id}/messages", params={"view": view, "limit": 200})
    assert r.status_code == 200, r.text
    return [m for m in r.json()["items"] if m["subject"] == subject]


def mailbox_id(client, address: str) -> int:
    return next(m["id"] for m in client.get("/api/v1/mailboxes").json() if m["address"] == address)


def unique_mail(sender: str, to: str, subject: str, body: str = "Bonjour", **headers: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{uuid.uuid4().hex}@{sender.split('@')[1]}>"
    for k, v in headers.items():
        msg[k.replace("_", "-")] = v
    msg.set_content(body)
    return msg.as_bytes()


