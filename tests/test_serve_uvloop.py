"""``monsisra serve`` runs on uvloop: its log says so, and what goes through the loop's TLS works
there: SMTP STARTTLS with the gateway's client certificate checks, IMAP STARTTLS, HTTPS."""

from __future__ import annotations

import imaplib
import ssl

import httpx

from tests.gateway_support import OTHER_DOMAIN, client_ssl, smtp_send
from tests.test_gateway_crash import DOMAIN, Serve, _mail, serve_env


def test_serve_runs_on_uvloop_with_its_tls_listeners(backend, tmp_path):
    with serve_env(backend, tmp_path) as (env, pki):
        serve = Serve(env, tmp_path / "serve.log")
        serve.start()
        try:
            port = int(env["MONSISRA_SMTP_PORT"])
            subject, raw = _mail(0, "uvloop")
            # The certificate reaches the gateway's checks: one not covering the sender's domain is refused.
            other = client_ssl(pki, pki.issue("elsewhere", ["mx.ailleurs.localhost"]))
            code, text = smtp_send(port, f"secretariat@{OTHER_DOMAIN}", [f"crash.test@{DOMAIN}"], raw, other)
            assert code == 550 and "ne couvre pas" in text, text
            own = client_ssl(pki, pki.issue("peer", [f"mx.{OTHER_DOMAIN}"]))
            code, text = smtp_send(port, f"secretariat@{OTHER_DOMAIN}", [f"crash.test@{DOMAIN}"], raw, own)
            assert code == 250, text

            with imaplib.IMAP4("127.0.0.1", int(env["MONSISRA_IMAP_PORT"]), timeout=30) as imap:
                imap.starttls(ssl_context=client_ssl(pki))
                imap.login("crash.test", "secret-pass")
                imap.select("INBOX")
                status, found = imap.search(None, "SUBJECT", f'"{subject}"')
                assert status == "OK" and len(found[0].split()) == 1, found

            https = f"https://127.0.0.1:{env['MONSISRA_HTTPS_PORT']}"
            with httpx.Client(base_url=https, verify=ssl.create_default_context(cafile=str(pki.ca_cert)),
                              timeout=30) as client:
                r = client.post("/api/v1/auth/token", data={"username": "crash.test", "password": "secret-pass"})
            assert r.status_code == 200, r.text
        finally:
            serve.stop()
        assert "event loop: uvloop.Loop" in (tmp_path / "serve.log").read_text()
