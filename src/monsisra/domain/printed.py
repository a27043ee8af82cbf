"""What a printed letter's text says about its patient and its addressees: INS, birth date and
name of the patient, professionals named in it. Suggestions only — the user confirms them."""

from __future__ import annotations

import re
from dataclasses import dataclass

from monsisra.domain.ins import is_valid_ins
from monsisra.domain.text import fold

# A NIR as printed: 15 characters, often grouped "1 85 05 63 113 005 42" (or "2A" in Corsica).
_INS = re.compile(r"(?<![0-9A-Za-z])([1-8])[ .]?(\d{2})[ .]?(\d{2})[ .]?(\d{2}|2[AB])[ .]?(\d{3})[ .]?(\d{3})"
                  r"[ .]?(\d{2})(?![0-9])")
_BIRTH = re.compile(r"(?:n[ée]e?(?:\s*\(e\))?|naissance|DDN)\s*(?:le|:)?\s*:?\s*(\d{1,2})[/.-](\d{1,2})[/.-](\d{4})",
                    re.IGNORECASE)
_UPPER = "A-ZÀÂÄÇÉÈÊËÎÏÔÖÙÛÜŸ"
_LOWER = "a-zàâäçéèêëîïôöùûüÿ"
_NAME = re.compile(
    rf"(?i:patiente?|concerne|nom du patient|nom)[ \t]*:[ \t]*(?:M\.|Mme|Mr|Monsieur|Madame)?[ \t]*"
    rf"([{_UPPER}][{_UPPER}'\- ]*[{_UPPER}])[ \t]+([{_UPPER}][{_LOWER}']+(?:[ \-][{_UPPER}][{_LOWER}']+)*)")
_CIVIL = re.compile(rf"(?:Monsieur|Madame|M\.|Mme)[ \t]+([{_UPPER}][{_UPPER}'\-]+)[ \t]+([{_UPPER}][{_LOWER}'\-]+)")


@dataclass
class PatientGuess:
    ins: str | None = None
    family_name: str = ""
    given_names: str = ""
    birth_date: str | None = None  # ISO

    def empty(self) -> bool:
        return not (self.ins or self.family_name or self.birth_date)

    def as_dict(self) -> dict:
        return {"ins": self.ins, "family_name": self.family_name, "given_names": self.given_names,
                "birth_date": self.birth_date}


def guess_patient(text: str) -> PatientGuess:
    """The patient the letter is about, from its first INS with a valid key, the first birth
    date after « né(e) le » / « naissance », and the name after « Patient : » (or a civility)."""
    guess = PatientGuess()
    for m in _INS.finditer(text):
        candidate = "".join(m.groups()).upper()
        if is_valid_ins(candidate):
            guess.ins = candidate
            break
    m = _BIRTH.search(text)
    if m:
        day, month, year = int(m.group(1)), int(m.group(2)), int(m.group(3))
        if 1 <= day <= 31 and 1 <= month <= 12 and 1880 <= year <= 2100:
            guess.birth_date = f"{year:04d}-{month:02d}-{day:02d}"
    m = _NAME.search(text) or _CIVIL.search(text)
    if m:
        guess.family_name = " ".join(m.group(1).split()).upper()
        guess.given_names = " ".join(m.group(2).split())
    return guess


def names_in(text: str, people: list[tuple[int, str, str]]) -> list[int]:
    """The ids of ``people`` ([(id, first name, last name)]) whose names appear in the text, in
    either order, as whole words, accents and case aside; in order of first appearance."""
    folded = f" {re.sub(r'[^a-z0-9]+', ' ', fold(text))} "
    found: list[tuple[int, int]] = []
    for pid, first, last in people:
        f = re.sub(r"[^a-z0-9]+", " ", fold(first)).strip()
        la = re.sub(r"[^a-z0-9]+", " ", fold(last)).strip()
        if not f or not la or len(la) < 2:
            continue
        positions = [p for p in (folded.find(f" {f} {la} "), folded.find(f" {la} {f} ")) if p >= 0]
        if positions:
            found.append((min(positions), pid))
    return [pid for _, pid in sorted(found)]
