"""App passwords in Chromium (issue 16): a person with a second factor creates one from
Paramètres, sees it once with the settings to type and a « Copier » button, a mail client
(imaplib) logs in with it while the password alone is refused, and « Révoquer » shuts it out.
The page holds at 375 px without sideways scrolling."""

from __future__ import annotations

import imaplib
import re

import pyotp
import pytest
from playwright.sync_api import expect

from tests.browser_support import WAIT, browser_fixture  # noqa: F401
from tests.imap_support import imap, new_account

PAGE = "/parametres/mots-de-passe-application"


def test_create_use_and_revoke_an_app_password_from_parametres(mail_server, browser):
    username, _address, _ = new_account(mail_server)
    ctx = browser.new_context(locale="fr-FR", timezone_id="Europe/Paris", viewport={"width": 375, "height": 740})
    page = ctx.new_page()
    page.set_default_timeout(WAIT)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None)
    page.goto(mail_server.base_url + "/connexion")
    page.fill("#username", username)
    page.fill("#password", "secret-pass-16")
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r"/boite|/parametres/securite"))
    # The second factor, enrolled from Paramètres › Sécurité.
    page.goto(mail_server.base_url + "/parametres/securite")
    page.click("#totp-begin")
    secret = page.locator("#totp-secret").inner_text().strip()
    page.fill("#confirm-otp", pyotp.TOTP(secret).now())
    page.click("text=Confirmer et activer")
    expect(page.locator("p.ok")).to_contain_text("activée")
    # Paramètres leads to the app passwords.
    page.goto(mail_server.base_url + "/parametres")
    page.click("text=Mots de passe d'application (Thunderbird")
    page.wait_for_url(re.compile(PAGE))
    expect(page.locator("#ap-why")).to_contain_text("second facteur")
    expect(page.locator("#ap-none")).to_be_visible()
    expect(page.locator("#ap-login")).to_have_text(username)
    expect(page.locator("#ap-imaps-port")).to_have_text(str(mail_server.settings.imaps_port))
    # An empty name is refused by the browser before anything is sent.
    page.click("button:has-text('Créer')")
    assert page.evaluate("document.querySelector('#ap-label').validity.valueMissing")
    page.fill("#ap-label", "Thunderbird cabinet")
    page.click("button:has-text('Créer')")
    expect(page.locator("#ap-created")).to_contain_text("ne sera plus jamais affiché")
    app_password = page.locator("#ap-secret").inner_text().strip()
    assert re.fullmatch(r"[a-z2-9]{4}(-[a-z2-9]{4}){6}", app_password)
    page.click("button[data-copy]")
    expect(page.locator("[data-copy-status]")).not_to_have_text("")
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    # A mail client: the app password works, the password alone does not.
    c = imap(mail_server, username, app_password)
    assert c.select("INBOX")[0] == "OK"
    c.logout()
    c = imap(mail_server, None)
    with pytest.raises(imaplib.IMAP4.error, match="second facteur"):
        c.login(username, "secret-pass-16")
    c.logout()
    # Listed with its last use, never shown again.
    page.goto(mail_server.base_url + PAGE)
    row = page.locator("#ap-list li")
    expect(row).to_have_count(1)
    expect(row).to_contain_text("Thunderbird cabinet")
    expect(row).to_contain_text("IMAP")
    assert app_password not in page.content()
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    row.locator("button:has-text('Révoquer')").click()
    expect(page.locator("p.ok[role=status]")).to_contain_text("révoqué")
    expect(page.locator("#ap-none")).to_be_visible()
    c = imap(mail_server, None)
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        c.login(username, app_password)
    c.logout()
    assert errors == []
    ctx.close()
