"""Shared helpers of the Chromium tests (Playwright against Debian's Chromium): the browser,
a logged-in page, and the wait for the live connection."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
WAIT = 20_000  # upper bound of a wait in ms (never a timing assertion)
expect.set_options(timeout=WAIT)


@pytest.fixture(scope="module", name="browser")
def browser_fixture() -> Browser:
    """Chromium, once per test module (import ``browser_fixture`` to use the ``browser`` fixture)."""
    if not CHROMIUM.exists():
        pytest.skip("Debian chromium is not installed at /usr/bin/chromium (.ci/run installs it)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM),
                              args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        yield b
        b.close()


def open_page(browser: Browser, server, username: str, password: str = "demo", **context) -> Page:
    ctx = browser.new_context(locale="fr-FR", timezone_id="Europe/Paris",
                              **({"viewport": {"width": 1366, "height": 820}} | context))
    page = ctx.new_page()
    page.set_default_timeout(WAIT)
    page.errors = []  # type: ignore[attr-defined]
    page.on("pageerror", lambda e: page.errors.append(str(e)))  # type: ignore[attr-defined]
    page.on("console", lambda m: page.errors.append(m.text)  # type: ignore[attr-defined]
            if m.type == "error" and "Content Security Policy" in m.text else None)
    page.goto(server.base_url + "/connexion")
    page.fill("#username", username)
    page.fill("#password", password)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r"/boite"))
    return page


def wait_live(page: Page) -> None:
    expect(page.locator("body")).to_have_attribute("data-live", "1")


def hold_first_answer(page: Page, url: str) -> list:
    """Route ``url``: the first request the page makes is answered by the server at once and the
    answer held, so that the test hands it to the page later (an answer overtaken by events);
    later requests go through. The list gets the (route, response) pair."""
    held: list = []

    def route(r) -> None:
        if held:
            r.continue_()
        else:
            held.append((r, r.fetch()))

    page.route(url, route)
    return held


def wait_for_held(page: Page, held: list) -> tuple:
    """The held (route, response) pair, once the page has made its request (bounded wait)."""
    for _ in range(WAIT // 25):
        if held:
            return held[0]
        page.wait_for_timeout(25)
    raise AssertionError("the page never made the request the test holds")
