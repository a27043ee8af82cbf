"""Test support: fresh databases on SQLite and PostgreSQL, and a real server on a free port.

The server runs in its own thread and event loop (uvicorn), so tests talk to it over real
HTTP and WebSocket connections, exactly as clients do.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
import uvicorn

from monsisra.api.app import create_app
from monsisra.config import Settings
from monsisra.store.migrate import upgrade

FIXTURES = Path(__file__).parent / "fixtures"
POSTGRES_URL = os.environ.get("MONSISRA_TEST_POSTGRES_URL")
REDIS_URL = os.environ.get("MONSISRA_TEST_REDIS_URL")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def fresh_database(backend: str, tmp: Path) -> Iterator[str]:
    """A new, migrated, empty database for one test run; dropped afterwards (PostgreSQL)."""
    if backend == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp / 'monsisra.db'}"
        _in_thread(upgrade, url)
        yield url
        return
    assert POSTGRES_URL
    name = f"monsisra_test_{uuid.uuid4().hex[:12]}"
    admin = sa.make_url(POSTGRES_URL)
    sync_admin = admin.set(drivername="postgresql+asyncpg")

    async def ddl(sql: str) -> None:
        import asyncpg

        conn = await asyncpg.connect(user=admin.username or "postgres", host=admin.host or "127.0.0.1",
                                     port=admin.port or 5432, database=admin.database or "postgres",
                                     password=admin.password)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    _run_alone(ddl(f'CREATE DATABASE "{name}"'))
    url = sync_admin.set(database=name).render_as_string(hide_password=False)
    try:
        _in_thread(upgrade, url)
        yield url
    finally:
        _run_alone(ddl(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _run_alone(coro: Coroutine[Any, Any, Any]) -> Any:
    """``asyncio.run`` in a thread of its own: the caller's thread may already run a loop
    (Playwright's sync API does, when a browser fixture is open)."""
    return _in_thread(asyncio.run, coro)


def _in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = fn(*args)
        except BaseException as exc:  # re-raised in the caller
            result["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result.get("value")


def make_settings(url: str, data_dir: Path, **overrides: Any) -> Settings:
    values = dict(database_url=url, data_dir=data_dir, http_port=free_port(), smtp_port=free_port(),
                  domain="monsisra.localhost", secret_key="test-secret-key-" + "x" * 32,
                  # Mail-client listeners only where a test asks for them (fixed default ports).
                  imap_port=0, imaps_port=0, submission_port=0, submissions_port=0)
    values.update(overrides)
    return Settings(**values)


@dataclass
class RunningServer:
    settings: Settings
    base_url: str
    app: Any
    loop: asyncio.AbstractEventLoop
    server: uvicorn.Server
    thread: threading.Thread

    @property
    def core(self):
        return self.app.state.core

    def call(self, fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any, **kwargs: Any) -> Any:
        """Run a coroutine function on the server's loop (with its core) and wait for it."""
        return asyncio.run_coroutine_threadsafe(fn(*args, **kwargs), self.loop).result(timeout=120)

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=30)

    def login(self, username: str, password: str = "demo") -> httpx.Client:
        with self.client() as anon:
            r = anon.post("/api/v1/auth/token", data={"username": username, "password": password})
        assert r.status_code == 200, r.text
        return self.client(r.json()["access_token"])

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def start_server(settings: Settings) -> RunningServer:
    app = create_app(settings)
    holder: dict[str, Any] = {}

    async def remember_loop(app_, core):
        holder["loop"] = asyncio.get_running_loop()
        return None

    app.state.startup_hooks.insert(0, remember_loop)
    # proxy_headers off, as in ``monsisra serve``: forwarded headers are the app's to believe or not.
    # The stdlib loop, as ``monsisra serve`` runs (``asyncio.run``): uvicorn's default here would be
    # uvloop, which the product never runs and which, with several test servers' loops in threads
    # of one process, crashed the suite at random (SIGSEGV in libuv's uv__read, uvloop issue #538).
    config = uvicorn.Config(app, host="127.0.0.1", port=settings.http_port, log_level="warning",
                            ws="websockets-sansio", lifespan="on", proxy_headers=False, loop="asyncio")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="monsisra-test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("test server did not start")
        time.sleep(0.02)
    return RunningServer(settings, f"http://127.0.0.1:{settings.http_port}", app, holder["loop"], server, thread)


def unique(prefix: str = "u") -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"
