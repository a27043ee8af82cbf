"""Directory search recall (issue 18, item 2), on both engines: whenever at most 20 people answer
a query, every person it names is on the first page — for names, names and first names, and
names with a place that is any of the person's practice sites (the second ones included).

The data are generated (``bench/directory_generate.py --common-surnames``, 3,000 people over 300
surnames: about ten people per surname) and imported through the real import; the truth is read
from the generated extraction file, not from the index.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field

import pytest
from bench.directory_generate import generate

from monsisra.services import communes as communes_service
from monsisra.services import directory
from monsisra.services.directory import searching
from tests.support import fresh_database, make_settings, start_server

PAGE = 20


@dataclass
class Person:
    national_id: str
    last: str
    first: str
    sites: list[tuple[str, str, str]] = field(default_factory=list)  # (commune code, postcode, department)


@pytest.fixture(scope="module")
def recall_server(backend, tmp_path_factory):
    """A server of its own with 3,000 generated people imported (module scope: one import per engine)."""
    files = tmp_path_factory.mktemp(f"recall-files-{backend}")
    ps, mss = generate(3000, files, seed=18, common_surnames=True)
    people: dict[str, Person] = {}
    with open(ps, encoding="utf-8") as f:
        f.readline()
        for line in f:
            c = line.split("|")
            p = people.setdefault(c[2], Person(c[2], c[7], c[8]))
            p.sites.append((c[36], c[35], c[44]))
    with fresh_database(backend, tmp_path_factory.mktemp(f"recall-db-{backend}")) as url:
        settings = make_settings(url, tmp_path_factory.mktemp(f"recall-data-{backend}"), smtp_enabled=False,
                                 run_workers=False)
        running = start_server(settings)
        try:
            report = running.call(directory.import_files, running.core, [ps, mss])
            assert report.rejected == 0
            yield running, list(people.values())
        finally:
            running.stop()


def _queries(people: list[Person]) -> list[tuple[dict[str, str], set[str]]]:
    """(query, the national ids it must find), with the truth from the extraction."""
    index = communes_service.package_index()
    rng = random.Random(2)
    by_last: dict[str, set[str]] = defaultdict(set)
    by_name: dict[tuple[str, str], set[str]] = defaultdict(set)
    for p in people:
        by_last[p.last].add(p.national_id)
        by_name[(p.first, p.last)].add(p.national_id)

    def there(last: str, wanted) -> set[str]:
        return {p.national_id for p in people if p.last == last and any(wanted(s) for s in p.sites)}

    out: list[tuple[dict[str, str], set[str]]] = []
    several = [p for p in people if len({s[0] for s in p.sites}) > 1]
    for p in rng.sample(people, 40) + rng.sample(several, 40):
        out.append(({"q": p.last}, by_last[p.last]))
        out.append(({"q": f"{p.first} {p.last}"}, by_name[(p.first, p.last)]))
        code, postcode, department = p.sites[-1]  # the second site when there is one
        out.append(({"q": p.last, "where": department}, there(p.last, lambda s, d=department: s[2] == d)))
        out.append(({"q": p.last, "where": postcode}, there(p.last, lambda s, pc=postcode: s[1] == pc)))
        place = searching.resolve_where(index.by_code[code].name)
        if place.rings:
            # The communes of the name typed in full (same-named ones too), unless it meant a far
            # larger commune whose name begins so.
            codes = {c for c in index.by_code if index.by_code[c].key == index.by_code[code].key}
            if place.ref.key == index.by_code[code].key:
                out.append(({"q": p.last, "where": index.by_code[code].name},
                            there(p.last, lambda s, cs=codes: s[0] in cs)))
    return out


def test_everyone_answering_a_short_query_is_on_the_first_page(recall_server):
    server, people = recall_server
    checked = 0
    for query, truth in _queries(people):
        assert truth, query  # the person the query was drawn from
        got = server.call(directory.search, server.core, None, **query, kind="professionals", limit=PAGE)
        section = got["professionals"]
        found = {i["national_id"] for i in section["items"]}
        assert section["total"] >= min(len(truth), PAGE), (query, section["total"], len(truth))
        if section["total"] <= PAGE:
            checked += 1
            assert truth <= found, (query, sorted(truth - found))
    assert checked >= 100  # most queries are short ones: the assertion above did run
