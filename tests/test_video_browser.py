"""Visio in Chromium with fake camera and microphone: two professionals' contexts in a call
receive each other's video (``getStats()``: frames decoded on both sides), again with ICE forced
through TURN alone (a coturn started here on 127.0.0.1); a patient joins through the waiting
room of a teleconsultation; three people in one call each decode the two others, and mute,
camera off and screen sharing reach the others; the two sides of a tele-expertise see each other."""

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


# ---- tele-expertise, three people, controls --------------------------------------------------

BY_PEER = "async () => window.monsisraCall ? await window.monsisraCall.framesByPeer() : {}"
# The browser's screen picker cannot run headless (no display): getDisplayMedia gives a canvas
# track instead, so what is tested is ours: the track replacing the camera on every connection.
FAKE_SCREEN = """navigator.mediaDevices.getDisplayMedia = async () => {
  const c = document.createElement('canvas'); c.width = 320; c.height = 240;
  const g = c.getContext('2d'); let n = 0;
  setInterval(() => { g.fillStyle = n++ % 2 ? '#204080' : '#802040'; g.fillRect(0, 0, 320, 240); }, 50);
  return c.captureStream(15);
};"""


def _decodes_from(page, peers: list[str]) -> None:
    """Wait until the page has decoded video frames from each of these peers."""
    page.wait_for_function("async (peers) => { const f = window.monsisraCall ? "
                           "await window.monsisraCall.framesByPeer() : {};"
                           " return peers.every(p => (f[p] || 0) > 0); }", arg=peers, timeout=WAIT)


def _more_frames_from(page, peer: str, than: int) -> None:
    page.wait_for_function("async ([peer, n]) => ((await window.monsisraCall.framesByPeer())[peer] || 0) > n",
                           arg=[peer, than], timeout=WAIT)


def _frames_stop_from(page, peer: str) -> int:
    """Wait until no more frame is decoded from ``peer`` between two polls 800 ms apart."""
    handle = page.wait_for_function("""async (peer) => {
      const n = (await window.monsisraCall.framesByPeer())[peer] || 0;
      const was = window.__lastFrames; window.__lastFrames = n;
      return was === n ? n : false;
    }""", arg=peer, polling=800, timeout=WAIT)
    return handle.json_value()


def test_three_people_mute_camera_off_and_screen_sharing(server, browser, make_user):
    people = [make_user(first, unique("Trio"), civility="Dr", national_id="8" + d * 11)
              for first, d in (("Anne", "4"), ("Bruno", "5"), ("Chloé", "6"))]
    client = server.login(people[0][0], "secret-pass")
    r = client.post("/api/v1/conversations", json={"title": "Réunion de concertation", "body": "Bonjour",
                                                   "participants": [people[1][1], people[2][1]]})
    assert r.status_code == 201, r.text
    conv = r.json()["id"]
    pages = [open_page(browser, server, p[0], "secret-pass") for p in people]
    anne, bruno, chloe = pages
    chloe.context.add_init_script(FAKE_SCREEN)
    for page in pages:
        page.goto(f"{server.base_url}/conversations/{conv}")
        wait_live(page)
    anne.click("#chat-visio")  # the call opens in place: no reload
    expect(anne.locator("#visio-status")).to_contain_text("En attente des autres participants")
    for page in (bruno, chloe):
        expect(page.locator("#sonnerie")).to_contain_text("vous appelle en visio")
        page.click("#sonnerie-rejoindre")
        page.wait_for_function("() => !!window.monsisraCall", timeout=WAIT)
    peer = {name: page.evaluate("() => window.monsisraCall.peer") for name, page in zip("abc", pages, strict=True)}
    for me, page in zip("abc", pages, strict=True):
        _decodes_from(page, [peer[x] for x in "abc" if x != me])
        expect(page.locator("#visio-grid video")).to_have_count(3)

    # Mute: the others see « micro coupé » on Anne's tile; Anne sends no audio packet any more.
    anne.click("#visio-mute")
    expect(anne.locator("#visio-mute")).to_have_attribute("aria-pressed", "true")
    for page in (bruno, chloe):
        expect(page.locator(f"#visio-peer-{peer['a']} .visio-mic-off")).to_be_visible()
    anne.wait_for_function("""async () => {
      const n = await window.monsisraCall.audioPacketsSent();
      const was = window.__lastAudio; window.__lastAudio = n;
      return was === n;
    }""", polling=800, timeout=WAIT)
    anne.click("#visio-mute")
    for page in (bruno, chloe):
        expect(page.locator(f"#visio-peer-{peer['a']} .visio-mic-off")).to_be_hidden()

    # Camera off: the others show the placeholder and decode nothing more from Bruno; back on, again.
    bruno.click("#visio-camera")
    for page in (anne, chloe):
        expect(page.locator(f"#visio-peer-{peer['b']} .visio-off")).to_be_visible()
    stopped = _frames_stop_from(anne, peer["b"])
    bruno.click("#visio-camera")
    expect(anne.locator(f"#visio-peer-{peer['b']} .visio-off")).to_be_hidden()
    _more_frames_from(anne, peer["b"], stopped)

    # Screen sharing: Chloé's screen replaces her camera on every connection; the others go on decoding.
    shared_at = {name: page.evaluate(BY_PEER)[peer["c"]] for name, page in (("a", anne), ("b", bruno))}
    chloe.click("#visio-screen")
    expect(chloe.locator("#visio-screen")).to_have_attribute("aria-pressed", "true")
    assert chloe.evaluate("""() => Object.values(window.monsisraCall.pcs).every(pc => pc.getSenders()
        .some(s => s.track && s.track === window.monsisraScreen()))""")
    for name, page in (("a", anne), ("b", bruno)):
        _more_frames_from(page, peer["c"], shared_at[name] + 20)
    chloe.click("#visio-screen")
    expect(chloe.locator("#visio-screen")).to_have_attribute("aria-pressed", "false")
    for page in pages:
        # Hanging up goes back to the conversation (the same address): wait for that navigation,
        # or leaving the page below is interrupted by it.
        with page.expect_navigation(url=re.compile(rf"/conversations/{conv}$")):
            page.click("#visio-hangup")
    expect(anne.locator("#bubbles")).to_contain_text("Visio terminée")
    errors = [e for page in pages for e in page.errors]
    assert not errors, errors
    for page in pages:
        # Leave the page first: once, closing the context of a page that had shared a canvas
        # stream never returned (Chromium kept the renderer), and the suite hung there.
        page.goto("about:blank")
        page.context.close()


def test_teleexpertise_sides_see_each_other(server, browser, make_user):
    from monsisra.domain.model import Access
    from monsisra.services import mailboxes
    from tests.test_teleexpertise import fresh_ins, payload

    local = unique("avis")
    box = server.call(mailboxes.create_service_mailbox, server.core, local=local, display_name=f"Avis {local}",
                      organisation="CHU test", is_expert=True, description="Avis sur dossier.")
    expert_user, _, _ = make_user("Expert", unique("EXP"), civility="Dr", profession="Médecin",
                                  profession_code="10", national_id="8" + "7" * 11)
    expert = server.login(expert_user, "secret-pass")
    server.call(mailboxes.grant, server.core, box.id, expert.get("/api/v1/me").json()["id"], Access.MEMBER)
    req_user, _, _ = make_user("Requérante", unique("REQ"), civility="Dr", profession="Médecin",
                               profession_code="10", national_id="8" + "8" * 11)
    created = server.login(req_user, "secret-pass").post("/api/v1/teleexpertises",
                                                          json=payload(box.address, fresh_ins()))
    assert created.status_code == 201, created.text
    te = created.json()["id"]
    requester = open_page(browser, server, req_user, "secret-pass")
    expert_page = open_page(browser, server, expert_user, "secret-pass", viewport={"width": 375, "height": 740})
    for page in (requester, expert_page):
        page.goto(f"{server.base_url}/teleexpertises/{te}")
        wait_live(page)
    requester.click("#te-visio")  # the call opens in the tele-expertise page
    expect(requester.locator("#visio-status")).to_contain_text("En attente des autres participants")
    expect(expert_page.locator("#sonnerie")).to_contain_text("vous appelle en visio")
    expert_page.click("#sonnerie-rejoindre")
    expert_page.wait_for_url(re.compile(r"/visio/\d+$"))
    for page in (requester, expert_page):
        page.wait_for_function(FRAMES, timeout=WAIT)
    expert_page.click("#visio-hangup")
    requester.click("#visio-hangup")
    requester.wait_for_url(re.compile(rf"/teleexpertises/{te}$"))
    expect(requester.locator(".te-steps li[data-action=visio]").last).to_contain_text("Visio terminée")
    assert not requester.errors and not expert_page.errors, requester.errors + expert_page.errors
    requester.context.close()
    expert_page.context.close()
