"""Issue 15 « done when », in Chromium: a doctor delegates to a secretary from « Paramètres », the
secretary lands in the doctor's mailbox and writes « De » it, the doctor takes it back and the
secretary's open page leaves the mailbox at once; the doctor's « Journal d'accès » shows her."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.browser_support import browser_fixture, open_page, wait_live  # noqa: F401 (fixture)

pytestmark = [pytest.mark.browser, pytest.mark.postgres]


def test_delegate_from_settings_work_then_revoke_live(server, make_user, browser):
    doctor, doctor_addr, doctor_box = make_user("Rémi", national_id="810000007777")
    secretary, _, _ = make_user("Sarah")
    doc = open_page(browser, server, doctor, "secret-pass")
    doc.goto(server.base_url + "/parametres/delegations")
    doc.fill("input[name=account]", secretary)
    doc.select_option("select[name=rights]", "complete")
    doc.get_by_role("button", name="Déléguer").click()
    expect(doc.locator(f'tr[data-account="{secretary}"]')).to_contain_text("Complète")

    sec = open_page(browser, server, secretary, "secret-pass")
    # She lands in the doctor's mailbox, and « De » follows it.
    expect(sec.locator(".switcher-label")).to_contain_text("Rémi")
    wait_live(sec)
    sec.goto(server.base_url + f"/ecrire?bal={doctor_box}")
    expect(sec.locator("#from_mailbox option:checked")).to_contain_text(doctor_addr)
    sec.goto(server.base_url + "/boite")
    wait_live(sec)
    expect(sec.locator("#liste")).to_have_attribute("data-mbs", re.compile(rf"\b{doctor_box}\b"))

    # The doctor takes it back: her open page leaves the mailbox at once, with a word why.
    doc.goto(server.base_url + "/parametres/delegations")
    doc.get_by_role("button", name=re.compile("Retirer la délégation")).click()
    expect(doc.locator(f'tr[data-account="{secretary}"]')).to_have_count(0)
    expect(sec.locator("#confirmation")).to_contain_text("retiré", timeout=20_000)
    expect(sec.locator(".switcher-label")).not_to_contain_text("Rémi")
    # The old address of the mailbox answers « introuvable » now.
    sec.goto(server.base_url + f"/boite?bal={doctor_box}")
    expect(sec.locator(".switcher-label")).not_to_contain_text("Rémi")

    doc.goto(server.base_url + "/journal")
    expect(doc.locator('tr[data-action="delegation.revoke"]')).to_have_count(1)
    expect(doc.locator('tr[data-action="delegation.grant"]')).to_have_count(1)
    doc.goto(server.base_url + "/parametres/sessions")
    expect(doc.locator("tr.current")).to_contain_text("cette session")
    assert not doc.errors and not sec.errors, doc.errors + sec.errors
