"""Conversations in Debian's Chromium: two browser contexts exchange messages live (bubble,
typing, « Vu par … »); a nurse at phone width (375 px) posts a camera photo, whose stored copy
has no EXIF; an outsider's browser gets the French 404 page."""

from __future__ import annotations

import io
import re

import pytest
from PIL import Image
from playwright.sync_api import expect

from tests.browser_support import (  # noqa: F401 (the browser fixture)
    browser_fixture,
    hold_first_answer,
    open_page,
    wait_for_held,
    wait_live,
)
from tests.support import unique

pytestmark = pytest.mark.browser
DOMAIN = "monsisra.localhost"


def _users(make_user, n):
    return [make_user(first, unique(last), civility="Dr" if i == 0 else "", national_id="8" + str(i + 3) * 11)
            for i, (first, last) in enumerate((("Anne", "Chat"), ("Claire", "Soin"), ("Olivier", "Dehors"))[:n])]


def start_conversation(page, server, title: str, address: str, body: str) -> str:
    """Start a conversation from the page's form; the chat's address."""
    page.goto(server.base_url + "/conversations")
    page.fill("#title", title)
    page.fill("#participants", address)
    page.fill("#body", body)
    page.click("text=Démarrer la conversation")
    page.wait_for_url(re.compile(r"/conversations/\d+$"))
    return page.url


def test_two_contexts_live_bubble_typing_seen(server, browser, make_user):
    (a_user, _, _), (c_user, c_addr, _), (o_user, _, _) = _users(make_user, 3)
    anne = open_page(browser, server, a_user, "secret-pass")
    url = start_conversation(anne, server, "Plaie du talon", c_addr, "Bonjour, pouvez-vous passer ?")
    claire = open_page(browser, server, c_user, "secret-pass")
    claire.goto(server.base_url + "/conversations")
    expect(claire.locator(".conv-item.unread .conv-title")).to_have_text("Plaie du talon")
    claire.goto(url)
    wait_live(claire)
    wait_live(anne)
    expect(claire.locator(".bubble.theirs .text")).to_have_text("Bonjour, pouvez-vous passer ?")
    # Presence: Claire, connected, shows online in Anne's chat.
    expect(anne.locator(f'.person[data-address="{c_addr}"] .dot')).to_have_class(re.compile(r"\bonline\b"))
    # Anne sees that Claire read it.
    expect(anne.locator("#chat-seen")).to_contain_text("Vu par")
    claire.fill("#composer-text", "Oui, je passe à 14 h")
    expect(anne.locator("#chat-typing")).to_contain_text("écrit")
    claire.press("#composer-text", "Enter")
    expect(anne.locator(".bubble.theirs .text")).to_have_text("Oui, je passe à 14 h")
    expect(claire.locator(".bubble.mine .text")).to_have_text("Oui, je passe à 14 h")
    # Maj+Entrée: a new line, nothing sent.
    anne.fill("#composer-text", "ligne 1")
    anne.press("#composer-text", "Shift+Enter")
    anne.type("#composer-text", "ligne 2")
    anne.press("#composer-text", "Enter")
    expect(claire.locator(".bubble.theirs .text").last).to_have_text("ligne 1\nligne 2")
    expect(anne.locator(".day")).to_have_count(1)
    # Add a participant, then close: the summary letter lands in every inbox.
    (_, d_addr, _), = [make_user("Denis", unique("Ajout"))]
    anne.click(".chat-actions summary")
    anne.fill("#add-address", d_addr)
    anne.click("#chat-add button[type=submit]")
    expect(anne.locator("#chat-people")).to_contain_text("Denis")
    anne.on("dialog", lambda d: d.accept())
    anne.click(".chat-actions summary")
    anne.click("#chat-close")
    expect(anne.locator("#chat-closed")).to_contain_text("close")
    expect(anne.locator("#composer")).to_be_hidden()
    expect(claire.locator("#chat-closed")).to_contain_text("close")
    claire.goto(server.base_url + "/boite")
    expect(claire.locator("#liste")).to_contain_text("Synthèse de la conversation « Plaie du talon »")
    assert not anne.errors and not claire.errors
    # An outsider gets the French 404 page.
    outsider = open_page(browser, server, o_user, "secret-pass")
    response = outsider.goto(url)
    assert response.status == 404
    expect(outsider.locator("body")).to_contain_text("Conversation introuvable")
    for page in (anne, claire, outsider):
        page.context.close()


def test_phone_nurse_posts_camera_photo_without_exif(server, browser, make_user, tmp_path):
    (a_user, a_addr, _), (c_user, _, _) = _users(make_user, 2)
    with server.login(c_user, "secret-pass") as api:
        r = api.post("/api/v1/conversations", json={"title": "Photo plaie", "participants": [a_addr]})
        assert r.status_code == 201
        conv_id = r.json()["id"]
    img = Image.new("RGB", (1600, 1200), (180, 60, 60))
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"
    exif[0x8825] = {1: "N", 2: (45.0, 46.0, 0.0)}
    photo = tmp_path / "IMG_0001.jpg"
    img.save(photo, format="JPEG", exif=exif.tobytes())
    nurse = open_page(browser, server, c_user, "secret-pass", viewport={"width": 375, "height": 740},
                      is_mobile=True, has_touch=True)
    nurse.goto(server.base_url + f"/conversations/{conv_id}")
    wait_live(nurse)
    expect(nurse.locator("#chat")).to_have_attribute("data-ready", "1")
    assert nurse.evaluate("document.documentElement.scrollWidth") <= 375
    assert nurse.get_attribute("#photo", "accept") == "image/*"
    assert nurse.get_attribute("#photo", "capture") is not None
    nurse.fill("#composer-text", "Voici la plaie")
    nurse.set_input_files("#photo", str(photo))
    expect(nurse.locator(".bubble.mine img.photo")).to_have_count(1)
    expect(nurse.locator(".bubble.mine .text")).to_have_text("Voici la plaie")
    assert nurse.evaluate("document.documentElement.scrollWidth") <= 375
    with server.login(a_user, "secret-pass") as api:
        item = api.get(f"/api/v1/conversations/{conv_id}").json()["messages"]["items"][-1]
        stored = api.get(f"/api/v1/attachments/{item['attachments'][0]['id']}").content
    with Image.open(io.BytesIO(stored)) as image:
        assert not image.getexif() and "exif" not in image.info
    assert not nurse.errors
    nurse.context.close()


def test_presence_answer_older_than_a_live_event_does_not_win(server, browser, make_user):
    """The chat page asks for its participants' presence when it opens; an answer computed before a
    participant connects but received after the live « online » event must not put them back offline."""
    (a_user, _, _), (c_user, c_addr, _) = _users(make_user, 2)
    anne = open_page(browser, server, a_user, "secret-pass")
    url = start_conversation(anne, server, "Présence", c_addr, "Bonjour")
    anne.goto("about:blank")  # no request of the first chat page can reach the route below
    # The test learns when the page has read a presence answer (the answer, then its handlers).
    anne.add_init_script("""(function () {
      window.__presenceRead = 0;
      var f = window.fetch;
      window.fetch = function (u) {
        var p = f.apply(this, arguments);
        if (String(u).indexOf("/api/v1/presence") >= 0) {
          p.then(function (r) { return r.clone().text(); })
           .then(function () { setTimeout(function () { window.__presenceRead++; }, 50); }, function () {});
        }
        return p;
      };
    })();""")
    held = hold_first_answer(anne, "**/api/v1/presence?*")  # answered while Claire is away
    anne.goto(url)
    wait_live(anne)
    route, stale = wait_for_held(anne, held)
    assert '"offline"' in stale.text(), "asked while Claire is away"
    dot = anne.locator(f'.person[data-address="{c_addr}"] .dot')
    claire = open_page(browser, server, c_user, "secret-pass")
    claire.goto(server.base_url + "/conversations")
    wait_live(claire)
    expect(dot).to_have_class(re.compile(r"\bonline\b"))  # the live event
    route.fulfill(response=stale)
    anne.wait_for_function("() => window.__presenceRead >= 1")
    assert re.search(r"\bonline\b", dot.get_attribute("class")), dot.get_attribute("class")
    anne.unroute("**/api/v1/presence?*")
    assert not anne.errors, anne.errors
    anne.context.close()
    claire.context.close()
