"""coturn, run by ``monsisra serve`` (and the tests) when no TURN server is configured: STUN and
TURN on 127.0.0.1 with the TURN REST API shared secret (``use-auth-secret``). The secret goes
in an owner-only configuration file, never on the command line."""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path


def config_text(secret: str, port: int, *, host: str = "127.0.0.1", min_port: int = 49160,
                max_port: int = 49260, pidfile: Path | None = None) -> str:
    lines = [f"listening-ip={host}", f"relay-ip={host}", f"listening-port={port}", "use-auth-secret",
             f"static-auth-secret={secret}", "realm=monsisra", "fingerprint", "no-cli", "no-tls", "no-dtls",
             "no-multicast-peers", "no-software-attribute", f"min-port={min_port}", f"max-port={max_port}",
             "log-file=stdout", "simple-log"]
    if host.startswith("127."):
        lines.append("allow-loopback-peers")  # both ends of a relay-only call on this machine
    if pidfile:
        lines.append(f"pidfile={pidfile}")
    return "\n".join(lines) + "\n"


def _die_with_parent() -> None:
    """In the child, before exec: coturn gets SIGTERM when ``serve`` dies, even by SIGKILL
    (otherwise it outlives it and keeps the TURN port)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def start(secret: str, port: int, run_dir: Path, **kw) -> subprocess.Popen | None:
    """Start coturn (None when it is not installed); the caller terminates it."""
    binary = shutil.which("turnserver")
    if binary is None:
        return None
    run_dir.mkdir(parents=True, exist_ok=True)
    conf = run_dir / f"turnserver-{port}.conf"
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(config_text(secret, port, pidfile=run_dir / f"turnserver-{port}.pid", **kw))
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,  # noqa: S603
                            stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    time.sleep(0.2)  # bound: give it a moment to bind before the first call
    return proc


def stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
