"""STARTTLS on the loop's own TLS layer (``loop.start_tls``: uvloop's compiled one under
``monsisra serve``), on both event loops: the handler sees the session's TLS facts, plaintext
pipelined after STARTTLS is never read as a command (RFC 3207 §5), a balancer's PROXY header still
names the client inside TLS, a failed handshake ends the session."""

from __future__ import annotations

import asyncio
import contextlib
import smtplib
import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import uvloop

from monsisra.gateway.draining import DrainingSMTP, Sessions
from tests.gateway_support import OTHER_DOMAIN, PKI, client_ssl

LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


class Recorder:
    """A handler that writes down what each MAIL saw of its session."""

    def __init__(self) -> None:
        self.mails: list[dict[str, Any]] = []

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        self.mails.append({"address": address, "ssl": session.ssl, "transport": type(server.transport).__module__,
                           "proxy": session.proxy_data.src_addr if session.proxy_data else None})
        envelope.mail_from = address
        return "250 OK"

    async def handle_PROXY(self, server: Any, session: Any, envelope: Any, proxy_data: Any) -> bool:
        return True


def _server_context(pki: PKI) -> ssl.SSLContext:
    cert, key = pki.issue("gw", ["localhost", "127.0.0.1"])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert), str(key))
    ctx.load_verify_locations(cafile=str(pki.ca_cert))
    ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def _serve(loop_name: str, pki: PKI, client: Callable[[int], Any], **options: Any) -> tuple[Recorder, Any, Sessions]:
    """Run a DrainingSMTP listener on a fresh ``loop_name`` loop (this thread) while ``client(port)``
    runs in a worker thread; returns what the handler saw, the client's result, and the sessions
    (all ended: the test waits for every connection to be gone)."""
    recorder, sessions = Recorder(), Sessions()
    context = _server_context(pki)

    async def main() -> Any:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: DrainingSMTP(recorder, sessions=sessions, tls_context=context, hostname="gw.test", loop=loop,
                                 **options), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            result = await loop.run_in_executor(None, client, port)
        finally:
            server.close()
        await asyncio.wait_for(sessions._empty.wait(), 10)
        return result

    with asyncio.Runner(loop_factory=LOOPS[loop_name]) as runner:
        result = runner.run(main())
    return recorder, result, sessions


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    return PKI.create(tmp_path / "pki")


@pytest.mark.parametrize("loop_name", list(LOOPS))
def test_starttls_gives_the_handler_the_tls_facts(loop_name, pki):
    cert = pki.issue("peer", [f"mx.{OTHER_DOMAIN}"])

    def client(port: int) -> tuple[int, bool, bool]:
        with smtplib.SMTP("127.0.0.1", port, timeout=20) as c:
            c.ehlo("client.test")
            refused, _ = c.mail(f"secretariat@{OTHER_DOMAIN}")  # require_starttls: not yet
            offered_before = c.has_extn("starttls")
            c.starttls(context=client_ssl(pki, cert))
            c.ehlo("client.test")
            offered_after = c.has_extn("starttls")
            code, _ = c.mail(f"secretariat@{OTHER_DOMAIN}")
            assert code == 250
            return refused, offered_before, offered_after

    recorder, (refused, before, after), _ = _serve(loop_name, pki, client, require_starttls=True)
    assert (refused, before, after) == (530, True, False)
    [mail] = recorder.mails
    facts = mail["ssl"]
    assert ("DNS", f"mx.{OTHER_DOMAIN}") in facts["peercert"]["subjectAltName"]
    assert facts["cipher"][1] in ("TLSv1.2", "TLSv1.3") and facts["cipher"][0]
    assert isinstance(facts["ssl_object"], ssl.SSLObject) and isinstance(facts["sslcontext"], ssl.SSLContext)
    # On uvloop the TLS layer is uvloop's own (compiled), no longer asyncio's Python sslproto.
    assert mail["transport"].startswith("uvloop" if loop_name == "uvloop" else "asyncio")


def _reply(f: Any) -> bytes:
    """One whole (possibly multi-line) SMTP reply."""
    out = b""
    while True:
        line = f.readline()
        assert line, out
        out += line
        if line[3:4] != b"-":
            return out


@pytest.mark.parametrize("loop_name", list(LOOPS))
def test_plaintext_pipelined_after_starttls_is_never_a_command(loop_name, pki):
    def client(port: int) -> tuple[bytes, bytes, bytes]:
        with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
            plain = raw.makefile("rb")
            _reply(plain)
            raw.sendall(b"EHLO client.test\r\n")
            _reply(plain)
            # An attacker on the path appends a command to the client's STARTTLS, in clear.
            raw.sendall(b"STARTTLS\r\nMAIL FROM:<injected@evil.test>\r\n")
            ready = _reply(plain)
            with client_ssl(pki).wrap_socket(raw, server_hostname="localhost") as tls:
                f = tls.makefile("rb")
                tls.sendall(b"EHLO client.test\r\nRCPT TO:<alice@gw.test>\r\n")
                _reply(f)
                rcpt = _reply(f)
                tls.sendall(b"QUIT\r\n")
                return ready, rcpt, _reply(f)

    recorder, (ready, rcpt, bye), _ = _serve(loop_name, pki, client)
    assert ready.startswith(b"220 ")
    assert rcpt.startswith(b"503 ")  # no MAIL in this (TLS) session: the injected one was dropped
    assert bye.startswith(b"221 ")
    assert recorder.mails == []


@pytest.mark.parametrize("loop_name", list(LOOPS))
def test_a_balancers_proxy_header_still_names_the_client_inside_tls(loop_name, pki):
    def client(port: int) -> int:
        with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
            raw.sendall(b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 25\r\n")
            c = smtplib.SMTP(timeout=20)
            c.sock, c.file, c._host = raw, None, "localhost"
            c.getreply()
            c.ehlo("client.test")
            c.starttls(context=client_ssl(pki))
            c.ehlo("client.test")
            code, _ = c.mail(f"secretariat@{OTHER_DOMAIN}")
            c.quit()
            return code

    recorder, code, _ = _serve(loop_name, pki, client, proxy_protocol_timeout=5)
    assert code == 250
    assert [str(m["proxy"]) for m in recorder.mails] == ["192.0.2.7"]


@pytest.mark.parametrize("loop_name", list(LOOPS))
def test_a_failed_handshake_ends_the_session(loop_name, pki):
    def client(port: int) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
            f = raw.makefile("rb")
            _reply(f)
            raw.sendall(b"EHLO client.test\r\nSTARTTLS\r\n")
            _reply(f)
            _reply(f)
            raw.sendall(b"this is no ClientHello\r\n" * 4)
            rest = b""
            with contextlib.suppress(OSError):
                while chunk := raw.recv(4096):  # the server closes the connection
                    rest += chunk
            return rest

    recorder, rest, sessions = _serve(loop_name, pki, client)
    assert b"250 OK" not in rest  # no SMTP reply in clear after the failed handshake
    assert not sessions.open and recorder.mails == []

