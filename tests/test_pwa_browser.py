"""Issue 16, item 5: the installable app in Chromium — the manifest is detected, the service
worker is active, Chromium reports no installability error (CDP ``Page.getInstallabilityErrors``),
and with the server gone the last inbox page is shown marked « Hors ligne »; nothing from the
API is in the caches."""

from __future__ import annotations

import re

import httpx
import pytest
from playwright.sync_api import BrowserContext, expect, sync_playwright

from tests.browser_support import CHROMIUM, WAIT
from tests.reach_support import make_pro, own_server

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def profile(tmp_path_factory):
    """Chromium with a real profile on disk: an incognito context can never install an app."""
    if not CHROMIUM.exists():
        pytest.skip("Debian chromium is not installed at /usr/bin/chromium (.ci/run installs it)")
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=str(CHROMIUM), locale="fr-FR",
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        yield context
        context.close()


def _login(context: BrowserContext, base_url: str, username: str, password: str):
    page = context.new_page()
    page.set_default_timeout(WAIT)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(base_url + "/connexion")
    page.fill("#username", username)
    page.fill("#password", password)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r"/boite"))
    return page, errors


def test_manifest_and_service_worker_are_served(server):
    with httpx.Client(base_url=server.base_url, timeout=30) as anon:
        r = anon.get("/manifest.webmanifest")
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/manifest+json")
        manifest = r.json()
        assert manifest["start_url"] == "/boite" and manifest["display"] == "standalone"
        purposes = {(i["sizes"], i["purpose"]) for i in manifest["icons"]}
        assert {("192x192", "any"), ("512x512", "any"), ("512x512", "maskable")} <= purposes
        for icon in manifest["icons"]:
            png = anon.get(icon["src"])
            assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
        sw = anon.get("/sw.js")
        assert sw.status_code == 200 and "javascript" in sw.headers["content-type"]
        assert "__VERSION__" not in sw.text and "/api/" in sw.text
        offline = anon.get("/hors-ligne")
        assert offline.status_code == 200 and "Hors ligne" in offline.text


def test_chromium_installs_the_app_and_shows_the_last_inbox_offline(profile, backend, tmp_path):
    with own_server(backend, tmp_path, demo=False) as srv:
        user, address, _ = make_pro(srv, "Olive", "Horsligne")
        sender, _, sender_box = make_pro(srv, "Serge")
        with srv.login(sender, "secret-pass") as s:
            assert s.post("/api/v1/messages", json={"from_mailbox": sender_box, "to": [address],
                                                    "subject": "Résultats à relire hors ligne",
                                                    "body": "x"}).status_code == 201
        page, errors = _login(profile, srv.base_url, user, "secret-pass")
        state = page.evaluate("navigator.serviceWorker.ready.then(r => r.active && r.active.state)")
        assert state in ("activating", "activated")
        page.wait_for_function("navigator.serviceWorker.ready.then(r => r.active.state === 'activated')")
        cdp = page.context.new_cdp_session(page)
        manifest = cdp.send("Page.getAppManifest")
        assert manifest["url"].endswith("/manifest.webmanifest") and manifest["errors"] == []
        assert cdp.send("Page.getInstallabilityErrors")["installabilityErrors"] == []
        # Once controlled by the worker, the inbox page is kept as the last one seen.
        page.reload()
        page.wait_for_function("navigator.serviceWorker.controller !== null")
        page.reload()
        expect(page.get_by_text("Résultats à relire hors ligne").first).to_be_visible()
        page.wait_for_function("caches.open('monsisra-pages').then(c => c.match('/boite')).then(r => !!r)")
        cached = page.evaluate("""async () => {
            const urls = [];
            for (const name of await caches.keys()) {
                for (const req of await (await caches.open(name)).keys()) { urls.push(req.url); }
            }
            return urls; }""")
        assert any(u.endswith("/boite") for u in cached) and not [u for u in cached if "/api/" in u]
        srv.stop()  # the server is gone: the last inbox page, marked offline
        page.reload()
        expect(page.locator("body")).to_have_attribute("data-hors-ligne", "1")
        expect(page.locator("#hors-ligne")).to_contain_text("Hors ligne")
        expect(page.get_by_text("Résultats à relire hors ligne").first).to_be_visible()
        assert errors == []
        page.close()
