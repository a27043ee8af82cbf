"""Secrets the server must read back (TOTP secrets, the portal's private keys) are stored sealed:
Fernet (AES-CBC + HMAC) under a key derived from the platform's secret key, one key per purpose.

A copy of the database alone does not give them away; changing ``MONSISRA_SECRET_KEY`` makes them
unreadable (second factors must then be enrolled again, the portal's keys are replaced).
"""

from __future__ import annotations

import base64
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from monsisra.config import Settings


class Unreadable(Exception):
    """Sealed with another secret key, or altered."""


@lru_cache(maxsize=16)
def _fernet(secret_key: str, purpose: str) -> Fernet:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"monsisra.sealed", info=purpose.encode()) \
        .derive(secret_key.encode())
    return Fernet(base64.urlsafe_b64encode(key))


def seal(settings: Settings, purpose: str, value: str) -> str:
    return _fernet(settings.effective_secret_key, purpose).encrypt(value.encode()).decode()


def unseal(settings: Settings, purpose: str, sealed_value: str) -> str:
    try:
        return _fernet(settings.effective_secret_key, purpose).decrypt(sealed_value.encode()).decode()
    except (InvalidToken, ValueError) as exc:
        raise Unreadable(purpose) from exc
