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
