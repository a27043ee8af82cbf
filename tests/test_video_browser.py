"""Visio in Chromium with fake camera and microphone: two professionals' contexts in a call
receive each other's video (``getStats()``: frames decoded on both sides), again with ICE forced
through TURN alone (a coturn started here on 127.0.0.1), and a patient joins through the waiting
room of a teleconsultation."""

from __future__ import annotations

import random
import re
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from playwright.sync_api import expect, sync_playwright

from monsisra.gateway import turnserver
from monsisra.services.video import turn
from tests.browser_support import CHROMIUM, WAIT, open_page, wait_live
from tests.support import free_port, unique

FRAMES = "async () => !!window.monsisraCall && (await window.monsisraCall.framesDecoded()) > 0"
RELAYED = """async () => {
  if (!window.monsisraCall) return false;
  const pcs = Object.values(window.monsisraCall.pcs);
  for (const pc of pcs) {
    const stats = await pc.getStats();
    let pair = null;
    stats.forEach(r => { if (r.type === 'candidate-pair' && r.state === 'succeeded' && r.nominated) pair = r; });
    if (!pair || stats.get(pair.localCandidateId).candidateType !== 'relay') return false;
  }
  return pcs.length > 0;
}"""


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip("Debian chromium is not installed at /usr/bin/chromium")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
            "--autoplay-policy=no-user-gesture-required"])
        yield b
        b.close()


@pytest.fixture
def coturn(server, tmp_path):
    """A coturn on 127.0.0.1 for this test; the server hands out its credentials meanwhile."""
    port = free_port()
    low = random.randrange(40000, 60000, 100)
    proc = turnserver.start("test-turn-secret", port, tmp_path, min_port=low, max_port=low + 99)
    if proc is None:
        pytest.skip("coturn (turnserver) is not installed")
    saved = (server.settings.turn_url, server.settings.turn_secret)
    server.settings.turn_url = f"turn:127.0.0.1:{port}?transport=udp,turn:127.0.0.1:{port}?transport=tcp"
    server.settings.turn_secret = "test-turn-secret"
    try:
        yield port
    finally:
        server.settings.turn_url, server.settings.turn_secret = saved
        turnserver.stop(proc)


def _pair(server, make_user):
    (a_user, _, _) = make_user("Anne", unique("Visio"), civility="Dr", national_id="8" + "4" * 11)
    (b_user, b_addr, _) = make_user("Bruno", unique("Visio"), civility="Dr", national_id="8" + "5" * 11)
    client = server.login(a_user, "secret-pass")
    r = client.post("/api/v1/conversations", json={"title": "Avis plaie", "participants": [b_addr], "body": "Bonjour"})
    assert r.status_code == 201, r.text
    return a_user, b_user, r.json()["id"]


def _call(server, browser, make_user, relay: bool):
    a_user, b_user, conv = _pair(server, make_user)
    alice = open_page(browser, server, a_user, "secret-pass")
    bruno = open_page(browser, server, b_user, "secret-pass")
    wait_live(bruno)
    alice.goto(f"{server.base_url}/conversations/{conv}" + ("?ice=relay" if relay else ""))
    wait_live(alice)
    alice.click("#chat-visio")
    alice.wait_for_url(re.compile(r"visio=\d+"))
    call_id = int(re.search(r"visio=(\d+)", alice.url).group(1))
    # Bruno's page rings; he joins from the banner (or straight to the relay-only page).
    ring = bruno.locator("#sonnerie")
    expect(ring).to_contain_text("vous appelle en visio")
    if relay:
        bruno.goto(f"{server.base_url}/conversations/{conv}?visio={call_id}&ice=relay")
    else:
        bruno.click("#sonnerie-rejoindre")
    for page in (alice, bruno):
        page.wait_for_function(FRAMES, timeout=WAIT)
    if relay:
        for page in (alice, bruno):
            page.wait_for_function(RELAYED, timeout=WAIT)
    expect(alice.locator("#visio-grid video")).to_have_count(2)
    bruno.click("#visio-hangup")
    alice.click("#visio-hangup")
    alice.wait_for_url(re.compile(rf"/conversations/{conv}$"))
    expect(alice.locator("#bubbles")).to_contain_text("Visio terminée")
    assert not alice.errors and not bruno.errors, alice.errors + bruno.errors
    alice.context.close()
    bruno.context.close()


def test_two_professionals_see_each_other(server, browser, make_user):
    _call(server, browser, make_user, relay=False)


def test_relay_only_through_coturn(server, browser, make_user, coturn):
    assert turn.turn_urls(server.settings)[0].endswith(f":{coturn}?transport=udp")
    _call(server, browser, make_user, relay=True)


def test_patient_joins_through_waiting_room(server, browser, make_user):
    a_user, _, _ = make_user("Anne", unique("Tele"), civility="Dr", national_id="8" + "6" * 11)
    pro = open_page(browser, server, a_user, "secret-pass")
    pro.goto(f"{server.base_url}/visio")
    wait_live(pro)
    pro.fill("#tc-family", "Durand")
    pro.fill("#tc-given", "Paul")
    pro.fill("#tc-phone", "06 12 34 56 78")
    soon = datetime.now(ZoneInfo("Europe/Paris")) + timedelta(minutes=10)
    pro.fill("#tc-at-input", soon.strftime("%Y-%m-%dT%H:%M"))
    pro.click("#tc-form button[type=submit]")
    expect(pro.locator("#tc-created")).to_be_visible()
    link = re.search(r"https?://\S+/teleconsultation/\S+", pro.locator("#tc-link").input_value()).group(0)
    link = server.base_url + "/teleconsultation/" + link.rsplit("/", 1)[1]
    patient_ctx = browser.new_context(locale="fr-FR")
    patient = patient_ctx.new_page()
    patient.set_default_timeout(WAIT)
    patient.goto(link)
    patient.click("#patient-test-btn")
    expect(patient.locator("#test-status")).to_contain_text("fonctionnent")
    patient.click("#patient-wait")
    expect(patient.locator("#visio-status")).to_contain_text("salle d'attente")
    item = pro.locator(".tc-item.waiting", has_text="Paul DURAND")
    expect(item).to_contain_text("En salle d'attente")
    item.locator(".tc-admit").click()
    pro.wait_for_url(re.compile(r"/visio/\d+"))
    for page in (pro, patient):
        page.wait_for_function(FRAMES, timeout=WAIT)
    pro.click("#visio-hangup")
    expect(patient.locator("#visio-status")).to_contain_text("terminée")
    # Single use: the same link in another browser is refused; expired once the consultation ended.
    other = browser.new_context().new_page()
    assert other.goto(link).status == 404
    other.context.close()
    patient_ctx.close()
    pro.context.close()
