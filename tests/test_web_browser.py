"""The web application in Debian's Chromium (Playwright): write with the directory picker and a
PDF, live arrival, read receipt, right-click archive, phone layout, hostile HTML, keyboard,
drafts and drag-and-drop. Screenshots of the main screens go to docs/screenshots/."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect

from monsisra.services.demo import minimal_pdf
from tests.browser_support import browser_fixture, open_page, wait_live  # noqa: F401 (the browser fixture)
from tests.support import unique
from tests.web_support import insert_hostile_message

pytestmark = pytest.mark.browser

SHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
PNG_1PX = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9aw"
                           "AAAABJRU5ErkJggg==")

# Every form control of a page must have an accessible name.
UNLABELLED_JS = """() => [...document.querySelectorAll('input, select, textarea, button')]
  .filter(e => e.type !== 'hidden' && !e.closest('[hidden]') && !e.closest('dialog:not([open])'))
  .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !(e.textContent || '').trim()
               && !e.getAttribute('aria-labelledby') && !e.title)
  .map(e => e.outerHTML.slice(0, 120))"""


@pytest.fixture
def shots(backend):
    """Screenshots of the main screens: always taken (the rendering must work), written to
    docs/screenshots/ only with MONSISRA_SCREENSHOTS=1 on the SQLite run, so that an ordinary
    test run leaves the README's images untouched."""
    import os

    def save(page: Page, name: str, **kw) -> None:
        image = page.screenshot(**kw)
        assert image[:8] == b"\x89PNG\r\n\x1a\n"
        if backend == "sqlite" and os.environ.get("MONSISRA_SCREENSHOTS") == "1":
            SHOTS.mkdir(parents=True, exist_ok=True)
            (SHOTS / f"{name}.png").write_bytes(image)

    return save


def directory_search_ready(server) -> None:
    """The picker stands on the directory search API: it must answer before the browser uses it."""
    with server.login("alice.martin") as api:
        r = api.get("/api/v1/directory/search", params={"q": "petit cler"})
    assert r.status_code == 200, r.text


def test_write_with_picker_and_pdf_live_arrival_and_receipt(server, browser, tmp_path, shots):
    directory_search_ready(server)
    alice = open_page(browser, server, "alice.martin")
    bruno = open_page(browser, server, "bruno.petit")
    # Bruno completes his directory card: where he works, what he offers.
    bruno.goto(server.base_url + "/profil")
    bruno.fill("#postcode", "63000")
    bruno.fill("#commune", "Clermont-Ferrand")
    bruno.check("input[name=modalities][value=teleexpertise]")
    bruno.fill("#notification_email", "bruno.petit@example.org")
    assert bruno.evaluate(UNLABELLED_JS) == []
    bruno.click("text=Enregistrer la fiche")
    expect(bruno.locator(".ok")).to_contain_text("Fiche enregistrée")
    expect(bruno.locator("#commune")).to_have_value("Clermont-Ferrand")
    shots(bruno, "fiche-annuaire")
    bruno.goto(server.base_url + "/boite")
    wait_live(bruno)
    shown = re.match(r"\((\d+)\) ", bruno.title())  # the tab title counts unread messages
    unread_before = int(shown.group(1)) if shown else 0
    shots(alice, "boite-de-reception")

    alice.click("summary:has-text('Écrire un message')")
    alice.click("text=Envoyer un courrier")
    alice.wait_for_url(re.compile(r"/ecrire"))
    alice.click("#open-picker")
    alice.fill("#picker-q", "petit cler")
    entry = alice.locator("section[data-section=professionals] .entry", has_text="PETIT").first
    expect(entry).to_be_visible()
    expect(entry).to_contain_text("Bruno")
    expect(entry.locator(".dot")).to_have_count(1)
    shots(alice, "annuaire-destinataires")
    entry.locator("input[type=checkbox]").check()
    alice.click("#picker-validate")
    expect(alice.locator("#to-chips .chip")).to_contain_text("PETIT")

    subject = f"Bilan cardiologique {unique('s')}"
    alice.fill("#subject", subject)
    alice.fill("#body", "Cher confrère, je vous adresse le compte rendu ci-joint.")
    pdf = tmp_path / "compte-rendu-échographie.pdf"
    pdf.write_bytes(minimal_pdf(["Compte rendu", "Échographie normale"]))
    alice.set_input_files("#file-input", str(pdf))
    expect(alice.locator("#attachments input[name=attachments]")).to_have_count(1)
    expect(alice.locator("#draft-status")).to_contain_text("Brouillon enregistré")
    shots(alice, "ecrire-un-message", full_page=True)
    alice.click("#send")
    # Back to the inbox she wrote from, with a confirmation leading to the sent message.
    expect(alice.locator("#confirmation")).to_contain_text("Message envoyé à Dr Bruno PETIT")
    alice.locator("#confirmation a", has_text="Voir le message envoyé").click()
    alice.wait_for_url(re.compile(r"dossier=sent"))
    expect(alice.locator("#message .msg-subject")).to_have_text(subject)
    expect(alice.locator(".receipts")).to_contain_text("personne pour l'instant")
    wait_live(alice)

    # Bruno's open inbox shows it without reload, unread, and the tab title counts it.
    item = bruno.locator(".messages .item", has_text=subject)
    expect(item).to_be_visible()
    expect(item).to_have_class(re.compile(r"\bunread\b"))
    expect(item.locator(".clip")).to_have_count(1)
    expect(bruno).to_have_title(re.compile(rf"^\({unread_before + 1}\) "))
    item.locator(".item-link").click()
    expect(bruno.locator("#message .msg-subject")).to_have_text(subject)
    att = bruno.locator(".attachments .att", has_text="compte-rendu-échographie.pdf")
    expect(att).to_be_visible()
    expect(att.locator("a[download]")).to_have_attribute("download", "compte-rendu-échographie.pdf")
    inline = att.locator("a", has_text="Ouvrir").get_attribute("href")
    assert inline and "disposition=inline" in inline
    r = bruno.request.get(server.base_url + inline)
    assert r.status == 200 and r.headers["content-type"] == "application/pdf"
    assert r.headers["content-disposition"].startswith("inline") and r.body().startswith(b"%PDF")
    # "Ouvrir" shows the PDF in a browser tab (Chromium's viewer), not as a download.
    with bruno.context.expect_page() as opened:
        att.locator("a", has_text="Ouvrir").click()
    tab = opened.value
    tab.wait_for_load_state()
    assert tab.evaluate("document.contentType") == "application/pdf"
    tab.close()
    # Reading it lowers Bruno's unread count live.
    expect(bruno).to_have_title(re.compile(rf"^\({unread_before}\) ") if unread_before else re.compile(r"^[^(]"))

    # Alice's page shows the receipt bubble, with the reader's full name on hover.
    bubble = alice.locator(".receipts .bubble")
    expect(bubble).to_have_count(1)
    expect(bubble).to_have_text(re.compile(r"^BP"))
    expect(bubble).to_have_attribute("title", re.compile(r"Bruno PETIT"))
    bubble.hover()
    shots(alice, "accuse-de-lecture")
    shots(bruno, "lecture-message")
    assert not alice.errors and not bruno.errors, alice.errors + bruno.errors
    alice.context.close()
    bruno.context.close()


def _send_to(server, make_user, to_address: str, subject: str) -> None:
    username, _, box = make_user("Expéditeur")
    with server.login(username, "secret-pass") as api:
        r = api.post("/api/v1/messages", json={"from_mailbox": box, "to": [to_address], "subject": subject,
                                               "body": "Message de test", "category": "letter"})
        assert r.status_code == 201, r.text


def test_archive_by_right_click_and_keyboard_menu(server, browser, make_user):
    subject = f"À archiver {unique('a')}"
    _send_to(server, make_user, f"claire.roux@{server.settings.domain}", subject)
    page = open_page(browser, server, "claire.roux")
    item = page.locator(".messages .item", has_text=subject)
    expect(item).to_be_visible()
    # Keyboard: the context-menu key (Shift+F10) on a focused message opens the same menu.
    item.locator(".item-link").focus()
    page.keyboard.press("Shift+F10")
    menu = page.locator("#menu-contextuel")
    expect(menu).to_be_visible()
    expect(menu.locator("button:focus")).to_have_count(1)
    page.keyboard.press("Escape")
    expect(menu).to_be_hidden()
    # Arrow keys walk the list; Enter opens the focused message in the reading pane.
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowUp")
    expect(item.locator(".item-link")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("#message .msg-subject")).to_have_text(subject)
    item.click(button="right")
    expect(menu).to_be_visible()
    menu.get_by_role("menuitem", name="Archiver").click()
    expect(page.locator(".messages .item", has_text=subject)).to_have_count(0)
    page.goto(server.base_url + "/boite?dossier=archived")
    expect(page.locator(".messages .item", has_text=subject)).to_be_visible()
    assert not page.errors, page.errors
    page.context.close()


def test_phone_layout_inbox_and_message(server, browser, shots):
    page = open_page(browser, server, "alice.martin", viewport={"width": 375, "height": 740}, is_mobile=True,
                     has_touch=True, device_scale_factor=2)
    expect(page.locator("#liste")).to_be_visible()
    expect(page.locator("#dossiers")).to_be_hidden()
    assert page.evaluate("document.scrollingElement.scrollWidth") <= 375
    shots(page, "telephone-boite")
    page.click(".folders-toggle")
    expect(page.locator("#dossiers")).to_be_visible()
    expect(page.locator("#dossiers")).to_contain_text("Téléexpertises")
    page.click(".folders-toggle")
    page.locator(".messages .item:not([data-role=draft]) .item-link").first.click()
    expect(page.locator("#message")).to_be_visible()
    expect(page.locator("#liste")).to_be_hidden()
    assert page.evaluate("document.scrollingElement.scrollWidth") <= 375
    shots(page, "telephone-message")
    page.click("[data-back]")
    expect(page.locator("#liste")).to_be_visible()
    assert page.evaluate(UNLABELLED_JS) == []
    # Writing on a phone: the form fits, the camera is one tap away, the picker fills the screen.
    page.click("summary:has-text('Écrire')")
    page.click("text=Envoyer un courrier")  # « Démarrer une conversation » opens the chat (issue 13)
    expect(page.locator("label[for=camera-input]")).to_be_visible()
    assert page.evaluate("document.scrollingElement.scrollWidth") <= 375
    page.click("#open-picker")
    expect(page.locator("#picker")).to_be_visible()
    assert page.locator("#picker").bounding_box()["width"] >= 370
    page.keyboard.press("Escape")
    expect(page.locator("#picker")).to_be_hidden()
    shots(page, "telephone-ecrire")
    assert not page.errors, page.errors
    page.context.close()


def test_hostile_html_runs_no_script(server, browser):
    mailbox_id, message_id, subject = insert_hostile_message(server, "alice.martin")
    page = open_page(browser, server, "alice.martin")
    dialogs, remote = [], []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.on("request", lambda r: remote.append(r.url) if ("evil" in r.url or "tracker" in r.url
                                                            or r.url.endswith("/api/v1/me")) else None)
    page.goto(f"{server.base_url}/boite?bal={mailbox_id}&dossier=all&ouvrir={message_id}")
    expect(page.locator("#message .msg-subject")).to_have_text(subject)
    expect(page.locator("#message .body")).to_contain_text("texte")
    page.reload()
    page.wait_for_load_state("networkidle")
    assert dialogs == [] and remote == []
    body = page.locator("#message .body")
    assert body.locator("script, iframe, img, [onerror], [style]").count() == 0
    assert body.locator("a[href^='javascript']").count() == 0
    assert not page.errors, page.errors
    page.context.close()


def test_compose_drag_and_drop_and_drafts(server, browser, make_user):
    username, _, _ = make_user("Brouillon")
    page = open_page(browser, server, username, "secret-pass")
    page.goto(server.base_url + "/ecrire?type=conversation")
    expect(page.locator("h1")).to_have_text("Démarrer une conversation")
    assert page.locator("#camera-input").get_attribute("capture") == "environment"
    assert "image/*" in page.locator("#camera-input").get_attribute("accept")
    page.fill("#subject", "Photo de la plaie")
    page.evaluate("""b64 => {
        const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], 'plaie-talon.png', {type: 'image/png'}));
        document.getElementById('dropzone').dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true,
                                                                                 cancelable: true}));
    }""", base64.b64encode(PNG_1PX).decode())
    expect(page.locator("#attachments input[name=attachment_name]")).to_have_value("plaie-talon.png")
    expect(page.locator("#draft-status")).to_contain_text("Brouillon enregistré")
    page.fill("#body", "Évolution défavorable")
    expect(page.locator("#draft-status")).to_contain_text("enregistré")
    assert page.evaluate(UNLABELLED_JS) == []
    # The draft list holds one draft, the latest version, with its attachment.
    with httpx.Client(base_url=server.base_url, timeout=30) as anon:
        token = anon.post("/api/v1/auth/token", data={"username": username, "password": "secret-pass"}).json()
    api = server.client(token["access_token"])
    box = api.get("/api/v1/mailboxes").json()[0]["id"]
    for _ in range(50):
        drafts = api.get(f"/api/v1/mailboxes/{box}/messages", params={"view": "drafts"}).json()["items"]
        if drafts and drafts[0]["preview"].startswith("Évolution"):
            break
        page.wait_for_timeout(200)
    assert len(drafts) == 1 and drafts[0]["subject"] == "Photo de la plaie"
    assert drafts[0]["attachments"][0]["filename"] == "plaie-talon.png"
    api.close()
    # Reopening the draft from the list brings everything back.
    page.goto(server.base_url + "/boite?dossier=drafts")
    page.locator(".messages .item", has_text="Photo de la plaie").locator(".item-link").click()
    expect(page.locator("#subject")).to_have_value("Photo de la plaie")
    expect(page.locator("#attachments")).to_contain_text("plaie-talon.png")
    assert not page.errors, page.errors
    page.context.close()


def test_settings_and_full_screen_reading(server, browser, shots):
    page = open_page(browser, server, "bruno.petit")
    page.goto(server.base_url + "/parametres")
    expect(page.locator("h1")).to_have_text("Paramètres")
    assert page.evaluate(UNLABELLED_JS) == []
    shots(page, "parametres")
    # "Toutes les boîtes": Bruno's own mailbox and the cardiology service he belongs to, merged.
    page.goto(server.base_url + "/boite")
    page.click(".switcher summary")
    page.click("text=Toutes les boîtes")
    expect(page.locator(".switcher summary")).to_contain_text("Toutes les boîtes")
    expect(page.locator(".messages .tag.box").first).to_be_visible()
    page.goto(server.base_url + "/boite?dossier=all")
    page.locator(".messages .item:not([data-role=draft]) .item-link").first.click()
    page.click("text=Plein écran")
    expect(page.locator(".full-reading #message")).to_be_visible()
    page.goto(server.base_url + "/connexion")
    shots(page, "connexion")
    assert not page.errors, page.errors
    page.context.close()


def test_picker_more_results_type_filters_and_patient(server, browser):
    directory_search_ready(server)
    page = open_page(browser, server, "claire.roux")
    page.goto(server.base_url + "/ecrire?type=expertise")
    page.click("#open-picker")
    # "Demander une expertise" opens the picker on declared experts.
    expect(page.locator("input[name=picker-kind][value=experts]")).to_be_checked()
    page.fill("#picker-q", "avis")
    services = page.locator("section[data-section=services]")
    expect(services.locator(".entry", has_text="Avis Hémostase")).to_be_visible()
    expect(page.locator("section[data-section=professionals]")).to_be_hidden()
    services.locator(".entry", has_text="Avis Hémostase").locator("input").check()
    page.check("input[name=picker-kind][value=all]")
    page.fill("#picker-q", "medecin")
    pros = page.locator("section[data-section=professionals]")
    expect(pros.locator(".entry")).to_have_count(10)
    pros.get_by_role("button", name="VOIR PLUS DE RÉSULTATS").click()
    expect(pros.locator(".entry").nth(10)).to_be_visible()  # the next page is appended
    pros.locator(".entry", has_text="Julien GARNIER").locator("input").check()
    expect(page.locator("#picker-count")).to_have_text("2 destinataires sélectionnés")
    page.click("#picker-validate")
    chips = page.locator("#to-chips .chip")
    expect(chips).to_have_count(2)
    expect(chips.nth(0)).to_contain_text("Avis Hémostase")
    page.goto(server.base_url + "/ecrire?type=patient")
    page.fill("#patient-ins", "180017510801182")
    page.click("#add-patient")
    expect(page.locator("#to-chips input[name=to]")).to_have_value("180017510801182@patient.mssante.fr")
    assert not page.errors, page.errors
    page.context.close()
