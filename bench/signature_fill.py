"""How full the search signatures of PostgreSQL get, and how well they filter, on messages of
realistic length (issue 18, item 4): the benchmark's short messages (~52 words), the sample
letters of ``/work/shared/data/mail`` and long hospital letters of 300 to 2,000 words
(``bench.long_letters``).

Each message's lexemes are PostgreSQL's own (``to_tsvector('simple', search_text)``, as
``messages.search_vector``); the signature of migration 0012 is computed in Python from them
(checked against the SQL function ``search_signature`` on every message) and so are the variants
compared: without the lexemes shorter than the signed prefix (they can never match a signed
query term), and wider signatures. For every query word, « candidates » is the share of
messages whose signature holds its bit, « matches » the share that really holds a word starting
with it; the filter's false-positive rate is (candidates − matches) / (1 − matches).

Run: ``.venv/bin/python -m bench.signature_fill`` (a throw-away PostgreSQL database).
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import random
import statistics
import tempfile
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bench.common import RESULTS, Corpus, fresh_database, header, new_meta, write_results
from bench.long_letters import LongLetters
from monsisra.services.messages import build_search_text
from monsisra.services.messages.search import SIGNATURE_PREFIX

SAMPLES = Path("/work/shared/data/mail")
QUERY_WORDS = ("bilan", "fibrillation", "apixaban", "dubois", "echographie", "cardiaque", "pheochromocytome",
               "creatinine", "scanner", "insuffisance", "metformine", "thrombose", "ferritine", "coloscopie")
PER_CORPUS = 400
RANDOM_WORDS = 200


def _hash(prefix: str) -> int:
    """The 32-bit hash of ``signature_position`` before its top bits are kept (longer prefixes:
    the same polynomial over all their characters)."""
    c = [ord(ch) for ch in prefix]
    c += [0] * (SIGNATURE_PREFIX - len(c))
    h = 0
    for x in c:
        h = h * 31 + x
    return h % 2147483647 * 2654435761 % 4294967296


def variants() -> dict[str, Any]:
    """name → (bits of a message's lexemes, bits of a query word, width)."""
    def sig(width: int, drop_short: bool, long: int | None = None):
        bits = width.bit_length() - 1

        def positions(word: str) -> set[int]:
            out = {_hash(word[:SIGNATURE_PREFIX]) >> (32 - bits)}
            if long and len(word) >= long:
                out.add(_hash(word[:long]) >> (32 - bits))
            return out

        def of_lexemes(lexemes: list[str]) -> set[int]:
            out: set[int] = set()
            for x in lexemes:
                if not x.startswith("zzmbx") and (not drop_short or len(x) >= SIGNATURE_PREFIX):
                    out |= positions(x)
            return out

        return of_lexemes, positions, width

    return {"256 bits (0012)": sig(256, False), "256 bits, no short lexemes": sig(256, True),
            "256, no short, +7-char prefix": sig(256, True, 7),
            "512 bits, no short lexemes": sig(512, True), "512, no short, +6-char prefix": sig(512, True, 6),
            "512, no short, +7-char prefix": sig(512, True, 7), "512, no short, +8-char prefix": sig(512, True, 8),
            "1024 bits, no short lexemes": sig(1024, True), "1024, no short, +7-char prefix": sig(1024, True, 7)}


def corpora() -> dict[str, list[tuple[str, str]]]:
    out: dict[str, list[tuple[str, str]]] = {}
    corpus = Corpus(13)
    out["benchmark messages (core_read)"] = [corpus.message()[1:] for _ in range(PER_CORPUS)]
    samples = []
    for path in sorted(SAMPLES.glob("*.eml")):
        if path.name.startswith("bad_"):
            continue
        msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        body = msg.get_body(("plain", "html"))
        samples.append((str(msg["subject"] or ""), body.get_content() if body else ""))
    out["sample letters (shared/data/mail)"] = samples
    letters = LongLetters(5)
    for words in (300, 600, 1000, 2000):
        out[f"long letters, {words} words"] = [letters.letter(words) for _ in range(PER_CORPUS // 2)]
    return out


async def lexemes_of(url: str, texts: list[str]) -> tuple[list[list[str]], list[list[int]]]:
    engine = sa.ext.asyncio.create_async_engine(url)
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(sa.text(
                "SELECT tsvector_to_array(v), search_signature(v) FROM unnest(CAST(:t AS text[])) AS t(x), "
                "to_tsvector('simple', t.x) AS v"), {"t": texts})).all()
    finally:
        await engine.dispose()
    return [list(r[0]) for r in rows], [list(r[1]) for r in rows]


def _sql_bits(words: list[int]) -> set[int]:
    return {k * 64 + (63 - b) for k, w in enumerate(words) for b in range(64) if (w >> b) & 1}


def measure(url: str) -> list[dict[str, Any]]:
    rows = []
    for name, messages in corpora().items():
        texts = [build_search_text(subject, body, "Jeanne Dubois", "jeanne.dubois@chu.fr", []) for subject, body
                 in messages]
        lexemes, sql = asyncio.run(lexemes_of(url, texts))
        of_lexemes0 = variants()["256 bits (0012)"][0]
        assert all(of_lexemes0(lx) == _sql_bits(s) for lx, s in zip(lexemes, sql, strict=True)), \
            "the Python signature differs from search_signature()"
        row: dict[str, Any] = {"corpus": name, "messages": len(messages),
                               "words": round(statistics.mean(len(t.split()) for t in texts)),
                               "lexemes": round(statistics.mean(len(lx) for lx in lexemes)),
                               "short_lexemes": round(statistics.mean(
                                   sum(len(x) < SIGNATURE_PREFIX for x in lx) for lx in lexemes), 1)}
        # The benchmark's words, and words drawn from the corpus's own vocabulary (four letters or
        # more: shorter query words set no bit), so that no single word's collisions decide.
        vocabulary = sorted({x for lx in lexemes for x in lx if len(x) >= SIGNATURE_PREFIX and x.isalnum()
                             and not x.startswith("zzmbx")})
        words = list(QUERY_WORDS) + random.Random(3).sample(vocabulary, min(RANDOM_WORDS, len(vocabulary)))
        row["query_words"] = len(words)
        for vname, (of_lex, of_word, width) in variants().items():
            sigs = [of_lex(lx) for lx in lexemes]
            fills = [len(s) / width for s in sigs]
            fps = []
            for w in words:
                bits = of_word(w)
                cand = sum(bits <= s for s in sigs) / len(sigs)
                match = sum(any(x.startswith(w) for x in lx) for lx in lexemes) / len(sigs)
                if match < 1:
                    fps.append((cand - match) / (1 - match))
            row[vname] = {"fill": round(statistics.mean(fills), 3),
                          "fill_p90": round(sorted(fills)[int(0.9 * len(fills))], 3),
                          "false_positives": round(statistics.mean(fps), 3)}
        print(json.dumps(row, ensure_ascii=False), flush=True)
        rows.append(row)
    return rows


def report(meta: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    names = list(variants())
    out = header("Search signatures on messages of realistic length (PostgreSQL, migration 0012)", meta)
    out += ["Share of the signature's bits set (mean, p90) and the filter's false-positive rate for one query",
            f"word (mean over the benchmark's {len(QUERY_WORDS)} words, {', '.join(QUERY_WORDS)}, and",
            f"{RANDOM_WORDS} words drawn from each corpus's own vocabulary): the share of the messages",
            "without the word that the signature keeps as candidates (each is then read and tested).", "",
            "| corpus | messages | words | lexemes (< 4 chars) | " + " | ".join(names) + " |",
            "|---|---:|---:|---:|" + "---|" * len(names)]
    for r in rows:
        cells = [f"{r[n]['fill']:.0%} (p90 {r[n]['fill_p90']:.0%}), FP {r[n]['false_positives']:.0%}" for n in names]
        out.append(f"| {r['corpus']} | {r['messages']} | {r['words']} | {r['lexemes']} ({r['short_lexemes']}) | "
                   + " | ".join(cells) + " |")
    return [*out, "", *meta.get("analysis", [])]


def main() -> None:
    import sqlalchemy.ext.asyncio  # noqa: F401

    meta = new_meta()
    with tempfile.TemporaryDirectory() as tmp, fresh_database("postgresql", Path(tmp)) as url:
        rows = measure(url)
    old = RESULTS / "signature_fill.json"
    if old.exists():
        meta["analysis"] = json.loads(old.read_text())["meta"].get("analysis", [])
    write_results("signature_fill", meta, report(meta, rows), {"rows": rows})
    print("\n".join(report(meta, rows)))


if __name__ == "__main__":
    main()
