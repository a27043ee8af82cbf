"""Directory search, cards and FHIR over HTTP on the real server, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
import sqlalchemy as sa

from monsisra.domain.clock import utcnow
from monsisra.domain.directory_search import words as ds_words
from monsisra.domain.text import fold
from monsisra.services import directory
from monsisra.services.directory import planner, searching
from monsisra.store.models import Mailbox
from tests.support import FIXTURES

DIRECTORY = FIXTURES / "directory"


@pytest.fixture(scope="module")
def imported(server):
    """The sample extractions imported into the server's database (once per backend)."""
    rep = server.call(directory.import_files, server.core, sorted(DIRECTORY.glob("*.txt")))
    assert rep.rejected == 0
    return server


@pytest.fixture(scope="module")
def alice(imported):
    with imported.login("alice.martin") as client:
        yield client


def search(client, **params) -> dict:
    r = client.get("/api/v1/directory/search", params=params)
    assert r.status_code == 200, r.text
    return r.json()


def names(section: dict) -> list[str]:
    return [fold(i["name"]) for i in section["items"]]


def test_search_needs_a_login(imported):
    with imported.client() as anon:
        r = anon.get("/api/v1/directory/search", params={"q": "petit"})
    assert r.status_code == 401 and r.json()["status"] == 401


def test_demo_picker_finds_bruno_petit_by_fragments(alice):
    for q in ("petit cler", "cler petit", "PETIT Clermont", "bruno pet", "Pétit", "Dr Petit",
              "cardiologue clermont"):
        data = search(alice, q=q)
        first = data["professionals"]["items"][0]
        assert first["address"].startswith("bruno.petit@"), (q, first)
        assert first["postcode"] == "63000" and first["commune"] == "Clermont-Ferrand"
        assert "cardiologie" in fold(first["specialty"])
        assert first["is_local"] is True
    entry = search(alice, q="petit cler")["professionals"]["items"][0]
    for key in ("id", "name", "address", "profession", "specialty", "commune", "postcode", "active", "kind",
                "is_expert"):
        assert key in entry


def test_accents_case_and_prefix(alice):
    a = search(alice, q="barthelemy")["professionals"]
    b = search(alice, q="BARTHÉLEMY")["professionals"]
    assert a == b and a["total"] >= 5
    assert all("barthelemy" in n for n in names(a)[:5])
    card = search(alice, q="card", limit=50)
    assert card["professionals"]["total"] >= 10
    assert any("cardiologie" in fold(i["specialty"]) for i in card["professionals"]["items"])
    assert any("cardiologie" in fold(i["name"]) for i in card["services"]["items"])


def test_typos_are_forgiven(alice, make_user):
    data = search(alice, q="Anecy")
    assert data["professionals"]["total"] > 0
    assert any(i["commune"] == "Annecy" for i in data["professionals"]["items"])
    assert any("annecy" in n for n in names(data["services"]))
    # A new local account is searchable at once, and "Gallé" finds GALLET.
    _, address, _ = make_user("Marc", "Gallet", profession="Médecin", specialty="Rhumatologie")
    data = search(alice, q="Gallé")
    assert address in [i["address"] for i in data["professionals"]["items"]]
    data = search(alice, q="Barthelmy")  # one letter missing
    assert any("barthelemy" in n for n in names(data["professionals"]))
    # A common word is taken as spelled right: only the unknown one is looked up for typos.
    data = search(alice, q="médecine Anecy")
    assert list(data["query"]["typos"]) == ["anecy"]
    assert data["professionals"]["total"] > 0


def test_exact_matches_come_before_prefix_and_typo_matches(alice):
    items = search(alice, q="martin", limit=100)["professionals"]["items"]
    exact = [i for i, item in enumerate(items) if "martin" in ds_words(item["name"])]
    prefix_only = [i for i, item in enumerate(items) if "martinez" in ds_words(item["name"])
                   and "martin" not in ds_words(item["name"])]
    assert exact and prefix_only and max(exact) < min(prefix_only)
    assert exact[0] == 0


def test_where_filters_and_distance(alice):
    data = search(alice, q="cardio", where="Clermont")
    assert data["query"]["where"].startswith("Clermont-Ferrand")
    items = data["professionals"]["items"]
    assert items and items[0]["commune"] == "Clermont-Ferrand"
    distances = [i["distance_km"] for i in items]
    assert distances == sorted(distances) and distances[-1] <= 25
    dep = search(alice, where="63", kind="services", limit=100)["services"]
    assert dep["total"] > 0 and all(i["department"] == "63" for i in dep["items"])
    pc = search(alice, q="", where="74000", limit=100)["professionals"]
    # Entries located there come first; after them, people whose other activity is there.
    here = [i["commune"] == "Annecy" for i in pc["items"]]
    assert pc["total"] > 0 and here[0] and here == sorted(here, reverse=True) and sum(here) > len(here) / 2
    by_name = search(alice, where="Haute-Savoie", limit=100)["professionals"]
    # Those practising mainly in the department first, then those who also practise there.
    here = [i["department"] == "74" for i in by_name["items"]]
    assert by_name["total"] > 0 and here[0] and here == sorted(here, reverse=True) and sum(here) > len(here) / 2
    est = search(alice, q="urgences", where="CH Vienne")["services"]
    assert est["total"] == 1 and est["items"][0]["address"].startswith("urgences.ch-vienne@")


def test_kind_filters(alice):
    experts = search(alice, kind="experts", limit=100)
    addresses = [i["address"] for s in ("professionals", "services") for i in experts[s]["items"]]
    assert any(a.startswith("bruno.petit@") for a in addresses)
    assert any(a.startswith("avis-hemostase.chu-clermont@") for a in addresses)
    assert all(i["is_expert"] for s in ("professionals", "services") for i in experts[s]["items"])
    teams = search(alice, kind="resource_teams", limit=100)
    team_names = names(teams["services"])
    assert any(n.startswith("dac 63") for n in team_names) and any("cpts" in n for n in team_names)
    assert all(i["is_resource_team"] for i in teams["services"]["items"])
    only = search(alice, q="cardio", kind="services")
    assert only["professionals"]["total"] == 0 and only["services"]["total"] > 0
    r = alice.get("/api/v1/directory/search", params={"q": "x", "kind": "robots"})
    assert r.status_code == 422


def test_paging(alice):
    first = search(alice, q="med", limit=7)["professionals"]
    assert first["total"] > 14 and first["next_offset"] == 7
    second = search(alice, q="med", limit=7, offset=7)["professionals"]
    assert second["total"] == first["total"]
    ids = [i["id"] for i in first["items"]] + [i["id"] for i in second["items"]]
    assert len(set(ids)) == 14
    whole = search(alice, q="med", limit=14)["professionals"]
    assert [i["id"] for i in whole["items"]] == ids


def test_active_means_our_mailbox_opened_in_the_last_30_days(imported, alice):
    async def set_opened(address: str, days: int | None) -> None:
        async with imported.core.write() as tx:
            when = None if days is None else utcnow() - timedelta(days=days)
            await tx.session.execute(sa.update(Mailbox).where(Mailbox.address.like(address + "@%"))
                                     .values(last_opened_at=when))

    imported.call(set_opened, "bruno.petit", 2)
    imported.call(set_opened, "raphael.david", 45)
    assert search(alice, q="petit bruno")["professionals"]["items"][0]["active"] is True
    assert search(alice, q="raphael david")["professionals"]["items"][0]["active"] is False
    external = search(alice, q="barthelemy")["professionals"]["items"]
    assert external and not any(i["active"] for i in external if not i["is_local"])


def test_profile_card_is_editable_by_its_owner_only(imported, alice):
    with imported.login("bruno.petit") as bruno:
        me = bruno.get("/api/v1/directory/me").json()
        assert me["commune"]["name"] == "Clermont-Ferrand" and me["is_expert"] is True
        r = bruno.patch("/api/v1/directory/me", json={
            "notification_phone": "06 12 34 56 78", "notification_email": "bruno@example.org",
            "modalities": {"teleexpertise": True, "new_patients": False, "home_visits": True},
            "competences": "Échocardiographie", "equipment": "Holter ECG",
            "expert": {"description": "Avis cardiologiques sous 48 h", "documents": "ECG récent",
                       "urgent_contact": "04 73 00 00 00", "specialties": ["Rythmologie"]}})
        assert r.status_code == 200, r.text
        assert r.json()["modalities"]["teleexpertise"] is True
        entry_id = r.json()["entry_id"]
        bad = bruno.patch("/api/v1/directory/me", json={"notification_email": "pas-une-adresse"})
        assert bad.status_code == 422
        assert bruno.patch(f"/api/v1/directory/entries/{entry_id}", json={"equipment": "Holter"}).status_code == 200
    card = alice.get(f"/api/v1/directory/entries/{entry_id}").json()
    assert card["profile"]["equipment"] == "Holter" and card["profile"]["expert"]["urgent_contact"]
    assert "notification_phone" not in json.dumps(card)  # private contact stays private
    assert card["editable"] is False
    r = alice.patch(f"/api/v1/directory/entries/{entry_id}", json={"equipment": "rien"})
    assert r.status_code == 403
    assert alice.get(f"/api/v1/directory/entries/{entry_id}").json()["profile"]["equipment"] == "Holter"
    # The declared specialty makes him findable by it.
    assert any(i["address"].startswith("bruno.petit@")
               for i in search(alice, q="rythmologie")["professionals"]["items"])


def test_public_card_of_a_national_entry(alice):
    item = search(alice, q="barthelemy lea")["professionals"]["items"][0]
    card = alice.get(f"/api/v1/directory/entries/{item['id']}").json()
    assert card["address"] == item["address"] and card["person"]["national_id"] == item["national_id"]
    assert card["person"]["activities"][0]["commune"]
    assert alice.get("/api/v1/directory/entries/m999999999").status_code == 404


def test_fhir_endpoint(alice):
    from fhir.resources.R4B.bundle import Bundle

    r = alice.get("/fhir/Practitioner", params={"name": "petit"})
    bundle = Bundle.model_validate(r.json())
    assert bundle.type == "searchset" and bundle.total == 1
    assert bundle.entry[0].resource.identifier[0].value == "810000000025"
    r = alice.get("/fhir/HealthcareService", params={"mailbox-mss": "dac63@monsisra.localhost"})
    assert Bundle.model_validate(r.json()).total == 1


QUERIES = [("petit cler", "", "all"), ("card", "", "all"), ("Anecy", "", "all"), ("martin", "Lyon", "all"),
           ("barthelemy", "", "professionals"), ("med gen", "63", "all"), ("", "74000", "all"),
           ("urgences", "CH Vienne", "services"), ("", "", "experts"), ("infirmier", "Clermont", "all")]


def made_here(address: str | None) -> str | None:
    """Other tests on the same server add mailboxes named with a random suffix (``unique``): the
    same entry on both engines, under two names; compare them by what they have in common."""
    return re.sub(r"[0-9a-f]{8}@", "…@", address) if address else address


def test_same_answers_on_both_engines(alice, backend, tmp_path_factory):
    answers = {}
    for q, where, kind in QUERIES:
        data = search(alice, q=q, where=where, kind=kind, limit=30)
        answers[f"{q}|{where}|{kind}"] = {s: ([made_here(i["address"]) or i["national_id"] for i in data[s]["items"]],
                                              data[s]["total"]) for s in ("professionals", "services")}
    answers = json.loads(json.dumps(answers))
    store = tmp_path_factory.getbasetemp() / "directory_answers.json"
    known = json.loads(store.read_text()) if store.exists() else {}
    known[backend] = answers
    store.write_text(json.dumps(known))
    if len(known) == 2:
        assert known["sqlite"] == known["postgres"]


def test_nearby_ring_narrows_in_cities():
    """25 km around Paris is ten million people: the "nearby" ring shrinks there, not in the country."""
    paris = directory.resolve_where("Paris 6e Arrondissement")
    country = directory.resolve_where("Aurillac")
    assert paris.ref.name == "Paris 6e Arrondissement" and country.ref.name == "Aurillac"
    assert searching._nearby_radius(paris.ref, 25.0) == min(searching.NEARBY_RADII_KM)
    assert searching._nearby_radius(country.ref, 25.0) == 25.0
    assert len(paris.rings[1]) < len(country.rings[1]) / 4


PLAN_QUERIES = [{"q": "medecine"}, {"q": "médecine générale"}, {"q": "infirmier", "where": "Annecy"},
                {"q": "pharmacien", "where": "74"}, {"q": "cardio", "kind": "services"}, {"q": "martin"},
                {"q": "cardio", "where": "Clermont"}, {"q": "urgences"}, {"q": "Anecy"}, {"q": "med gen ann"},
                {"q": "medecine", "offset": 20}, {"where": "Annecy", "limit": 50},
                {"where": "Annecy", "offset": 30, "limit": 40}, {"q": "medecine", "where": "Lyon", "limit": 60},
                {"q": "infirmier", "where": "Annecy", "offset": 3, "limit": 7}]


def test_plan_choices_never_change_the_answers(imported, monkeypatch):
    """On PostgreSQL, statistics choose how a level is read (GIN index, common words checked on
    rows, rows walked in id order): every choice must give the same entries in the same order."""
    from monsisra.domain import directory_search as ds

    def answers() -> list:
        planner.STATS.clear()
        return [imported.call(directory.search, imported.core, None, **q) for q in PLAN_QUERIES]

    usual = answers()
    assert all(a["professionals"]["total"] or a["services"]["total"] for a in usual), [
        (q, a["professionals"]["total"], a["services"]["total"]) for q, a in zip(PLAN_QUERIES, usual, strict=True)]
    monkeypatch.setattr(planner, "FREQUENT_SHARE", 0.0)  # walk rows in id order whenever possible
    monkeypatch.setattr(ds, "CHECK_SHARE", 0.0)  # and check every word but the rarest on the rows
    monkeypatch.setattr(ds, "CHECK_RATIO", 1.0)
    assert answers() == usual
    monkeypatch.setattr(searching, "RANKED_ROWS", -1)  # and level by level, not in one statement (both engines)
    assert answers() == usual
    monkeypatch.setattr(planner, "WALK_ROWS", 7)  # walks too short to hold a page: the index after all
    assert answers() == usual
    monkeypatch.setattr(planner, "NEAREST_ABOVE", -1)  # "nearby" levels read cell batch by cell batch
    monkeypatch.setattr(planner, "NEAREST_CELLS", 1)
    batches = []
    read = planner.Engine.nearest

    async def counted(self, *args, **kwargs):
        batches.append(args[3])
        return await read(self, *args, **kwargs)

    monkeypatch.setattr(planner.Engine, "nearest", counted)
    assert answers() == usual
    assert len(batches) > len(PLAN_QUERIES)  # the cell by cell path did run, in several batches
    monkeypatch.setattr(planner, "FREQUENT_SHARE", 2.0)  # never walk
    monkeypatch.setattr(ds, "CHECK_SHARE", 2.0)  # never check: everything through the index
    assert answers() == usual


def test_leaving_out_covered_tiers_never_changes_the_answers(imported, monkeypatch):
    """A prefix tier whose words the exact tier already has (« kiné », « cardio », « ophtalmo »:
    the prefixes of their variants) is left out of the levels: the same entries, totals and order
    as when every tier is read, alone, with a place (commune, department) and on later pages."""
    from monsisra.domain import directory_search as ds

    queries = [{"q": w, **extra} for w in ("kiné", "kine", "cardio", "cardiologue", "ophtalmo", "gyneco", "infirmier",
                                          "medecin generale", "psy", "kine annecy", "urgences")
               for extra in ({}, {"where": "Annecy"}, {"where": "74"}, {"where": "74000"}, {"offset": 5, "limit": 5},
                             {"kind": "professionals", "where": "Lyon"})]
    within = ds._within
    dropped = []

    def counted(query, earlier, completions):
        got = within(query, earlier, completions)
        dropped.append(got and query != earlier)
        return got

    def answers() -> list:
        out = [imported.call(directory.search, imported.core, None, **q) for q in queries]
        return [(r["query"]["typos"], {s: ([i["id"] for i in r[s]["items"]], r[s]["total"], r[s]["total_capped"])
                                       for s in ("professionals", "services")}) for r in out]

    monkeypatch.setattr(ds, "_within", counted)
    left_out = answers()
    assert any(dropped)  # covered tiers, not only identical ones, were left out in some of these queries
    assert sum(bool(a[1]["professionals"][1] or a[1]["services"][1]) for a in left_out) > len(queries) // 2
    monkeypatch.setattr(ds, "_within", lambda query, earlier, completions: query == earlier)  # as before
    assert answers() == left_out


def test_sections_beyond_the_cap_page_the_same_in_one_statement(imported, monkeypatch, backend):
    """With matches beyond the cap and no distance, PostgreSQL keeps its one ranking statement
    (the first matches in level, then name order): the same pages, totals and "capped" flags as
    level by level (SQLite goes level by level either way)."""
    cap = 3
    monkeypatch.setattr(searching, "TOTAL_CAP", cap)
    monkeypatch.setattr(planner, "TOTAL_CAP", cap)
    monkeypatch.setattr(planner, "NEAREST_ABOVE", cap)
    queries = [{"q": "medecin"}, {"q": "mar"}, {"q": "infirmier", "offset": 2, "limit": 2},
               {"q": "cardio", "where": "63"}, {"where": "74", "offset": 1, "limit": 5}, {"q": "a", "offset": 4},
               {"q": "medecine generale", "limit": 2, "offset": 1}, {"q": "medecin", "offset": 7},
               # With distance: counted and ranked in one statement on SQLite when within the cap.
               {"q": "medecin", "where": "Lyon"}, {"where": "Annecy", "offset": 2, "limit": 3},
               {"q": "infirmier", "where": "Annecy"}, {"q": "petit", "where": "Clermont-Ferrand"},
               {"q": "cardiologue", "where": "63000", "offset": 1},
               # Typo passes: counted and ranked in one statement on SQLite.
               {"q": "petti"}, {"q": "martn", "offset": 1, "limit": 2}, {"q": "cardiolgue"}, {"q": "brunoo petit"}]

    def answers() -> list:
        planner.STATS.clear()
        return [imported.call(directory.search, imported.core, None, **q) for q in queries]

    levelwise = []
    read = searching.read_section

    async def counted(*args, **kwargs):
        levelwise.append(args[1])
        return await read(*args, **kwargs)

    monkeypatch.setattr(searching, "read_section", counted)
    one_statement = answers()
    assert any(a["professionals"]["total_capped"] and a["professionals"]["items"] for a in one_statement)
    located = [a for q, a in zip(queries, one_statement, strict=True) if "where" in q and not q["where"].isdigit()]
    assert any(a["professionals"]["total_capped"] for a in located)
    assert any(0 < a["professionals"]["total"] <= cap and a["professionals"]["items"] for a in located)
    assert sum(bool(a["query"]["typos"]) for a in one_statement) >= 3
    if backend == "postgres":
        # Without distance, every section, capped or not, was paged by its ranking statement.
        levelwise.clear()
        for q in queries:
            if "where" not in q or q["where"].isdigit():
                imported.call(directory.search, imported.core, None, **q)
        assert levelwise == []
    monkeypatch.setattr(searching, "RANKED_ROWS", -1)  # level by level
    assert answers() == one_statement


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)  # PostgreSQL's plans: SQLite reads in rank order
def test_first_entries_and_known_counts_never_change_the_answers(imported, monkeypatch, backend):
    """PostgreSQL: a page looked for among the section's first entries in rank order
    (``Engine.rank_range``, then every match when they do not hold it) and totals known to be
    over the cap from the exact counts of common words (``word_counts``, no count statement)
    give the same pages, totals and "capped" flags as reading and counting every match."""
    from monsisra.store.directory import SECTIONS, WORD_COUNTS, word_counts_sql, word_counts_value

    cap = 3
    monkeypatch.setattr(searching, "TOTAL_CAP", cap)
    monkeypatch.setattr(planner, "TOTAL_CAP", cap)
    monkeypatch.setattr(planner, "NEAREST_ABOVE", cap)
    queries = [{"q": "medecin"}, {"q": "mar"}, {"q": "infirmier", "offset": 2, "limit": 2}, {"q": "petit"},
               {"q": "medecine generale", "limit": 2, "offset": 1}, {"q": "medecin", "offset": 7}, {"q": "a"},
               {"q": "cardio"}, {"q": "generaliste", "limit": 1}, {"q": "medecin", "kind": "professionals"},
               {"q": "cardio", "where": "63"}, {"where": "74", "offset": 1, "limit": 5},
               {"q": "infirmier", "where": "Annecy"}, {"q": "petti"}, {"q": "martn", "offset": 1, "limit": 2}]

    def answers() -> list:
        planner.STATS.clear()
        return [imported.call(directory.search, imported.core, None, **q) for q in queries]

    async def store_counts(over: int | None) -> None:
        async with imported.core.write() as tx:
            await tx.session.execute(sa.text("DELETE FROM dir_meta WHERE name = :n"), {"n": WORD_COUNTS})
            if over is not None:
                sections = {n: {w: int(k) for w, k in (await tx.session.execute(
                    sa.text(word_counts_sql(n, over)))).all()} for n in SECTIONS}
                await tx.session.execute(sa.text("INSERT INTO dir_meta (name, value) VALUES (:n, :v)"),
                                         {"n": WORD_COUNTS, "v": word_counts_value(sections, over)})

    monkeypatch.setattr(planner, "RANGE_ABOVE", float("inf"))  # never among the first entries
    imported.call(store_counts, None)  # no known counts: everything counted
    try:
        usual = answers()
        assert any(a["professionals"]["total_capped"] and a["professionals"]["items"] for a in usual)
        imported.call(store_counts, cap)  # the words found in more than the cap: not counted
        known = []
        over = planner.Engine.over

        def noted(self, level, section, limit):
            known.append(over(self, level, section, limit))
            return known[-1]

        monkeypatch.setattr(planner.Engine, "over", noted)
        assert answers() == usual
        assert any(known)
        tried, held = [], []
        within = planner.Engine._ranked_in_range

        async def ranged(self, *args, **kwargs):
            got = await within(self, *args, **kwargs)
            tried.append(1)
            held.append(got is not None)
            return got

        monkeypatch.setattr(planner.Engine, "_ranked_in_range", ranged)
        monkeypatch.setattr(planner, "RANGE_ABOVE", 0.0)
        monkeypatch.setattr(planner, "RANGE_SHARE", 1.0)
        monkeypatch.setattr(planner, "WALKED_SECTIONS", ("professionals", "services"))
        for margin, least in ((4.0, 1), (1.0, 1), (0.1, 1), (20.0, 20)):
            # Ranges that hold the page, and ranges too short for it (every match read after all).
            monkeypatch.setattr(planner, "RANGE_MARGIN", margin)
            monkeypatch.setattr(planner, "RANGE_MIN", least)
            assert answers() == usual, margin
        assert any(held) and not all(held), (len(tried), sum(held))
        monkeypatch.setattr(searching, "RANKED_ROWS", -1)  # level by level: each level's page
        edges = []
        page = planner.Engine.page

        async def paged(self, *args, **kwargs):
            edges.append(kwargs.get("edge"))
            return await page(self, *args, **kwargs)

        monkeypatch.setattr(planner.Engine, "page", paged)
        for margin in (4.0, 0.1):
            monkeypatch.setattr(planner, "RANGE_MARGIN", margin)
            assert answers() == usual, margin
        assert any(e is not None for e in edges)
    finally:
        imported.call(store_counts, None)
        planner.STATS.clear()


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)  # the word counts are PostgreSQL's only
def test_migration_0011_counts_the_words_of_an_index_built_before_it(imported, backend, monkeypatch):
    """An index built before migration 0011 has no word counts: the migration (run by ``serve``
    at start-up) stores them, exact, from the existing index; nothing to reindex."""
    import asyncio

    from alembic import command

    from monsisra.store import directory as store_directory
    from monsisra.store.migrate import alembic_config, upgrade

    monkeypatch.setattr(store_directory, "WORD_COUNTS_OVER", 3)  # the sample is small: its common words
    url = imported.settings.database_url

    async def meta_rows() -> int:
        async with imported.core.write() as tx:
            return await tx.session.scalar(sa.text("SELECT count(*) FROM dir_meta WHERE name = 'word_counts'"))

    async def read() -> tuple[dict, dict]:
        async with imported.core.write() as tx:
            s = tx.session
            stored = json.loads(await s.scalar(sa.text("SELECT value FROM dir_meta WHERE name = 'word_counts'")))
            exact = {}
            for word in list(stored["sections"]["professionals"])[:5]:
                exact[word] = await s.scalar(sa.text(
                    "SELECT count(*) FROM dir_search WHERE section = 'professionals' AND NOT is_local "
                    "AND tsv @@ to_tsquery('simple', :w)"), {"w": f"'{word}'"})
            return stored, exact

    try:
        # As an install upgraded from 0010: the schema of then, no counts yet.
        asyncio.run(asyncio.to_thread(command.downgrade, alembic_config(url), "0010_service_expert"))
        assert imported.call(meta_rows) == 0
        asyncio.run(asyncio.to_thread(upgrade, url))
        stored, exact = imported.call(read)
        assert stored["over"] == 3 and set(stored["sections"]) == {"professionals", "services"}
        assert exact and all(stored["sections"]["professionals"][w] == n > 3 for w, n in exact.items())
    finally:
        async def drop() -> None:
            async with imported.core.write() as tx:
                await tx.session.execute(sa.text("DELETE FROM dir_meta WHERE name = 'word_counts'"))

        imported.call(drop)  # the other tests store their own (a cap of 1,000 is never reached here)
        planner.STATS.clear()


def _other_process_core(server):
    """A core of its own on the server's database: what another ``serve`` process would do."""
    from monsisra.services.core import Core

    return Core(server.settings)


def test_an_ended_session_is_refused_by_the_very_next_search(imported, make_user):
    """The search checks its bearer token in its own transaction (one session per request):
    no cache, so an ending anywhere, by any process, is seen at once."""
    from monsisra.services import accounts

    user, _address, _ = make_user("Rémi", "Fermé")
    params = {"q": "petit"}
    # Revoked through the API by the same server.
    with imported.login(user, "secret-pass") as c:
        assert c.get("/api/v1/directory/search", params=params).status_code == 200
        assert c.post("/api/v1/auth/revoke").status_code == 204
        assert c.get("/api/v1/directory/search", params=params).status_code == 401
    # Revoked by another process (a core of its own on the same database).
    with imported.login(user, "secret-pass") as c:
        token = c.headers["Authorization"].split(" ", 1)[1]
        assert c.get("/api/v1/directory/search", params=params).status_code == 200

        async def revoke_elsewhere() -> None:
            other = _other_process_core(imported)
            try:
                await accounts.revoke_token(other, token)
            finally:
                await other.close()

        imported.call(revoke_elsewhere)
        r = c.get("/api/v1/directory/search", params=params)
        assert r.status_code == 401 and "révoqué" in r.json()["detail"]
        # ``near=moi`` resolves the actor first (the caller's practice): refused the same way.
        assert c.get("/api/v1/directory/search", params={**params, "near": "moi"}).status_code == 401


def test_an_expired_token_a_disabled_account_and_a_half_open_session_are_refused(imported, make_user):
    from monsisra.services import accounts
    from monsisra.store.models import Account, Token

    user, _address, _ = make_user("Inès", "Expirée")
    with imported.login(user, "secret-pass") as c:
        token = c.headers["Authorization"].split(" ", 1)[1]
        assert c.get("/api/v1/directory/search", params={"q": "petit"}).status_code == 200

        async def expire() -> None:
            async with imported.core.write() as tx:
                await tx.session.execute(sa.update(Token).where(Token.token_hash == accounts._digest(token))
                                         .values(expires_at=utcnow() - timedelta(seconds=1)))

        imported.call(expire)
        assert c.get("/api/v1/directory/search", params={"q": "petit"}).status_code == 401

    with imported.login(user, "secret-pass") as c:
        assert c.get("/api/v1/directory/search", params={"q": "petit"}).status_code == 200
        imported.call(accounts.set_active, imported.core, user, False)
        try:
            assert c.get("/api/v1/directory/search", params={"q": "petit"}).status_code == 401
        finally:
            imported.call(accounts.set_active, imported.core, user, True)

    async def half_open() -> str:
        async with imported.core.read() as s:
            account = (await s.execute(sa.select(Account).where(Account.username == user))).scalar_one()
        return await accounts.issue_token(imported.core, account, limited=True)

    with imported.client(imported.call(half_open)) as c:
        r = c.get("/api/v1/directory/search", params={"q": "petit"})
        assert r.status_code == 403 and "second facteur" in r.json()["detail"]
    with imported.client("not-a-token") as c:
        assert c.get("/api/v1/directory/search", params={"q": "petit"}).status_code == 401


def test_near_me_and_the_browser_session_still_search(imported, alice):
    """The paths that resolve the actor before searching: ``near=moi`` and a web session's cookie."""
    assert search(alice, q="petit", near="moi")["professionals"]["items"]
    with imported.client() as browser:
        assert browser.post("/connexion", data={"username": "alice.martin", "password": "demo"}).status_code == 303
        got = browser.get("/api/v1/directory/search", params={"q": "petit"})
    assert got.status_code == 200 and got.json()["professionals"]["items"]


def _first_pages(imported, queries: list[dict]) -> list:
    """Each query's typo flag and, per section, its page of ids, total, cap flag and next offset
    (statistics dropped first: each run plans alike)."""
    planner.STATS.clear()
    out = [imported.call(directory.search, imported.core, None, **q) for q in queries]
    return [(r["query"]["typos"], {s: ([i["id"] for i in r[s]["items"]], r[s]["total"], r[s]["total_capped"],
                                       r[s]["next_offset"]) for s in ("professionals", "services")})
            for r in out]


def test_a_typo_pass_after_nothing_found_reads_only_the_typo_tier(imported, monkeypatch):
    """In a section where the first pass found nothing, the typo pass reads the typo tier alone
    (no exact and prefix levels, no exclusion of them): the same entries, totals, "capped"
    flags, next offsets and typos as reading every tier, with places (commune, department,
    postcode), kinds and later pages; in one section and not the other too."""
    queries = [{"q": w, **extra} for w in ("martn", "petti", "cardiolgue", "brunoo petit", "Anecy", "barthelmy",
                                          "bruno pettit", "medecin generalle", "urgencess", "barthelemy",
                                          "barthelemi", "caron", "aubert", "bonnot", "millet")
               for extra in ({}, {"where": "Annecy"}, {"where": "74"}, {"where": "63000"}, {"offset": 1, "limit": 2},
                             {"kind": "services"}, {"where": "Clermont-Ferrand", "offset": 2, "limit": 3})]
    shortened = []
    read = searching.typo_tiers

    def counted(tier_queries, first_totals):
        got = read(tier_queries, first_totals)
        shortened.extend(len(tiers) < len(tier_queries) for tiers in got.values())
        return got

    def answers() -> list:
        return _first_pages(imported, queries)

    monkeypatch.setattr(searching, "typo_tiers", counted)
    short = answers()
    assert any(shortened) and not all(shortened)  # both cases: nothing found first, and a few found
    assert sum(bool(a[0]) for a in short) > len(queries) // 2
    assert sum(bool(a[1]["professionals"][1] or a[1]["services"][1]) for a in short) > len(queries) // 2
    monkeypatch.setattr(searching, "typo_tiers",  # every tier, in every section
                        lambda tier_queries, first_totals: dict.fromkeys(first_totals, tier_queries))
    assert answers() == short


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)  # SQLite's one count-and-rank statement
def test_a_located_search_reads_the_index_once_per_section(imported, monkeypatch, backend):
    """SQLite, a search ordered by distance or a typo pass, with levels of several tiers: the
    index is read once per section, for the widest level (every tier in every ring), and each
    match is placed in its level on its own words; it read each level (tier × ring, with its
    exclusions) before, as it still does for levels of one tier. The same pages, totals,
    "capped" flags, next offsets and typos as reading level by level."""
    queries = [{"q": w, **extra} for w in ("cardio", "infirm", "medecin generale", "petit", "kiné", "urgences",
                                          "petti", "cardiolgue", "pharmacien")
               for extra in ({"where": "Annecy"}, {"where": "Clermont-Ferrand"}, {"where": "Lyon", "kind": "all"},
                             {"where": "Clermont-Ferrand", "offset": 2, "limit": 3}, {"where": "63000"},
                             {"where": "Annecy", "kind": "professionals", "offset": 1, "limit": 4}, {"near": "Lyon"})]
    statements: list[str] = []
    calls: list[tuple[list[str], dict, int]] = []
    rank = searching.count_rank_sqlite

    async def counted(engine, sections, levels, widest, limit, offset, ref, tiers):
        calls.append((list(sections), levels, tiers))
        return await rank(engine, sections, levels, widest, limit, offset, ref, tiers)

    def record(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    def answers() -> list:
        return _first_pages(imported, queries)

    engine = imported.core.db.engine.sync_engine
    monkeypatch.setattr(searching, "count_rank_sqlite", counted)
    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        one_read = answers()
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
    # Index reads (an entry's own words asked of the index, « rowid = id », only for irregular text).
    reads = sum(s.count(f"{planner.FTS_TABLE} MATCH") - s.count("AND rowid = id") for s in statements)
    several = [(sections, levels) for sections, levels, tiers in calls if tiers > 1]
    assert len(several) > len(queries) // 2
    assert reads == sum(len(sections) if tiers > 1 else sum(len(levels[n]) for n in sections)
                        for sections, levels, tiers in calls)
    assert sum(len(lv) for _, levels in several for lv in levels.values()) > 2 * sum(len(s) for s, _ in several)
    assert sum(bool(a[0]) for a in one_read) >= 7  # typo passes among them
    assert sum(bool(a[1]["professionals"][0]) for a in one_read) > len(queries) // 2
    monkeypatch.setattr(planner, "IRREGULAR_TEXT", "1")  # every match's level asked of the index
    assert answers() == one_read
    monkeypatch.setattr(searching, "RANKED_ROWS", -1)  # level by level, a read per level
    assert answers() == one_read


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)  # PostgreSQL's ranking statement
def test_a_ranked_match_is_placed_without_testing_the_ring_of_cells_again(imported, monkeypatch, backend):
    """PostgreSQL ranks a section's matches (one read of the widest level) by placing each in
    its level: only what being a match does not already say is tested on its words, never the
    "nearby" ring's ~30 cells (each level's whole query was tested on every match before). The
    same pages, totals, "capped" flags and next offsets as level by level."""
    queries = [{"q": w, **extra} for w in ("cardio", "infirm", "medecin generale", "petit", "kiné", "urgences",
                                          "petti", "pharmacien")
               for extra in ({"where": "Annecy"}, {"where": "Clermont-Ferrand"}, {"where": "Lyon", "kind": "all"},
                             {"where": "Clermont-Ferrand", "offset": 2, "limit": 3}, {"near": "Lyon"})]
    placed: list[dict] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        if "THEN 0" in statement and "WHEN" in statement:
            placed.append(context.compiled_parameters[0] if context.compiled_parameters else {})

    def answers() -> list:
        return _first_pages(imported, queries)

    engine = imported.core.db.engine.sync_engine
    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        ranked = answers()
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
    tested = [v for p in placed for k, v in p.items() if re.fullmatch(r"[kp]\d+", k)]
    assert len(placed) > len(queries) and tested  # ranking statements, with levels to place matches in
    assert not [v for v in tested if "xg" in v]  # no cell of a ring tested on the matches
    assert sum(bool(a[1]["professionals"][0]) for a in ranked) > len(queries) // 2
    monkeypatch.setattr(searching, "RANKED_ROWS", -1)  # level by level
    assert answers() == ranked
