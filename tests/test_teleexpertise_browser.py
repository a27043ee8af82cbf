"""Issue 14's « Done when » in Chromium with two browser contexts (requester and a member of the
expert service), at desktop and phone (375 px) widths: alice.martin reads the expertise card of
« Avis Hémostase », requests an expertise with consent and a PDF; hemostase.admin takes it in
charge and asks for an element; alice provides it; the expert answers; alice receives the report
and closes; both see their billing line and the service's statistics count the request."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from playwright.sync_api import expect

from monsisra.domain.ins import ins_key
from monsisra.domain.teleexpertise import luhn_key
from tests.browser_support import browser_fixture, open_page  # noqa: F401 (fixture)
from tests.support import unique

pytestmark = [pytest.mark.browser, pytest.mark.postgres]
WIDTHS = {"bureau": {"width": 1366, "height": 820}, "telephone": {"width": 375, "height": 740}}


def fresh_ins() -> str:
    first13 = f"2850563{int(unique('')[:8], 16) % 1_000_000:06d}"
    return first13 + f"{ins_key(first13):02d}"


@pytest.mark.parametrize("width", list(WIDTHS))
def test_request_elements_answer_report_billing(server, browser, width):
    expert_address = f"avis-hemostase.chu-clermont@{server.settings.domain}"
    alice = open_page(browser, server, "alice.martin", viewport=WIDTHS[width])
    expert = open_page(browser, server, "hemostase.admin", viewport=WIDTHS[width])

    alice.goto(server.base_url + "/teleexpertises/expert?adresse=" + expert_address)
    expect(alice.locator(".expert-description")).to_contain_text("hémostase")
    alice.click("#ask-expertise")
    alice.wait_for_url(re.compile(r"/teleexpertises/nouvelle"))
    expect(alice.locator("#expert")).to_have_value(expert_address)
    alice.fill("#patient_ins", fresh_ins())
    alice.fill("#patient_family_name", "Chabrier")
    alice.fill("#patient_given_names", "Maëlle")
    alice.fill("#question", "TCA allongé à 48 s avant une extraction dentaire : conduite à tenir ?")
    alice.fill("#billing_number", "15123456" + str(luhn_key("15123456")))
    alice.set_input_files("#documents", files=[{"name": "bilan.pdf", "mimeType": "application/pdf",
                                                "buffer": b"%PDF-1.4 bilan\n"}])
    # Without consent: refused in French, nothing sent.
    alice.get_by_role("button", name="Envoyer la demande d'expertise").click()
    expect(alice.locator(".error")).to_contain_text("onsentement")
    alice.check("#consent")
    alice.set_input_files("#documents", files=[{"name": "bilan.pdf", "mimeType": "application/pdf",
                                                "buffer": b"%PDF-1.4 bilan\n"}])
    alice.get_by_role("button", name="Envoyer la demande d'expertise").click()
    alice.wait_for_url(re.compile(r"/teleexpertises/\d+$"))
    url = alice.url
    te_path = url[len(server.base_url):]
    expect(alice.locator("#te-state")).to_have_text("Soumise")
    expect(alice.locator("#te-awaited")).to_contain_text("expert")

    expert.goto(server.base_url + "/teleexpertises?vue=recues")
    expect(expert.locator(f'tr[data-teleexpertise="{te_path.rsplit("/", 1)[1]}"]')).to_contain_text("CHABRIER")
    expert.goto(server.base_url + te_path)
    expert.get_by_role("button", name="Je prends en charge").click()
    expect(expert.locator("#te-assignee")).to_contain_text("MOREL")
    expert.fill("#ask-body", "Merci de joindre le dosage du facteur VIII.")
    expert.get_by_role("button", name="Demander des éléments").click()
    expect(expert.locator("#te-state")).to_have_text("Éléments demandés")

    alice.goto(url)
    expect(alice.locator("#te-assignee")).to_contain_text("MOREL")
    expect(alice.locator("#te-awaited")).to_contain_text("requérant")
    alice.fill("#provide-body", "Facteur VIII à 42 %.")
    alice.get_by_role("button", name="Fournir les éléments").click()
    expect(alice.locator("#te-state")).to_have_text("Soumise")

    expert.goto(server.base_url + te_path)
    expert.fill("#answer-body", "Hémophilie A mineure probable : avis hématologique avant le geste.")
    expert.fill("#answer-number", "63123456" + str(luhn_key("63123456")))
    expert.get_by_role("button", name="Envoyer la réponse").click()
    expect(expert.locator("#te-state")).to_have_text("Répondue")

    alice.goto(url)
    expect(alice.locator("#te-report")).to_be_visible()
    alice.get_by_role("button", name="Clôturer").click()
    expect(alice.locator("#te-state")).to_have_text("Clôturée")
    expect(alice.locator('.te-steps li[data-action="answer"]')).to_contain_text("Hémophilie")

    month = datetime.now(UTC).strftime("%Y-%m")
    alice.goto(server.base_url + "/facturation?mois=" + month)
    expect(alice.locator('#billing-lines tr[data-code="RQD"]').first).to_contain_text("10.00 €")
    expert.goto(server.base_url + "/facturation?mois=" + month)
    expect(expert.locator('#billing-lines tr[data-code="TE2"]').first).to_contain_text("20.00 €")
    expert.goto(server.base_url + "/teleexpertises/statistiques")
    expect(expert.locator(f'#te-stats tr[data-month="{month}"] .answered')).not_to_have_text("0")
    for page in (alice, expert):
        assert not page.errors, page.errors
        page.context.close()


def test_requester_page_and_list_follow_the_expert_live(server, browser):
    """Two contexts: the requester keeps the request's page (and then the list) open; the expert
    service's member takes it, then asks for elements — the open pages show « Prise en charge
    par … », the new state and the new element without any reload."""
    alice = open_page(browser, server, "alice.martin")
    expert = open_page(browser, server, "hemostase.admin")
    alice_api, expert_api = server.login("alice.martin"), server.login("hemostase.admin")
    r = alice_api.post("/api/v1/teleexpertises", json={
        "expert": f"avis-hemostase.chu-clermont@{server.settings.domain}",
        "patient": {"ins": fresh_ins(), "family_name": "Vidal", "given_names": "Rose", "birth_date": "1985-05-06",
                    "sex": "F"},
        "consent": {"given": True, "by": "patient", "at": datetime.now(UTC).isoformat()},
        "question": "Plaquettes à 90 G/L isolées : avis ?", "billing_number": "15123456" + str(luhn_key("15123456"))})
    assert r.status_code == 201, r.text
    te_id = r.json()["id"]
    alice.goto(f"{server.base_url}/teleexpertises/{te_id}")
    expect(alice.locator("body")).to_have_attribute("data-live", "1")
    expect(alice.locator("#te-state")).to_have_text("Soumise")
    expect(alice.locator("#te-taken")).to_have_count(0)
    marker = alice.evaluate("() => { window.__sameDocument = 1; return 1; }")

    expert.goto(f"{server.base_url}/teleexpertises/{te_id}")
    expert.get_by_role("button", name="Je prends en charge").click()
    expect(expert.locator("#te-taken")).to_contain_text("MOREL")
    expect(alice.locator("#te-taken")).to_contain_text("Prise en charge par")
    expect(alice.locator("#te-taken")).to_contain_text("MOREL")

    expert.fill("#ask-body", "Un frottis sanguin, s'il vous plaît.")
    expert.get_by_role("button", name="Demander des éléments").click()
    expect(alice.locator("#te-state")).to_have_text("Éléments demandés")
    expect(alice.locator("#te-awaited")).to_contain_text("requérant")
    expect(alice.locator('#te-steps li[data-action="request_elements"]')).to_contain_text("frottis")
    expect(alice.locator("#provide-body")).to_be_visible()
    assert alice.evaluate("() => window.__sameDocument") == marker  # no reload happened

    # The list, open on the requester's side, follows too.
    alice.goto(server.base_url + "/teleexpertises")
    expect(alice.locator("body")).to_have_attribute("data-live", "1")
    row = alice.locator(f'#teleexpertises tr[data-teleexpertise="{te_id}"]')
    expect(row).to_contain_text("Éléments demandés")
    alice.evaluate("() => { window.__sameDocument = 2; }")
    declined = expert_api.post(f"/api/v1/teleexpertises/{te_id}/decline",
                               json={"reason": "Hors champ après lecture du frottis."})
    assert declined.status_code == 200, declined.text
    expect(row).to_contain_text("Refusée")
    assert alice.evaluate("() => window.__sameDocument") == 2
    for page in (alice, expert):
        assert not page.errors, page.errors
        page.context.close()
    alice_api.close()
    expert_api.close()


@pytest.mark.parametrize("width", list(WIDTHS))
def test_service_manager_declares_the_service_expert(server, browser, width):
    """hemostase.admin manages « Avis Hémostase »: from the service's card page, the expert form
    (the personal card's fields) changes what requesters read on the expertise card."""
    page = open_page(browser, server, "hemostase.admin", viewport=WIDTHS[width])
    page.goto(server.base_url + "/teleexpertises")
    page.locator("#service-cards a", has_text="Avis Hémostase").click()
    page.wait_for_url(re.compile(r"/boites/\d+/fiche$"))
    expect(page.locator("#service-members")).to_contain_text("gestionnaire")
    expect(page.locator("#expert_on")).to_be_checked()
    contact = f"Astreinte {width} : 04 73 75 {len(width):02d} 00"
    page.fill("#expert_urgent_contact", contact)
    description = page.locator("#expert_description").input_value()
    page.fill("#expert_description", "")
    page.get_by_role("button", name="Enregistrer la fiche du service").click()
    expect(page.locator(".error")).to_contain_text("description de l'expertise requise")
    expect(page.locator("#expert_urgent_contact")).to_have_value(contact)  # what was typed is kept
    page.fill("#expert_description", description)
    page.fill("#expert_answer_days", "3")
    page.get_by_role("button", name="Enregistrer la fiche du service").click()
    expect(page.locator(".ok")).to_contain_text("enregistrée")
    expect(page.locator("#expert_answer_days")).to_have_value("3")
    page.get_by_role("link", name="Voir la fiche d'expertise telle que les requérants la voient").click()
    expect(page.locator("body")).to_contain_text(contact)
    assert page.evaluate("() => document.documentElement.scrollWidth") <= WIDTHS[width]["width"]
    # Requesters find the service among the experts by its declared specialty.
    page.goto(server.base_url + "/teleexpertises")
    page.get_by_role("link", name="Trouver un expert près de chez moi").click()
    page.fill("#experts-q", "Hémostase")
    page.get_by_role("button", name="Rechercher").click()
    expect(page.locator("#experts")).to_contain_text("Avis Hémostase")
    expect(page.locator("#experts-reference")).to_be_visible()
    assert page.evaluate("() => document.documentElement.scrollWidth") <= WIDTHS[width]["width"]
    assert not page.errors, page.errors
    page.context.close()
