"""Runtime configuration: the ``MONSISRA_*`` environment variables of DESIGN §4."""

from __future__ import annotations

import os
import secrets
from functools import cached_property
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

from monsisra.store.files import private_dir, private_file


class Settings(BaseSettings):
    """All settings have working defaults so that ``monsisra serve`` runs with none set."""

    model_config = SettingsConfigDict(env_prefix="MONSISRA_", extra="ignore")

    database_url: str = "sqlite+aiosqlite:///./var/monsisra.db"
    data_dir: Path = Path("./var")
    domain: str = "monsisra.localhost"
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    https_port: int = 8443  # 0: no HTTPS listener
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 2525
    redis_url: str | None = None
    secret_key: str | None = None
    smtp_relay: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_trust: Path | None = None
    # Addresses (or networks) of reverse proxies whose X-Forwarded-Proto/-For are believed,
    # comma-separated; empty: no proxy is trusted and those headers are ignored.
    trusted_proxies: str = ""

    # Limits and policies (not in the DESIGN contract, but configurable).
    max_message_bytes: int = 25 * 1024 * 1024
    # Seconds a statement waits for a lock held elsewhere (SQLite busy timeout, PostgreSQL
    # lock_timeout) before the request is answered 503 with Retry-After.
    database_busy_timeout: float = 30.0
    token_ttl_seconds: int = 12 * 3600
    # Login throttling: attempts per window, per (account, address), per address, per known
    # browser (device cookie) and, for browsers not known to the account, per account.
    login_max_failures: int = 5
    login_window_seconds: int = 15 * 60
    login_lockout_seconds: int = 15 * 60
    ip_max_failures: int = 30
    account_max_failures: int = 100
    device_cookie_days: int = 180
    password_threads: int = 2  # argon2 runs in this many threads, off the event loop
    # Live sockets (WebSocket /api/v1/events).
    ws_max_per_account: int = 20  # per process
    ws_recheck_seconds: float = 60.0  # each socket re-reads its token this often
    run_workers: bool = True
    # Listen with SO_REUSEPORT on HTTP, HTTPS and SMTP (IMAP and submission always do): several
    # ``monsisra serve`` processes on one machine share the ports, the kernel spreads connections.
    # Set by ``monsisra serve --workers N`` for its processes.
    reuse_port: bool = False
    smtp_enabled: bool = True
    outbound_retry_seconds: int = 4 * 24 * 3600
    nil: str = "MonSisra/0.1"
    # MSSanté gateway (issue 5).
    smtp_require_tls: bool = True  # inbound: no MAIL before STARTTLS
    smtp_verify_client: bool = False  # inbound: demand a client certificate chained to tls_trust
    smtp_max_connections_per_client: int = 20
    smtp_max_messages_per_minute: int = 1200  # per client address
    smtp_max_recipients: int = 100
    # Behind a TCP load balancer (haproxy ``send-proxy``): every inbound connection starts with a
    # PROXY protocol header (v1 or v2) naming the client, accepted only from ``trusted_proxies``;
    # the per-client limits and the logs then use the client's address, not the balancer's.
    smtp_proxy_protocol: bool = False
    # Mail clients (issue 16): IMAP with STARTTLS / implicit TLS, SMTP submission with STARTTLS /
    # implicit TLS; login with the account's username and password. Port 0: that listener is off.
    imap_host: str = "127.0.0.1"
    imap_port: int = 1143
    imaps_port: int = 1993
    submission_port: int = 1587
    submissions_port: int = 1465
    outbound_retry_base_seconds: int = 60  # first back-off; doubles up to an hour
    outbound_poll_seconds: float = 2.0
    outbound_timeout_seconds: float = 60.0

    # Accounts and passwords (issue 15).
    # Public address of the web application, used in links sent by e-mail (password reset);
    # unset: http://<http_host>:<http_port>. Never taken from a request's Host header.
    public_url: str | None = None
    # Relay (host:port) of notification e-mails (not MSSanté mail); unset: smtp_relay.
    notify_relay: str | None = None
    notify_from: str | None = None  # sender of notifications; unset: ne-pas-repondre@<domain>
    password_reset_minutes: int = 30
    # Video (issue 17): TURN/STUN server (``turn:host:port``, several comma-separated) and its
    # static-auth-secret; unset URL: ``monsisra serve`` starts coturn on 127.0.0.1 when installed.
    turn_url: str | None = None
    turn_secret: str | None = None
    turn_port: int = 3478
    turn_ttl_seconds: int = 3600  # lifetime of the TURN credentials handed out for one call
    teleconsultation_hours: int = 2  # a patient link lasts this long after the appointment time
    password_resets_per_hour: int = 3  # links sent per account and per hour (more are silently dropped)
    # LDAP login (an establishment's directory); unset ldap_url: local passwords only.
    ldap_url: str | None = None  # ldap://host:389 or ldaps://host:636
    ldap_start_tls: bool = False
    ldap_ca_file: Path | None = None  # trust anchors of the directory's certificate (default: tls_trust)
    ldap_bind_dn: str | None = None  # account that searches the users (unset: anonymous search)
    ldap_bind_password: str | None = None
    ldap_base_dn: str = ""
    ldap_user_filter: str = "(uid={username})"
    ldap_attr_username: str = "uid"
    ldap_attr_first_name: str = "givenName"
    ldap_attr_last_name: str = "sn"
    ldap_attr_email: str = "mail"
    ldap_attr_national_id: str = ""  # e.g. employeeNumber holding the RPPS national id
    ldap_attr_profession: str = ""  # e.g. title
    ldap_create_accounts: bool = False  # first login of a directory user creates the account
    ldap_personal_mailbox: bool = True  # …with its PER mailbox prenom.nom@<domain>
    ldap_timeout: float = 10.0

    @property
    def base_url(self) -> str:
        return (self.public_url or f"http://{self.http_host}:{self.http_port}").rstrip("/")
    # Identity (issue 15, items 1-4).
    # Second factor (TOTP): required before any access to messages (accounts marked exempt, such
    # as the demo's, excepted); a browser that passed it may be remembered this many days.
    totp_required: bool = True
    totp_issuer: str = "MonSisra"
    totp_remember_days: int = 30
    otp_account_max_failures: int = 20  # wrong codes per account (browsers it does not know) per window
    # CPS card: the HTTPS listener asks for a client certificate (optional at the TLS level)
    # chained to tls_trust; its national id is read from these subject attributes, in order, with
    # this pattern (group 1). Behind a reverse proxy (trusted_proxies), the verified certificate
    # comes PEM url-encoded in this header (nginx: $ssl_client_escaped_cert).
    cps_login: bool = True
    cps_id_attributes: str = "serialNumber,CN"
    cps_id_pattern: str = r"(?<![0-9])(8[0-9]{11}|0[0-9]{9})(?![0-9])"
    cps_proxy_header: str = "x-ssl-client-cert"
    # Pro Santé Connect (OpenID Connect client); unset issuer: no such login.
    psc_issuer: str | None = None
    psc_client_id: str = ""
    psc_client_secret: str = ""
    psc_redirect_uri: str | None = None  # default: <this site>/connexion/psc/retour
    psc_scopes: str = "openid scope_all"
    psc_acr: str = "eidas1"
    psc_create_accounts: bool = True  # a first login creates the account from the directory
    # « Mon portail »: the OpenID provider for the region's services.
    portal_issuer: str | None = None  # default: the address the request came to
    portal_token_ttl_seconds: int = 3600
    portal_key_rotation_days: int = 90

    # Reaching professionals outside the web page (issue 16).
    # DGS-Urgent: besides administrators, the users of this mailbox (the national address) may
    # broadcast; unset: administrators only.
    dgs_address: str | None = None
    # Notifications of new messages while away: at most one per channel per interval, a worker
    # pass this often; SMS through an HTTP gateway (JSON POST {to, text}, bearer token).
    notify_interval_seconds: int = 15 * 60
    notify_poll_seconds: float = 30.0
    notify_timezone: str = "Europe/Paris"  # of the quiet hours
    sms_gateway_url: str | None = None
    sms_gateway_token: str | None = None
    vapid_subject: str | None = None  # Web Push contact; unset: mailto:ne-pas-repondre@<domain>

    @cached_property
    def effective_secret_key(self) -> str:
        """The configured key, or one generated once into the data dir and reused after."""
        if self.secret_key:
            return self.secret_key
        private_dir(self.data_dir)
        path = self.data_dir / "secret_key"
        if path.exists():
            private_file(path)
            return path.read_text().strip()
        key = secrets.token_urlsafe(48)
        tmp = path.with_suffix(".tmp")
        # Owner-only from its creation: never readable by others, not even for a moment.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key)
        tmp.replace(path)
        return key

    @property
    def trusted_proxy_list(self) -> list[str]:
        return [p for p in self.trusted_proxies.replace(",", " ").split() if p]

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


def get_settings() -> Settings:
    return Settings()
