"""The SMTP gateway behind a TCP load balancer (PROXY protocol): per-client limits count the client
the trusted balancer names, and a PROXY header from anyone else is refused."""

from __future__ import annotations

import contextlib
import random
import socket
import time

import pytest

from tests.support import REDIS_URL, fresh_database, make_settings, start_server


def _line(f) -> bytes:
    return f.readline(1000)


@contextlib.contextmanager
def _proxied(port: int, client: str):
    """A connection to the gateway that starts with a PROXY v1 header naming ``client``."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(f"PROXY TCP4 {client} 127.0.0.1 40000 25\r\n".encode())
    f = s.makefile("rb")
    try:
        yield s, f
    finally:
        f.close()
        s.close()


def _reply(s: socket.socket, f, command: str) -> bytes:
    s.sendall(command.encode() + b"\r\n")
    line = _line(f)
    while line[3:4] == b"-":
        line = _line(f)
    return line


@pytest.fixture(params=["trusted", "untrusted"])
def gateway(request, backend, tmp_path):
    trusted = "127.0.0.1" if request.param == "trusted" else "10.9.9.9"
    with fresh_database(backend, tmp_path / "db") as url:
        settings = make_settings(url, tmp_path / "data", smtp_enabled=True, run_workers=False,
                                 smtp_proxy_protocol=True, trusted_proxies=trusted, smtp_require_tls=False,
                                 smtp_max_connections_per_client=1, smtp_max_messages_per_minute=1)
        server = start_server(settings)
        try:
            yield request.param, settings.smtp_port
        finally:
            server.stop()


def test_limits_count_the_client_the_balancer_names(gateway):
    kind, port = gateway
    if kind == "untrusted":
        # The balancer's address is not trusted: its header is not believed, the connection closes.
        with _proxied(port, "203.0.113.7") as (_s, f):
            assert _line(f) == b""
        return
    with _proxied(port, "203.0.113.7") as (s, f):
        assert _line(f).startswith(b"220")
        # The same client through the balancer again: over its one connection.
        with _proxied(port, "203.0.113.7") as (_s2, f2):
            assert _line(f2).startswith(b"421")
        # Another client behind the same balancer is not affected.
        with _proxied(port, "203.0.113.8") as (s3, f3):
            assert _line(f3).startswith(b"220")
            assert _reply(s3, f3, "EHLO mx.ailleurs.localhost").startswith(b"250")
            assert not _reply(s3, f3, "MAIL FROM:<a@ailleurs.localhost>").startswith(b"451")
        assert _reply(s, f, "EHLO mx.autre.localhost").startswith(b"250")
        # One message per minute for 203.0.113.7: its first MAIL is judged on the sender (not
        # trusted here: 550), its second is throttled, whatever the other client did.
        assert not _reply(s, f, "MAIL FROM:<a@autre.localhost>").startswith(b"451")
        assert _reply(s, f, "RSET").startswith(b"250")
        assert _reply(s, f, "MAIL FROM:<a@autre.localhost>").startswith(b"451")


@pytest.mark.skipif(not REDIS_URL, reason="MONSISRA_TEST_REDIS_URL is not set (CI sets it)")
def test_message_rate_is_shared_by_the_processes(backend, tmp_path):
    """Two gateways on one database and one Redis (two processes behind a balancer): a client's
    messages per minute are counted once, whichever process its connections reach."""
    with fresh_database(backend, tmp_path / "db") as url:
        servers = [start_server(make_settings(url, tmp_path / f"data{i}", smtp_enabled=True, run_workers=False,
                                              smtp_proxy_protocol=True, trusted_proxies="127.0.0.1",
                                              smtp_require_tls=False, smtp_max_messages_per_minute=1,
                                              redis_url=REDIS_URL))
                   for i in range(2)]
        try:
            for _attempt in range(2):  # a minute's edge between the two MAILs resets the window: again
                minute = int(time.time() // 60)
                # Two different addresses, whose counts no earlier run (the other engine's, a
                # minute ago) left in Redis.
                client, other = (f"198.51.100.{n}" for n in random.sample(range(1, 255), 2))
                _forget_counts(client, other)
                with _proxied(servers[0].settings.smtp_port, client) as (s, f):
                    assert _line(f).startswith(b"220")
                    assert _reply(s, f, "EHLO mx.autre.localhost").startswith(b"250")
                    first = _reply(s, f, "MAIL FROM:<a@autre.localhost>")
                with _proxied(servers[1].settings.smtp_port, client) as (s, f):
                    assert _line(f).startswith(b"220")
                    assert _reply(s, f, "EHLO mx.autre.localhost").startswith(b"250")
                    second = _reply(s, f, "MAIL FROM:<a@autre.localhost>")
                with _proxied(servers[1].settings.smtp_port, other) as (s, f):
                    assert _line(f).startswith(b"220")
                    assert _reply(s, f, "EHLO mx.ailleurs.localhost").startswith(b"250")
                    third = _reply(s, f, "MAIL FROM:<a@ailleurs.localhost>")
                if int(time.time() // 60) == minute:
                    break
            assert not first.startswith(b"451"), first
            assert second.startswith(b"451") and b"trop de messages" in second, second
            assert not third.startswith(b"451"), third
        finally:
            for server in servers:
                server.stop()


def _forget_counts(*clients: str) -> None:
    """Drop the message counts of ``clients`` from Redis (the windows of the last minutes)."""
    import redis

    from monsisra.gateway.smtp import RATE_KEY

    with contextlib.closing(redis.Redis.from_url(REDIS_URL)) as r:
        for client in clients:
            keys = list(r.scan_iter(f"{RATE_KEY}:{client}:*"))
            if keys:
                r.delete(*keys)
