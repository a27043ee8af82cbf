"""Pure rules: INS keys, address generation, text folding, HTML sanitising, file names."""

from __future__ import annotations

import pytest

from monsisra.domain import directory_search as ds
from monsisra.domain.addresses import base_local_part, candidate_addresses, normalize_address
from monsisra.domain.ins import InvalidINS, ins_key, is_valid_ins, validate_ins
from monsisra.domain.text import fold, search_terms
from monsisra.services.attachments import safe_filename, sniff
from monsisra.services.demo import minimal_pdf
from monsisra.services.messages import sanitize_html
from tests.support import FIXTURES


def test_ins_samples_from_fixtures_are_valid():
    lines = (FIXTURES / "INS.txt").read_text().splitlines()
    values = [line.split(":")[-1].strip() for line in lines if ":" in line]
    assert values and all(is_valid_ins(v) for v in values)


def test_ins_key_and_corsica():
    assert ins_key("1800175108011") == 82
    assert validate_ins("1 80 01 75 108 011 82") == "180017510801182"
    # Corsica: 2A counts as 19, 2B as 18 for the key.
    assert validate_ins("275082A00412359") == "275082A00412359"
    assert ins_key("275082B004123") == 97 - int("2750818004123") % 97
    with pytest.raises(InvalidINS, match="clé"):
        validate_ins("180017510801183")
    with pytest.raises(InvalidINS, match="15 caractères"):
        validate_ins("18001751080")


@pytest.mark.parametrize(("first", "last", "expected"), [
    ("Alice", "Martin", "alice.martin"),
    ("Élodie", "Lefèvre", "elodie.lefevre"),
    ("Jean-Pierre", "N'Diaye", "jean-pierre.n-diaye"),
    ("Anne Marie", "De la Tour", "anne-marie.de-la-tour"),
    ("Zoë", "Œuvray", "zoe.oeuvray"),
])
def test_address_from_names(first, last, expected):
    assert base_local_part(first, last) == expected


def test_address_collisions_get_numbers():
    gen = candidate_addresses("alice.martin", "x.fr")
    assert [next(gen) for _ in range(3)] == ["alice.martin@x.fr", "alice.martin2@x.fr", "alice.martin3@x.fr"]


@pytest.mark.parametrize("bad", ["", "a", "a@", "@b.fr", "a b@c.fr", "a@b..fr", "a@-b.fr", "a\n@b.fr",
                                 "a@b.fr\r\nBcc: x@y.fr", "x" * 65 + "@b.fr"])
def test_malformed_addresses_refused(bad):
    assert normalize_address(bad) is None


def test_fold_and_terms():
    assert fold("  Évènement CŒUR  Ça ") == "evenement coeur ca"
    assert search_terms("Échographie, cœur!") == ["echographie", "coeur"]


def test_fold_keeps_other_scripts_and_drops_every_combining_mark():
    assert fold("  Œdème  ÉLÉONORE\tßeta ") == "oedeme eleonore sseta"
    assert fold("İstanbul Ørsted € « café »") == "istanbul ørsted € « cafe »"
    assert fold("Ἀθῆναι") == "αθηναι"  # Greek marks are combining marks too
    assert fold("a\u034fb") == "a\u034fb"  # the grapheme joiner has no combining class: kept


def test_directory_prefix_tier_short_words():
    exact, prefix = ds.tiers(["urgences", "ch", "d", "7", "vi"], {}, ())
    assert [a.prefix for group in prefix for a in group] == [True, False, False, False, True]
    assert ds.fts5(prefix) == '"urgences"* AND "ch" AND "d" AND "7" AND "vi"*'
    assert ds.tsquery(prefix) == "'urgences' & 'ch' & 'd' & '7' & 'vi':*".replace("'urgences'", "'urgences':*")
    assert exact != prefix
    # Two letters being typed (the last word) are a prefix: "Dupont Ch" finds Christophe.
    assert ds.tiers(["dupont", "ch"], {}, ())[1][1][0].prefix


def test_a_tier_whose_words_an_earlier_tier_has_is_left_out():
    # « kine »: exact (kine | kinesitherapeute); its prefix tier is « kinesitherapeute* » (the
    # prefix of its variant, which covers the one word « kine » begins).
    only = {"kine": ["kinesitherapeute"], "kinesitherapeute": ["kinesitherapeute"]}
    exact = ((ds.Alt("kine"), ds.Alt("kinesitherapeute")),)
    # The vocabulary's only word beginning so is already an exact alternative: an empty level.
    assert ds.tiers(["kine"], {}, (), only) == [exact]
    # Another word begins so: the prefix tier finds it, kept as it was (the prefix, not the words).
    more = {"kine": ["kinesitherapeute", "kinesitherapeutes"],
            "kinesitherapeute": ["kinesitherapeute", "kinesitherapeutes"]}
    assert ds.tiers(["kine"], {}, (), more) == [exact, ((ds.Alt("kinesitherapeute", True),),)]
    # Typos add words: that tier is kept, after the exact one.
    loose = ds.tiers(["kine"], {"kine": ["kina"]}, (), only)
    assert len(loose) == 2 and loose[0] == exact and ds.Alt("kina") in loose[1][0]
    # A prefix whose completions are unknown (too many) is never taken as covered.
    assert len(ds.tiers(["kine"], {}, (), {})) == 2
    # Place filters are in every tier: the same comparison.
    place = ((ds.Alt("xc74010"),),)
    assert ds.tiers(["kine"], {}, place, only) == [exact + place]



def test_a_match_of_the_widest_level_is_placed_in_its_level_by_its_words():
    """Exact words, prefixes, rings of cells and exclusions as the full-text engines match them:
    each entry of the widest level in the first level it matches (levels exclude the earlier
    ones), without testing what being in the widest level already says (the last tier's words,
    the ring of cells outside the commune)."""
    tiers = ds.tiers(["cardio", "lyon"], {"cardio": ["cardia"]}, ())
    cells = (ds.Alt("xg10452038"), ds.Alt("xg10452039"))
    rings = [(ds.Alt("xc69123"),), cells]
    levels = ds.levels(tiers, rings)
    tests = ds.level_tests(levels, ds.widest(tiers, rings))
    assert len(levels) == len(tests) == 2 * len(tiers) == 6
    assert all(cells not in keep for keep, _ in tests)  # the ring of cells is never tested
    assert all(g not in keep for keep, _ in tests for g in tiers[-1])  # nor the last tier's words

    def has(words: set[str], group) -> bool:
        return any(w == a.term or (a.prefix and w.startswith(a.term)) for a in group for w in words)

    def level(text: str) -> int:
        words = set(text.split())
        return next((i for i, (keep, drops) in enumerate(tests) if all(has(words, g) for g in keep)
                     and not any(all(has(words, g) for g in d) for d in drops)), len(tests))

    assert level("cardio lyon xc69123 xg10452038") == 0  # exact words, in the commune
    assert level("cardio lyon xc69381 xg10452039") == 1  # exact words, nearby
    assert level("cardiologie lyonnais xc69123") == 2  # prefixes, in the commune
    assert level("cardiologie lyon xg10452039") == 3  # prefixes (exact « lyon », begun « cardio »), nearby
    assert level("cardia lyon xg10452038") == 5  # a typo's word, nearby
    assert level("cardia lyonnais xc69123 xg10452038") == 4  # a typo's word, in the commune

def test_common_words_are_checked_on_rows_not_intersected_in_the_index():
    shares = ds.Shares({"infirmier": 0.24, "xc35238": 0.003, "martin": 0.004}, 0.0008,
                       {"xg1": 0.0002, "xg2": 0.0001})
    near = ((ds.Alt("infirmier"),), (ds.Alt("xg1"), ds.Alt("xg2")))
    split = ds.split_level((near, (((ds.Alt("xc35238"),),),)), shares)
    assert split.index == "(('xg1' | 'xg2')) & !('xc35238')" and split.check == "('infirmier')"
    assert split.full == ds.tsquery_level((near, (((ds.Alt("xc35238"),),),)))
    # A level excluding a common word checks that on the rows too.
    split = ds.split_level((((ds.Alt("xg1"),),), (((ds.Alt("infirmier"),),),)), shares)
    assert (split.index, split.check) == ("('xg1')", "!('infirmier')")
    # Words of similar frequency stay together in the index; nothing to check.
    rare = ds.split_level((((ds.Alt("martin"),), (ds.Alt("xc35238"),)), ()), shares)
    assert rare.index == rare.full and not rare.check
    # A cell missing from the statistics counts at most as a rare word, less when few live there.
    assert ds.share((ds.Alt("xg1"), ds.Alt("xg9")), shares) == pytest.approx(0.0002 + 0.0008)


def test_least_matches_is_a_lower_bound_only_for_one_group_without_exclusions():
    counts = {"pneumologie": 2748, "lebrun": 1200, "leclerc": 1500, "medecine": 90_000, "generale": 80_000}
    one = ((ds.Alt("pneumologie"), ds.Alt("pneumologue")),)
    assert ds.least_matches((one, ()), counts) == 2748  # any of its words: at least the most common one's
    assert ds.least_matches((((ds.Alt("le", True),),), ()), counts) == 1500  # a prefix: any word it begins
    assert ds.least_matches((((ds.Alt("rare"),),), ()), counts) == 0  # not among the counted words
    # Several groups (words that must all be there) or exclusions (an earlier level): no bound.
    assert ds.least_matches((((ds.Alt("medecine"),), (ds.Alt("generale"),)), ()), counts) == 0
    assert ds.least_matches((one, (((ds.Alt("pneumo"),),),)), counts) == 0


def test_only_rare_or_unknown_words_are_looked_up_for_typos():
    assert ds.may_be_misspelt(None) and ds.may_be_misspelt(0) and ds.may_be_misspelt(ds.COMMON_WORD - 1)
    assert not ds.may_be_misspelt(ds.COMMON_WORD)


def test_sanitize_removes_scripts_handlers_and_remote_images():
    dirty = ('<p onclick="x()">Bonjour<script>alert(1)</script><img src="https://evil/x.png">'
             '<a href="javascript:alert(1)">lien</a><a href="https://ok.fr">ok</a>'
             '<iframe src="https://evil"></iframe><style>body{}</style></p>')
    clean = sanitize_html(dirty)
    for forbidden in ("script", "onclick", "<img", "javascript:", "iframe", "<style"):
        assert forbidden not in clean.lower()
    assert "Bonjour" in clean and 'href="https://ok.fr"' in clean and "noopener" in clean


def test_safe_filename():
    assert safe_filename("../../etc/passwd") == "passwd"
    assert safe_filename("C:\\Users\\x\\compte rendu.pdf") == "compte rendu.pdf"
    # Control characters are removed (issue 11); a line break or tab reads as the space it stood for.
    assert safe_filename("a\x00b\nc.pdf") == "ab c.pdf"
    assert safe_filename("...") == "piece-jointe"
    long = safe_filename("x" * 300 + ".pdf")
    assert len(long) == 200 and long.endswith(".pdf")


def test_sniff_ignores_claimed_type():
    assert sniff(minimal_pdf(["x"])[:8192], "photo.jpg") == "application/pdf"
    assert sniff(b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "doc.pdf") == "image/png"
    assert sniff("Résultat normal".encode(), "x.exe") == "text/plain"
    assert sniff(b"\x00\x01\x02\xff\xfe", "x.txt") == "application/octet-stream"
