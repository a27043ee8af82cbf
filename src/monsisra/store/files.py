"""Owner-only files and directories: the database, its journal, keys and the data dir hold
health data and secrets; nobody but the service account may read them."""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path


def private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents) as 0700, or take an existing one back to 0700."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    _restrict(path, 0o700)
    return path


def private_file(path: Path) -> None:
    """Take an existing file back to owner-only (0600); nothing when it does not exist."""
    _restrict(path, 0o600)


def secure_data_dir(root: Path, keys: list[Path] | None = None) -> None:
    """The data dir 0700 and the secrets in it 0600 (an older install left them readable);
    ``keys``: configured private keys elsewhere, restricted when they are ours."""
    private_dir(root)
    private_file(root / "secret_key")
    if (root / "tls").is_dir():
        private_dir(root / "tls")
        for key in (root / "tls").glob("*key*"):
            private_file(key)
    for key in keys or []:
        private_file(Path(key))


def _restrict(path: Path, mode: int) -> None:
    # Only group and other bits are taken away: the owner's stay as they were (or ``mode``'s).
    with contextlib.suppress(FileNotFoundError, PermissionError):
        current = stat.S_IMODE(path.stat().st_mode)
        if current & 0o077:
            os.chmod(path, (current & 0o700) or mode)
