"""Web sessions: a bearer token (``accounts.issue_token(kind="web")``) kept in a signed cookie,
and a CSRF token derived from it; and the « device » cookie of browsers that logged in before.

The cookie is HttpOnly, SameSite=Lax and Secure when the request came over TLS (directly, or
from a trusted proxy that says so). Every unsafe request made with the cookie (web forms, htmx,
the API called from the pages) must carry the CSRF token, as the ``csrf`` form field or the
``X-CSRF-Token`` header; the WebSocket must come from our own origin.

The device cookie (OWASP "device cookies") names, per login, a random id given at a successful
login from this browser; login throttling counts that browser's failures on their own, so a
guesser elsewhere cannot lock the owner out of her own browser.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from urllib.parse import urlsplit

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import HTTPConnection
from starlette.responses import Response

from monsisra.config import Settings
from monsisra.domain.clock import utcnow
from monsisra.services import accounts
from monsisra.services.core import Actor, Core
from monsisra.services.errors import AuthFailed

COOKIE = "monsisra_session"
DEVICE_COOKIE = "monsisra_device"
DEVICES_PER_BROWSER = 8  # logins remembered by one browser (a shared practice computer)
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf"
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
ACTOR_TTL = 2.0


class Sessions:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._secret = settings.effective_secret_key.encode()
        self._signer = URLSafeTimedSerializer(settings.effective_secret_key, salt="monsisra.web.session")
        self._device_signer = URLSafeTimedSerializer(settings.effective_secret_key, salt="monsisra.web.device")
        self._actors: dict[str, tuple[Actor, float]] = {}
        self._ended = 0  # bumped by every session.ended

    # --- cookie ---------------------------------------------------------------------------

    def token_of(self, conn: HTTPConnection) -> str | None:
        """The bearer token stored in the request's session cookie, if the signature holds."""
        raw = conn.cookies.get(COOKIE)
        if not raw:
            return None
        try:
            data = self._signer.loads(raw, max_age=self.settings.token_ttl_seconds)
        except BadSignature:
            return None
        token = data.get("t") if isinstance(data, dict) else None
        return token if isinstance(token, str) else None

    def set_cookie(self, response: Response, conn: HTTPConnection, token: str) -> None:
        response.set_cookie(COOKIE, self._signer.dumps({"t": token}), max_age=self.settings.token_ttl_seconds,
                            httponly=True, samesite="lax", secure=is_tls(conn), path="/")

    def clear_cookie(self, response: Response, conn: HTTPConnection) -> None:
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="lax", secure=is_tls(conn))

    # --- device cookie ----------------------------------------------------------------------

    def _devices(self, conn: HTTPConnection) -> dict[str, str]:
        raw = conn.cookies.get(DEVICE_COOKIE)
        if not raw:
            return {}
        try:
            data = self._device_signer.loads(raw, max_age=self.settings.device_cookie_days * 86400)
        except BadSignature:
            return {}
        if not isinstance(data, dict):
            return {}
        return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)}

    def device_of(self, conn: HTTPConnection, username: str) -> str | None:
        """The id this browser was given when ``username`` logged in from it, if any."""
        return self._devices(conn).get(username.strip().lower())

    def remember_device(self, response: Response, conn: HTTPConnection, username: str) -> str:
        """After a successful login: this browser is now known to that login (id kept if it was);
        answers that id."""
        devices = self._devices(conn)
        login = username.strip().lower()
        device = devices.pop(login, None) or secrets.token_urlsafe(18)
        devices[login] = device  # most recent last; the oldest are forgotten first
        devices = dict(list(devices.items())[-DEVICES_PER_BROWSER:])
        response.set_cookie(DEVICE_COOKIE, self._device_signer.dumps(devices),
                            max_age=self.settings.device_cookie_days * 86400, httponly=True, samesite="lax",
                            secure=is_tls(conn), path="/")
        return device

    # --- CSRF -----------------------------------------------------------------------------

    def csrf_for(self, token: str) -> str:
        """Bound to the session: a new login gives a new CSRF token, no server-side storage."""
        return hmac.new(self._secret, b"csrf:" + token.encode(), hashlib.sha256).hexdigest()[:40]

    def csrf_ok(self, token: str, presented: str | None) -> bool:
        return bool(presented) and hmac.compare_digest(self.csrf_for(token), presented or "")

    # --- who the token stands for, remembered a moment -------------------------------------

    async def resolve(self, core: Core, token: str, client: str | None) -> Actor:
        """``accounts.actor_for_token``, remembered for ``ACTOR_TTL`` seconds: a page and the
        fragments and live refreshes that follow it check the token once. An ended session
        leaves the cache through the ``session.ended`` event, on every process; were that event
        lost (Redis down), within ``ACTOR_TTL``."""
        now = time.monotonic()
        hit = self._actors.get(token)
        if hit is not None and hit[1] > now and (hit[0].expires_at is None or hit[0].expires_at > utcnow()):
            return hit[0]
        generation = self._ended
        actor = await accounts.actor_for_token(core, token, client)
        if generation != self._ended:
            return actor  # a session ended meanwhile: what was read may be stale, don't keep it
        if len(self._actors) > 10_000:
            self._actors.clear()
        self._actors[token] = (actor, now + ACTOR_TTL)
        return actor

    def forget(self, token: str) -> None:
        self._actors.pop(token, None)

    def session_ended(self, account_ids: list[int], token_ids: list[int] | None) -> None:
        """Listener of the bus's ``session.ended`` (from any process): drop those sessions from
        the cache at once, so a revoked token stops acting here before ACTOR_TTL runs out."""
        self._ended += 1
        accounts_ = set(account_ids)
        tokens = set(token_ids) if token_ids is not None else None
        for key, (actor, _) in list(self._actors.items()):
            if actor.account_id in accounts_ and (tokens is None or actor.token_id in tokens):
                self._actors.pop(key, None)

    # --- the hook of api/deps.py ------------------------------------------------------------

    async def actor(self, conn: HTTPConnection) -> Actor | None:
        """The actor of the session cookie, or None (then the API answers 401)."""
        token = self.token_of(conn)
        if token is None:
            return None
        if conn.scope["type"] == "websocket":
            if not same_origin(conn):
                return None
        elif conn.scope.get("method", "GET") not in SAFE_METHODS and not self.csrf_ok(
                token, conn.headers.get(CSRF_HEADER)):
            return None
        core: Core = conn.app.state.core
        try:
            return await self.resolve(core, token, conn.client.host if conn.client else None)
        except AuthFailed:
            return None


def is_tls(conn: HTTPConnection) -> bool:
    return conn.url.scheme in ("https", "wss")


def same_origin(conn: HTTPConnection) -> bool:
    """A browser always sends Origin on a WebSocket handshake; it must name this host."""
    origin = conn.headers.get("origin")
    if not origin:
        return False
    return urlsplit(origin).netloc == conn.headers.get("host", "")
