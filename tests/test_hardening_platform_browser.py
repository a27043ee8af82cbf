"""Issue 11, platform items in Debian's Chromium: /docs works offline under our CSP, error pages
are French pages, and a missing message says so in the reading pane."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from monsisra.api.deps import MAX_ID

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
WAIT = 20_000  # upper bound of a wait in ms (never a timing assertion)
expect.set_options(timeout=WAIT)


@pytest.fixture(scope="module")
def browser() -> Browser:
    if not CHROMIUM.exists():
        pytest.skip("Debian chromium is not installed at /usr/bin/chromium (.ci/run installs it)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM),
                              args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        yield b
        b.close()


class Watched:
    """A page whose every request must stay on the test server: others are aborted and noted,
    as are CSP violations and script errors."""

    def __init__(self, browser: Browser, server) -> None:
        self.context = browser.new_context(locale="fr-FR", timezone_id="Europe/Paris")
        self.outside: list[str] = []
        self.requests: list[str] = []
        self.errors: list[str] = []
        local = server.base_url + "/"

        def route(r):
            if r.request.url.startswith(local):
                r.continue_()
            else:
                self.outside.append(r.request.url)
                r.abort()

        self.context.route("**/*", route)
        self.page: Page = self.context.new_page()
        self.page.set_default_timeout(WAIT)
        self.page.on("request", lambda req: self.requests.append(req.url))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("console", lambda m: self.errors.append(m.text)
                     if m.type == "error" and "Content Security Policy" in m.text else None)

    def check(self) -> None:
        assert not self.outside, self.outside
        assert not self.errors, self.errors

    def close(self) -> None:
        self.context.close()


def test_docs_render_the_operations_offline_under_the_csp(browser, server):
    watched = Watched(browser, server)
    try:
        page = watched.page
        response = page.goto(server.base_url + "/docs")
        assert response.status == 200 and "default-src 'self'" in response.headers["content-security-policy"]
        # Tags come closed (the whole document open at once stalls Swagger UI); one opens with a click.
        tags = page.locator(".opblock-tag")
        expect(tags.first).to_be_visible()
        expect(page.locator(".opblock-tag", has_text="teleexpertise")).to_be_visible()
        assert tags.count() >= 10
        page.locator(".opblock-tag", has_text="messages").first.click()
        operations = page.locator(".opblock")
        expect(operations.first).to_be_visible()
        assert operations.count() >= 5
        expect(page.locator(".opblock-summary-path", has_text="/api/v1/messages").first).to_be_visible()
        # Opening an operation works too (React re-renders, still under the CSP).
        page.locator(".opblock-summary", has_text="/api/v1/mailboxes").first.click()
        expect(page.locator(".opblock-body").first).to_be_visible()
        assert any(url.endswith("/openapi.json") for url in watched.requests)
        assert all(url.startswith(server.base_url + "/") for url in watched.requests), watched.requests
        watched.check()
    finally:
        watched.close()


def test_an_unknown_address_is_a_french_page(browser, server):
    watched = Watched(browser, server)
    try:
        page = watched.page
        response = page.goto(server.base_url + "/cette-page-n-existe-pas")
        assert response.status == 404
        expect(page.get_by_role("heading", name="Page introuvable")).to_be_visible()
        assert page.evaluate("document.documentElement.lang") == "fr"
        page.get_by_role("link", name="Retour à la boîte de réception").click()
        page.wait_for_url(re.compile(r"/connexion"))  # not logged in: the inbox asks for the login first
        response = page.goto(server.base_url + "/message/abc/1")
        assert response.status == 404
        expect(page.get_by_role("heading", name="Page introuvable")).to_be_visible()
        watched.check()
    finally:
        watched.close()


def test_a_missing_message_says_so_in_the_reading_pane(browser, server):
    alice = server.login("alice.martin")
    box = next(b["id"] for b in alice.get("/api/v1/mailboxes").json() if b["kind"] == "PER")
    watched = Watched(browser, server)
    try:
        page = watched.page
        page.goto(server.base_url + "/connexion")
        page.fill("#username", "alice.martin")
        page.fill("#password", "demo")
        page.click("button[type=submit]")
        page.wait_for_url(re.compile(r"/boite"))
        # A link to a message that is not (or no longer) there.
        page.goto(server.base_url + f"/boite?bal={box}&ouvrir={MAX_ID}")
        expect(page.locator("#lecture")).to_contain_text("Message introuvable")
        # The same answer when the pane loads it through htmx (as a click on the list does).
        page.goto(server.base_url + f"/boite?bal={box}")
        page.evaluate(f"htmx.ajax('GET', '/message/{box}/{MAX_ID - 1}', {{target: '#lecture'}})")
        expect(page.locator("#lecture")).to_contain_text("Message introuvable")
        # And opened in full page.
        response = page.goto(server.base_url + f"/message/{box}/{MAX_ID}?plein=1")
        assert response.status == 404
        expect(page.get_by_role("heading", name="Message introuvable")).to_be_visible()
        watched.check()
    finally:
        watched.close()
