"""TURN/STUN for calls: the ICE servers a call's members use, with short-lived credentials in the
TURN REST API shared-secret scheme (username ``expiry:call``, credential base64 HMAC-SHA1 of
the username with the secret), which coturn checks with ``use-auth-secret``."""

from __future__ import annotations

import base64
import hashlib
import hmac
import shutil
import time
from typing import Any

from monsisra.config import Settings


def secret(settings: Settings) -> str:
    """MONSISRA_TURN_SECRET, or one derived from the platform's secret key (same in every process)."""
    if settings.turn_secret:
        return settings.turn_secret
    return hmac.new(settings.effective_secret_key.encode(), b"turn-static-auth-secret", hashlib.sha256).hexdigest()


def local_coturn(settings: Settings) -> bool:
    """Whether ``monsisra serve`` runs coturn itself (no TURN configured and the binary exists)."""
    return not settings.turn_url and shutil.which("turnserver") is not None


def turn_urls(settings: Settings) -> list[str]:
    if settings.turn_url:
        return [u.strip() for u in settings.turn_url.split(",") if u.strip()]
    if local_coturn(settings):
        base = f"turn:127.0.0.1:{settings.turn_port}"
        return [f"{base}?transport=udp", f"{base}?transport=tcp"]
    return []


def credentials(shared_secret: str, call_id: int, ttl: int, now: float | None = None) -> tuple[str, str]:
    """(username, credential) valid ``ttl`` seconds from now."""
    expiry = int((now if now is not None else time.time()) + ttl)
    username = f"{expiry}:{call_id}"
    digest = hmac.new(shared_secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()


def ice_servers(settings: Settings, call_id: int) -> list[dict[str, Any]]:
    """``[{urls}, {urls, username, credential}]``: STUN then TURN (empty without any server)."""
    urls = turn_urls(settings)
    if not urls:
        return []
    stun = sorted({"stun:" + u.split(":", 1)[1].split("?")[0] for u in urls if u.startswith("turn:")})
    username, credential = credentials(secret(settings), call_id, settings.turn_ttl_seconds)
    servers: list[dict[str, Any]] = [{"urls": stun}] if stun else []
    servers.append({"urls": urls, "username": username, "credential": credential})
    return servers
