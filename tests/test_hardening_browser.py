"""Issue 11, items 12, 13, 18 and 19 in Debian's Chromium: recipients' states that change live
on the sent message, the picker refusing addresses outside the trust space (and naming its tags
properly), « Supprimer » to the bin and back, return after sending with a confirmation, the
skip link, and the account menu of the phone writing page."""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from playwright.sync_api import Page, expect

from monsisra.services import outbound, trust
from tests.browser_support import browser_fixture, open_page, wait_live  # noqa: F401 (the browser fixture)

pytestmark = pytest.mark.browser

PARIS = ZoneInfo("Europe/Paris")
TRUSTED = "hardening-web.mssante.fr"


@pytest.fixture(scope="module")
def trusted(server) -> str:
    server.call(trust.add, server.core, [TRUSTED], note="tests")
    return TRUSTED


def box_of(api) -> int:
    return next(b["id"] for b in api.get("/api/v1/mailboxes").json() if b["kind"] == "PER")


def hh_mm(iso: str) -> str:
    return datetime.fromisoformat(iso).astimezone(PARIS).strftime("%H:%M")


def no_reload_marker(page: Page) -> None:
    page.evaluate("window.__sameDocument = 'oui'")


def still_same_document(page: Page) -> bool:
    return page.evaluate("window.__sameDocument") == "oui"


def test_sent_message_states_change_live(server, browser, make_user, trusted):
    sender, _, box = make_user("Émettrice")
    reader, reader_address, reader_box = make_user("Destinataire")
    later, never = f"plein.{uuid.uuid4().hex[:6]}@{trusted}", f"inconnu.{uuid.uuid4().hex[:6]}@{trusted}"
    subject = f"Suivi de remise {uuid.uuid4().hex[:6]}"
    with server.login(sender, "secret-pass") as api:
        sent = api.post("/api/v1/messages", json={"from_mailbox": box, "to": [reader_address, later, never],
                                                  "subject": subject, "body": "x"}).json()
    page = open_page(browser, server, sender, "secret-pass")
    page.goto(f"{server.base_url}/boite?bal={box}&dossier=sent&ouvrir={sent['id']}")
    states = page.locator("#message .recipient-states")
    row = lambda address: states.locator(f'li[data-address="{address}"] .rlabel')  # noqa: E731
    expect(row(reader_address)).to_have_text("remis")
    expect(row(later)).to_have_text("en attente")
    expect(row(never)).to_have_text("en attente")
    wait_live(page)
    no_reload_marker(page)

    # The reader opens it: « lu à HH:MM » appears on the sender's open page.
    with server.login(reader, "secret-pass") as other:
        other.get(f"/api/v1/mailboxes/{reader_box}/messages/{sent['id']}")
    # The other operator answers (what the delivery worker records): retry later, and refusal.
    server.call(outbound.record_outcomes, server.core, sent["id"],
                {later: outbound.Outcome(452, "4.2.2 Boîte pleine", "mx.autre")})
    with server.login(sender, "secret-pass") as api:
        rows = {r["address"]: r for r in api.get(f"/api/v1/messages/{sent['id']}/receipts").json()["items"]}
    expect(row(reader_address)).to_have_text(re.compile(rf"^lu (à|le .+ à) {hh_mm(rows[reader_address]['read_at'])}$"))
    expect(row(later)).to_have_text(re.compile(rf"^nouvel essai (à|le .+ à) {hh_mm(rows[later]['next_attempt_at'])}$"))
    server.call(outbound.record_outcomes, server.core, sent["id"],
                {never: outbound.Outcome(550, "5.1.1 Adresse inconnue", "mx.autre")})
    expect(row(never)).to_have_text("échec : 550 5.1.1 Adresse inconnue")
    expect(states.locator(f'li[data-address="{never}"]')).to_have_attribute("data-state", "failed")
    assert still_same_document(page), "the page was reloaded"
    assert not page.errors, page.errors
    page.context.close()


def test_picker_refuses_outside_the_trust_space_and_names_tags(server, browser, trusted):
    page = open_page(browser, server, "claire.roux")
    page.goto(server.base_url + "/ecrire?type=courrier")
    page.click("#open-picker")
    page.fill("#picker-q", "quelquun@gmail.com")
    free = page.locator(".picker-free button")
    expect(free).to_be_visible()
    free.click()
    error = page.locator("#picker-q-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("hors de l'espace de confiance MSSanté")
    expect(page.locator("#picker-q")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#picker-count")).to_have_text("Aucun destinataire sélectionné")
    page.click("#picker-validate")
    expect(page.locator("#picker")).to_be_hidden()
    expect(page.locator("#to-chips .chip")).to_have_count(0)

    # An address of a trusted operator is checked and added.
    page.click("#open-picker")
    page.fill("#picker-q", f"Secretariat@{trusted}")
    expect(error).to_be_hidden()
    page.locator(".picker-free button").click()
    expect(page.locator("#picker-count")).to_have_text("1 destinataire sélectionné")
    # Tags are words to a screen reader: « Dr Bruno PETIT, expert », not « Dr Bruno PETITExpert ».
    page.fill("#picker-q", "petit cler")
    expert = page.get_by_role("checkbox", name="Dr Bruno PETIT, expert", exact=True)
    expect(expert).to_be_visible()
    expect(expert).to_have_attribute("aria-describedby", re.compile(r"-sub .*-addr"))  # the rest describes it
    expert.check()
    page.click("#picker-validate")
    chips = page.locator("#to-chips .chip")
    expect(chips).to_have_count(2)
    expect(chips.nth(0)).to_have_attribute("data-address", f"secretariat@{trusted}")
    assert not page.errors, page.errors
    page.context.close()


def test_delete_from_the_menu_find_it_in_the_bin_and_restore(server, browser, make_user):
    owner, address, box = make_user("Tri")
    subject = f"À supprimer {uuid.uuid4().hex[:6]}"
    with server.login(owner, "secret-pass") as api:
        api.post("/api/v1/messages", json={"from_mailbox": box, "to": [address], "subject": subject, "body": "x"})
    page = open_page(browser, server, owner, "secret-pass")
    watcher = open_page(browser, server, owner, "secret-pass")  # the same user's other tab
    wait_live(watcher)
    item = page.locator(".messages .item", has_text=subject)
    expect(item).to_be_visible()
    expect(watcher.locator(".messages .item", has_text=subject)).to_be_visible()

    # Keyboard first: the menu key, down to « Supprimer ».
    item.locator(".item-link").focus()
    page.keyboard.press("Shift+F10")
    menu = page.locator("#menu-contextuel")
    expect(menu).to_be_visible()
    menu.get_by_role("menuitem", name="Supprimer").click()
    expect(page.locator(".messages .item", has_text=subject)).to_have_count(0)
    expect(page.locator("#annonce")).to_have_text("Message placé dans la corbeille.")
    expect(watcher.locator(".messages .item", has_text=subject)).to_have_count(0)  # live, no reload
    trash_link = page.locator('#dossiers a[data-folder="trash"]')
    expect(trash_link).to_contain_text("Corbeille")
    expect(trash_link.locator(".count")).to_have_text("1")
    assert page.locator("#dossiers a.folder").last.get_attribute("data-folder") == "trash"  # last of the list

    trash_link.click()
    binned = page.locator(".messages .item", has_text=subject)
    expect(binned).to_be_visible()
    binned.locator(".item-link").click()
    expect(page.locator("#message .trash-banner")).to_contain_text("dans la corbeille")
    expect(page.locator("#message .reply-bar")).to_have_count(0)
    # The menu in the bin offers to restore, nothing else but opening.
    binned.click(button="right")
    expect(menu.get_by_role("menuitem", name="Restaurer")).to_be_visible()
    expect(menu.get_by_role("menuitem", name="Archiver")).to_be_hidden()
    page.keyboard.press("Escape")
    page.locator("#message").get_by_role("button", name="Restaurer").click()
    expect(page.locator("#message .trash-banner")).to_have_count(0)
    expect(page.locator("#message .reply-bar")).to_be_visible()
    expect(page.locator(".messages .item", has_text=subject)).to_have_count(0)
    expect(watcher.locator(".messages .item", has_text=subject)).to_be_visible()

    # From the reading pane too: « Supprimer », then it is back in the bin.
    page.goto(server.base_url + "/boite")
    page.locator(".messages .item", has_text=subject).locator(".item-link").click()
    page.locator("#message").get_by_role("button", name="Supprimer").click()
    expect(page.locator("#message .trash-banner")).to_be_visible()
    expect(page.locator(".messages .item", has_text=subject)).to_have_count(0)
    expect(page.locator('#dossiers a[data-folder="trash"] .count')).to_have_text("1")
    assert not page.errors and not watcher.errors, page.errors + watcher.errors
    page.context.close()
    watcher.context.close()


def test_reply_returns_to_the_inbox_with_a_confirmation(server, browser, make_user):
    owner, address, box = make_user("Répond")
    _, colleague, _ = make_user("Confrère", "CONFRÈRE")
    subject = f"Question {uuid.uuid4().hex[:6]}"
    with server.login(owner, "secret-pass") as api:
        # From the colleague's side it is the same: a message in the owner's inbox.
        api.post("/api/v1/messages", json={"from_mailbox": box, "to": [address, colleague], "subject": subject,
                                           "body": "Pouvez-vous répondre ?"})
    page = open_page(browser, server, owner, "secret-pass")
    page.locator(".messages .item:not([data-role=sent])", has_text=subject).locator(".item-link").click()
    expect(page.locator("#message .msg-subject")).to_have_text(subject)
    page.wait_for_url(re.compile(r"ouvrir="))
    inbox_url = page.url
    page.locator("#message").get_by_role("link", name="Répondre", exact=True).click()
    page.wait_for_url(re.compile(r"/ecrire\?"))
    page.fill("#body", "Voici ma réponse.")
    page.click("#send")
    page.wait_for_url(re.compile(r"/boite\?"))
    assert page.url == inbox_url and "dossier=sent" not in page.url  # back where one was
    confirmation = page.locator("#confirmation")
    expect(confirmation).to_have_attribute("role", "status")
    expect(confirmation).to_contain_text("Message envoyé à")
    expect(page.locator("#message .msg-subject")).to_have_text(subject)  # the message one answered
    confirmation.get_by_role("button", name="Fermer la confirmation").click()
    expect(confirmation).to_have_count(0)

    # A forward likewise; « Fermer » and « Supprimer le brouillon » lead back too.
    page.locator("#message").get_by_role("link", name="Transférer").click()
    page.wait_for_url(re.compile(r"/ecrire\?"))
    expect(page.get_by_role("link", name="Fermer")).to_have_attribute("href", re.compile(r"^/boite\?"))
    page.click("#open-picker")
    page.fill("#picker-q", colleague)
    page.locator(".picker-free button").click()
    expect(page.locator("#picker-count")).to_have_text("1 destinataire sélectionné")
    page.click("#picker-validate")
    page.click("#send")
    page.wait_for_url(re.compile(r"/boite\?"))
    assert page.url == inbox_url
    expect(page.locator("#confirmation")).to_contain_text("CONFRÈRE")
    page.locator("#message").get_by_role("link", name="Transférer").click()
    page.wait_for_url(re.compile(r"/ecrire\?"))
    page.fill("#subject", "Brouillon à abandonner")
    expect(page.locator("#draft-status")).to_contain_text("Brouillon enregistré")
    page.click("#discard")
    page.wait_for_url(re.compile(r"/boite\?"))
    assert page.url == inbox_url
    expect(page.locator("#confirmation")).to_contain_text("Brouillon placé dans la corbeille")
    assert not page.errors, page.errors
    page.context.close()


def test_skip_link_leads_to_the_list(server, browser):
    page = open_page(browser, server, "alice.martin")
    page.keyboard.press("Tab")
    skip = page.locator("a.skip")
    expect(skip).to_be_focused()
    expect(skip).to_have_text("Aller au contenu")
    no_reload_marker(page)
    page.keyboard.press("Enter")
    expect(page.locator("#liste")).to_be_focused()
    assert still_same_document(page)
    # From the list, the next Tab reaches its first message (not the folders).
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.closest('#liste') !== null")
    # Elsewhere it leads to the page's content.
    page.goto(server.base_url + "/ecrire")
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    expect(page.locator("#contenu")).to_be_focused()
    assert not page.errors, page.errors
    page.context.close()


def test_phone_writing_page_has_the_account_menu(server, browser):
    page = open_page(browser, server, "alice.martin", viewport={"width": 375, "height": 740}, is_mobile=True,
                     has_touch=True, device_scale_factor=2)
    page.goto(server.base_url + "/ecrire?type=courrier")
    account = page.locator("header .account-menu summary")
    expect(account).to_be_visible()
    expect(account).to_have_text("Compte")
    account.click()
    expect(page.locator("header .account-menu").get_by_role("button", name="Se déconnecter")).to_be_visible()
    assert page.evaluate("document.scrollingElement.scrollWidth") <= 375
    page.locator("header .account-menu").get_by_role("link", name="Paramètres").click()
    page.wait_for_url(re.compile(r"/parametres$"))
    expect(page.locator("h1")).to_have_text("Paramètres")
    # The inbox keeps its own (under « Dossiers »): no second one in its header.
    page.goto(server.base_url + "/boite")
    expect(page.locator("header .account-menu")).to_have_count(0)
    # And on a desktop the header shows the plain links, not the menu.
    page.set_viewport_size({"width": 1366, "height": 820})
    page.goto(server.base_url + "/ecrire")
    expect(page.locator("header .account-menu")).to_be_hidden()
    expect(page.locator("header .top-actions > a", has_text="Paramètres")).to_be_visible()
    # Logging out from the phone menu works.
    page.set_viewport_size({"width": 375, "height": 740})
    page.locator("header .account-menu summary").click()
    page.locator("header .account-menu").get_by_role("button", name="Se déconnecter").click()
    page.wait_for_url(re.compile(r"/connexion"))
    assert not page.errors, page.errors
    page.context.close()
