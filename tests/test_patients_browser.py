"""Issue 13 pages in Chromium, at desktop and phone (375 px) widths, with fresh accounts: a
patient registered with a wrong INS key shows the French error next to the field; the care-team
toggle turns the icon green; the shared record opens for the team and is refused to an outsider;
a support request sent from the form is taken in charge by a member of the team, both sides see it."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from monsisra.domain.ins import format_ins, ins_key
from monsisra.domain.model import Access
from monsisra.services import mailboxes
from tests.browser_support import browser_fixture, open_page, wait_live  # noqa: F401 (fixture)
from tests.support import unique

pytestmark = [pytest.mark.browser, pytest.mark.postgres]
WIDTHS = {"bureau": {"width": 1366, "height": 820}, "telephone": {"width": 375, "height": 740}}


def fresh_ins() -> str:
    first13 = f"1920363{int(unique('')[:8], 16) % 1_000_000:06d}"
    return first13 + f"{ins_key(first13):02d}"


@pytest.mark.parametrize("width", list(WIDTHS))
def test_patient_ins_error_care_team_and_record(server, make_user, browser, width):
    doctor, _, _ = make_user("Hugo", profession="Médecin")
    outsider, _, _ = make_user("Olga")
    page = open_page(browser, server, doctor, "secret-pass", viewport=WIDTHS[width])
    page.goto(server.base_url + "/patients")
    ins = fresh_ins()
    wrong = ins[:-2] + f"{(int(ins[-2:]) + 1) % 97:02d}"
    page.fill("#patient_ins", format_ins(wrong))
    page.fill("#patient_family_name", "Fabre")
    page.fill("#patient_given_names", "Lucie")
    page.get_by_role("button", name="Enregistrer le patient").click()
    # The error sits next to the field, in French, and what was typed is kept.
    error = page.locator("#patient_ins-error")
    expect(error).to_contain_text("clé de l'INS")
    expect(page.locator("#patient_ins")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#patient_family_name")).to_have_value("Fabre")
    page.fill("#patient_ins", format_ins(ins))
    page.get_by_role("button", name="Enregistrer le patient").click()
    page.wait_for_url(re.compile(r"/patients/\d+$"))
    patient_url = page.url
    expect(page.locator("h1")).to_contain_text("FABRE")
    expect(page.locator("h1 .ct-icon.off")).to_have_count(1)

    # Outside the care team, the record is refused (even to the one who registered the patient).
    page.click("#open-record")
    expect(page.locator("#record-refused")).to_contain_text("acteurs de la prise en charge")
    page.goto(patient_url)
    page.get_by_role("button", name=re.compile("Me déclarer acteur")).click()
    expect(page.locator("h1 .ct-icon.on")).to_have_count(1)
    expect(page.locator("#care-team")).to_contain_text("Hugo")
    expect(page.get_by_role("button", name=re.compile("me retirer"))).to_be_visible()
    page.click("#open-record")
    expect(page.locator("#record-title")).to_have_text("Dossier partagé")
    expect(page.locator("#timeline")).to_be_visible()

    # An outsider with no link: the patient does not exist for them, the record is refused.
    other = open_page(browser, server, outsider, "secret-pass", viewport=WIDTHS[width])
    other.goto(patient_url + "/dossier")
    expect(other.locator("#record-refused")).to_be_visible()
    other.goto(patient_url)
    expect(other.locator("body")).to_contain_text("Patient introuvable")
    assert not page.errors and not other.errors, page.errors + other.errors
    page.context.close()
    other.context.close()


@pytest.mark.parametrize("width", list(WIDTHS))
def test_support_request_taken_by_a_team_member(server, make_user, browser, width):
    local = unique("cpts")
    team = server.call(mailboxes.create_service_mailbox, server.core, local=local, display_name=f"CPTS {local}",
                       is_resource_team=True)
    member, _, _ = make_user("Camille", last=unique("COORD"))
    member_id = server.login(member, "secret-pass").get("/api/v1/me").json()["id"]
    server.call(mailboxes.grant, server.core, team.id, member_id, Access.MEMBER)
    requester, _, _ = make_user("Romain")

    req = open_page(browser, server, requester, "secret-pass", viewport=WIDTHS[width])
    # From the Écrire menu.
    req.locator(".write-menu summary").click()
    req.get_by_role("link", name="Demande d'appui").click()
    req.wait_for_url(re.compile(r"/appui/nouvelle"))
    req.select_option("#to", team.address)
    req.fill("#reason", "Sortie d'hospitalisation : besoin d'un passage infirmier quotidien.")
    req.check("input[name=urgency][value=urgent]")
    req.get_by_role("button", name="Envoyer la demande").click()
    req.wait_for_url(re.compile(r"/appui\?vue=envoyees"))
    row = req.locator("#support-requests tbody tr").first
    expect(row).to_have_attribute("data-state", "new")
    expect(row).to_contain_text("Urgent")

    wait_live(req)
    coord = open_page(browser, server, member, "secret-pass", viewport=WIDTHS[width])
    coord.goto(server.base_url + "/appui")
    mine = coord.locator("#support-requests tbody tr").first
    expect(mine).to_contain_text("passage infirmier")
    mine.get_by_role("button", name="Prendre en charge").click()
    taken = coord.locator("#support-requests tbody tr").first
    expect(taken).to_have_attribute("data-state", "taken")
    expect(taken).to_contain_text("Prise en charge par")
    expect(taken.get_by_role("button", name="Prendre en charge")).to_have_count(0)

    # The requester's open page shows it live, without reloading.
    expect(req.locator("#support-requests tbody tr").first).to_contain_text("Prise en charge par")
    expect(req.locator("#support-requests tbody tr").first).to_have_attribute("data-state", "taken")
    assert not req.errors and not coord.errors, req.errors + coord.errors
    req.context.close()
    coord.context.close()


def test_resource_team_card_offers_a_support_request(server, browser):
    page = open_page(browser, server, "alice.martin")
    page.goto(server.base_url + "/ecrire")
    page.click("#open-picker")
    page.fill("#picker-q", "DAC 63")
    link = page.locator("#picker-results a.entry-support").first
    expect(link).to_have_text("Demande d'appui")
    link.click()
    page.wait_for_url(re.compile(r"/appui/nouvelle\?equipe="))
    expect(page.locator("#to")).to_have_value(f"dac63@{server.settings.domain}")
    assert not page.errors, page.errors
    page.context.close()
