"""Issue 13 in Chromium, with fresh accounts: the care-team icon follows the patient into the
message list, the conversation list and the chat header (grey, then green once the viewer
declares themselves from the patient page the icon leads to); a team member who takes no part in
a conversation about the patient reads it from the record, read-only, at phone width, and sees
new messages arrive in place."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.browser_support import (  # noqa: F401 (the browser fixture)
    browser_fixture,
    hold_first_answer,
    open_page,
    wait_for_held,
)
from tests.test_care_team_record import setup_patient
from tests.test_record_conversations import conversation_about

pytestmark = pytest.mark.browser
PHONE = {"width": 375, "height": 740}


def test_icon_in_rows_and_chat_header_turns_green(server, make_user, browser):
    g, n, _o, pid, sent, _att = setup_patient(server, make_user)
    nurse = n.get("/api/v1/me").json()
    conv = g.post("/api/v1/conversations", json={"title": "Suivi de plaie", "participants": [sent["to"][0]["address"]],
                                                 "patient_id": pid, "body": "Pansement fait ?"})
    assert conv.status_code == 201, conv.text
    page = open_page(browser, server, nurse["username"], "secret-pass")
    row = page.locator("li.item", has_text="Soins de plaie")
    expect(row.locator(".item-patient .ct-icon.off")).to_have_count(1)
    expect(row.locator(".item-patient")).to_contain_text("MOREAU")
    page.goto(server.base_url + "/conversations")
    conv_row = page.locator(".conv-item", has_text="Suivi de plaie")
    expect(conv_row.locator(".conv-patient .ct-icon.off")).to_have_attribute("aria-label",
                                                                              "Vous ne suivez pas ce patient")
    # The icon leads to the patient page, where one declares oneself.
    conv_row.locator(".conv-patient").click()
    page.wait_for_url(re.compile(rf"/patients/{pid}$"))
    page.get_by_role("button", name=re.compile("Me déclarer acteur")).click()
    expect(page.locator("h1 .ct-icon.on")).to_have_count(1)
    page.goto(server.base_url + "/conversations")
    expect(page.locator(".conv-item", has_text="Suivi de plaie").locator(".conv-patient .ct-icon.on")) \
        .to_have_attribute("aria-label", "Vous êtes acteur de la prise en charge")
    page.goto(server.base_url + "/boite")
    expect(page.locator("li.item", has_text="Soins de plaie").locator(".item-patient .ct-icon.on")).to_have_count(1)
    page.goto(server.base_url + f"/conversations/{conv.json()['id']}")
    expect(page.locator(".chat-patient .ct-icon.on")).to_have_count(1)
    expect(page.locator(".chat-patient a")).to_have_attribute("href", f"/patients/{pid}")
    assert not page.errors, page.errors
    page.context.close()


def test_icons_follow_a_declaration_made_elsewhere_live(server, make_user, browser):
    """Declared or withdrawn from another device (here the API): the open list's icon and the open
    letter's icon change in place, without a reload."""
    _g, n, _o, pid, _sent, _att = setup_patient(server, make_user)
    page = open_page(browser, server, n.get("/api/v1/me").json()["username"], "secret-pass")
    row = page.locator("li.item", has_text="Soins de plaie")
    expect(row.locator(".item-patient .ct-icon.off")).to_have_count(1)
    row.locator("a").first.click()
    expect(page.locator("#message .patient .ct-icon.off")).to_have_count(1)
    expect(page.locator("body[data-live='1']")).to_have_count(1)
    page.evaluate("window.__same_page = true")
    assert n.put(f"/api/v1/patients/{pid}/care-team/me").status_code == 200
    expect(row.locator(".item-patient .ct-icon.on")).to_have_attribute("aria-label",
                                                                       "Vous êtes acteur de la prise en charge")
    expect(page.locator("#message .patient .ct-icon.on")).to_have_count(1)
    assert n.delete(f"/api/v1/patients/{pid}/care-team/me").status_code == 200
    expect(row.locator(".item-patient .ct-icon.off")).to_have_attribute("aria-label", "Vous ne suivez pas ce patient")
    expect(page.locator("#message .patient .ct-icon.off")).to_have_count(1)
    assert page.evaluate("window.__same_page === true")  # no reload happened
    assert not page.errors, page.errors
    page.context.close()


def test_a_list_rendered_before_a_declaration_and_shown_after_it_keeps_the_new_icon(server, make_user, browser):
    """A list refresh in flight when the declaration's event arrives was rendered with the old icon;
    swapped in after the event, it must still show the new state (the race CI met once)."""
    _g, n, _o, pid, _sent, _att = setup_patient(server, make_user)
    page = open_page(browser, server, n.get("/api/v1/me").json()["username"], "secret-pass")
    row = page.locator("li.item", has_text="Soins de plaie")
    expect(row.locator(".item-patient .ct-icon.off")).to_have_count(1)
    expect(page.locator("body[data-live='1']")).to_have_count(1)
    # The list is rendered now (grey icon) and handed to the page only when the test says so.
    held = hold_first_answer(page, "**/boite/liste?*")
    page.evaluate("document.body.dispatchEvent(new Event('monsisra:refresh'))")
    route, stale = wait_for_held(page, held)
    assert n.put(f"/api/v1/patients/{pid}/care-team/me").status_code == 200
    expect(row.locator(".item-patient .ct-icon.on")).to_have_count(1)
    page.evaluate("document.querySelector('#liste').dataset.before = '1'")
    assert "ct-icon off" in stale.text(), "the held list was rendered before the declaration"
    route.fulfill(response=stale)
    expect(page.locator("#liste[data-before]")).to_have_count(0)  # the stale list is in place
    expect(row.locator(".item-patient .ct-icon.on")).to_have_attribute("aria-label",
                                                                       "Vous êtes acteur de la prise en charge")
    page.unroute("**/boite/liste?*")
    assert not page.errors, page.errors
    page.context.close()


def test_patient_page_follows_two_quick_changes_made_elsewhere(server, make_user, browser):
    """Declared then withdrawn from another device while the page is still fetching the first
    change: the team table and the toggle end on the last state (the second event is not dropped)."""
    _g, n, _o, pid, _sent, _att = setup_patient(server, make_user)
    page = open_page(browser, server, n.get("/api/v1/me").json()["username"], "secret-pass")
    page.goto(server.base_url + f"/patients/{pid}")
    expect(page.locator("#care-team-toggle button")).to_contain_text("Me déclarer acteur")
    expect(page.locator("body[data-live='1']")).to_have_count(1)
    page.evaluate("""window.__ct = 0; document.addEventListener("monsisra:event", function (e) {
        if (e.detail.type === "patient.care_team") window.__ct++; });""")
    # The part is rendered between the two changes and handed to the page after the second.
    held = hold_first_answer(page, server.base_url + f"/patients/{pid}")
    assert n.put(f"/api/v1/patients/{pid}/care-team/me").status_code == 200
    route, stale = wait_for_held(page, held)
    assert "(vous)" in stale.text()
    assert n.delete(f"/api/v1/patients/{pid}/care-team/me").status_code == 200
    page.wait_for_function("() => window.__ct >= 2")  # the second event reached the page
    route.fulfill(response=stale)
    expect(page.locator("#care-team")).not_to_contain_text("(vous)")
    expect(page.locator("#care-team-toggle button")).to_contain_text("Me déclarer acteur")
    page.unroute(server.base_url + f"/patients/{pid}")
    assert not page.errors, page.errors
    page.context.close()


def test_team_member_reads_conversation_from_record_read_only(server, make_user, browser):
    g, n, _o, pid, _sent, _att = setup_patient(server, make_user)
    _c, conv, _file = conversation_about(server, make_user, g, pid)
    n.put(f"/api/v1/patients/{pid}/care-team/me")
    page = open_page(browser, server, n.get("/api/v1/me").json()["username"], "secret-pass", viewport=PHONE)
    page.goto(server.base_url + f"/patients/{pid}/dossier")
    page.locator("#timeline .kind-conversation a", has_text="Avis cicatrisation").click()
    page.wait_for_url(re.compile(rf"/patients/{pid}/dossier/conversations/{conv['id']}$"))
    expect(page.locator("#consult-banner")).to_contain_text("Consultation depuis le dossier partagé")
    expect(page.locator(".bubble .text").last).to_have_text("Le compte rendu")
    expect(page.locator(".bubble .attachment")).to_contain_text("compte-rendu.pdf")
    expect(page.locator("#composer, #composer-text, textarea")).to_have_count(0)
    # Nothing overflows the phone's width.
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    # A participant writes: the read-only view shows it in place (the team member is told that the
    # record changed, and the page reads it again).
    expect(page.locator("body[data-live='1']")).to_have_count(1)
    page.evaluate("window.__same_page = true")
    assert g.post(f"/api/v1/conversations/{conv['id']}/messages", json={"body": "Cicatrisation en bonne voie"}
                  ).status_code == 201
    expect(page.locator(".bubble .text").last).to_have_text("Cicatrisation en bonne voie")
    assert page.evaluate("window.__same_page === true")
    assert not page.errors, page.errors
    page.context.close()
