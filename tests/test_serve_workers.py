"""``monsisra serve --workers 2``: two processes share the HTTP and SMTP ports (SO_REUSEPORT) on one
PostgreSQL and Redis; mail sent over many connections is all stored; a process killed with SIGKILL
is replaced; SIGTERM stops the group cleanly; SQLite is refused with a clear message."""

from __future__ import annotations

import os
import signal
import subprocess
import uuid

import pytest

from tests.gateway_support import OTHER_DOMAIN, client_ssl, smtp_send, wait_for
from tests.support import POSTGRES_URL, REDIS_URL
from tests.test_gateway_crash import DOMAIN, EXE, _descendants, _mail, _running, _subjects, serve_env


def _listening(port: int) -> int:
    """Sockets listening on this TCP port, all processes together (one per process sharing it)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                count += 1
    return count


def _workers(pid: int) -> list[int]:
    """The serve processes the supervisor ``pid`` runs (not their parsing helpers)."""
    out = []
    for child in _descendants(pid):
        try:
            cmdline = open(f"/proc/{child}/cmdline", "rb").read().split(b"\0")
        except OSError:
            continue
        if b"--no-migrate" in cmdline and _running(child):
            out.append(child)
    return out


def _send(port: int, pki, run: str, numbers: range) -> list[str]:
    ctx = client_ssl(pki)
    subjects = []
    for i in numbers:  # one connection per message: the kernel spreads them between the processes
        subject, raw = _mail(i, run)
        code, reply = smtp_send(port, f"secretariat@{OTHER_DOMAIN}", [f"crash.test@{DOMAIN}"], raw, ctx)
        assert code == 250, reply
        subjects.append(subject)
    return subjects


@pytest.mark.skipif(not (POSTGRES_URL and REDIS_URL),
                    reason="several processes need PostgreSQL and Redis: MONSISRA_TEST_POSTGRES_URL and "
                           "MONSISRA_TEST_REDIS_URL are not both set (CI sets them)")
def test_two_processes_share_the_ports_and_one_killed_is_replaced(tmp_path):
    with serve_env("postgres", tmp_path) as (env, pki):
        env = {**env, "MONSISRA_REDIS_URL": REDIS_URL}
        http, smtp = int(env["MONSISRA_HTTP_PORT"]), int(env["MONSISRA_SMTP_PORT"])
        log = (tmp_path / "serve.log").open("ab")
        group = subprocess.Popen([EXE, "serve", "--workers", "2"], env=env, stdout=log, stderr=log)
        run = uuid.uuid4().hex[:8]
        try:
            wait_for(lambda: _listening(http) == 2 and _listening(smtp) == 2, timeout=120)
            first = _workers(group.pid)
            assert len(first) == 2
            sent = _send(smtp, pki, run, range(12))

            os.kill(first[0], signal.SIGKILL)
            wait_for(lambda: len(_workers(group.pid)) == 2 and first[0] not in _workers(group.pid)
                     and _listening(smtp) == 2 and _listening(http) == 2, timeout=120)
            sent += _send(smtp, pki, run, range(12, 18))

            stored = _subjects(f"http://127.0.0.1:{http}")
            assert sorted(s for s in stored if run in s) == sorted(sent)
        finally:
            group.terminate()
            code = group.wait(timeout=90)
        assert code == 0, (tmp_path / "serve.log").read_text()[-3000:]
        assert not [p for p in _descendants(group.pid) if _running(p)]
        assert _listening(http) == 0 and _listening(smtp) == 0


def test_several_processes_on_sqlite_are_refused(tmp_path):
    env = {**os.environ, "MONSISRA_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/m.db",
           "MONSISRA_DATA_DIR": str(tmp_path / "data")}
    done = subprocess.run([EXE, "serve", "--workers", "2"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "PostgreSQL" in done.stdout + done.stderr
    assert not (tmp_path / "m.db").exists()  # refused before anything was touched
