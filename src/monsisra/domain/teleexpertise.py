"""Tele-expertise rules without I/O (DESIGN §5): states and the transitions each side may make,
who may request and who may answer (profession codes), the numéro AM (9 digits, Luhn key) and
the two billing acts (RQD 10 € to the requester, TE2 20 € to the expert who answered).
"""

from __future__ import annotations

import unicodedata

STATES = ("submitted", "elements_requested", "answered", "closed", "declined", "cancelled")
STATE_LABELS = {"submitted": "Soumise", "elements_requested": "Éléments demandés", "answered": "Répondue",
                "closed": "Clôturée", "declined": "Refusée", "cancelled": "Annulée"}
ACTION_LABELS = {"assign": "prendre en charge", "request_elements": "demander des éléments",
                 "provide_elements": "fournir des éléments", "answer": "répondre", "close": "clôturer",
                 "decline": "refuser", "cancel": "annuler"}

# action → (side allowed to do it, states it may start from, state it leads to; None: unchanged)
TRANSITIONS: dict[str, tuple[str, tuple[str, ...], str | None]] = {
    "assign": ("expert", ("submitted", "elements_requested"), None),
    "request_elements": ("expert", ("submitted",), "elements_requested"),
    "provide_elements": ("requester", ("elements_requested",), "submitted"),
    "answer": ("expert", ("submitted",), "answered"),
    "decline": ("expert", ("submitted", "elements_requested"), "declined"),
    "cancel": ("requester", ("submitted", "elements_requested"), "cancelled"),
    "close": ("either", ("answered",), "closed"),
}

MAX_PER_PATIENT_YEAR = 4
RQD_EUR = "10.00"
TE2_EUR = "20.00"

# Profession codes (RPPS, DESIGN §5) and the labels accounts carry when they have no code.
REQUESTER_CODES = {"10": "médecin", "50": "sage-femme", "60": "infirmier", "70": "masseur-kinésithérapeute",
                   "80": "pédicure-podologue", "91": "orthophoniste"}
EXPERT_CODES = {"10": "médecin", "50": "sage-femme"}
_LABEL_CODES = {"medecin": "10", "sage-femme": "50", "infirmier": "60", "infirmiere": "60",
                "masseur-kinesitherapeute": "70", "kinesitherapeute": "70", "pedicure-podologue": "80",
                "orthophoniste": "91", "pharmacien": "21", "chirurgien-dentiste": "40"}


def _fold(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFD", text or "") if not unicodedata.combining(c)).lower().strip()


def profession_code(code: str | None, label: str | None) -> str | None:
    """The RPPS profession code of an account: its code, else one read from its label."""
    if code:
        return code.strip()
    return _LABEL_CODES.get(_fold(label or ""))


def may_request(code: str | None) -> bool:
    return code in REQUESTER_CODES


def may_answer(code: str | None) -> bool:
    return code in EXPERT_CODES


def requesters_text() -> str:
    return "médecins, sages-femmes, infirmiers, masseurs-kinésithérapeutes, pédicures-podologues et orthophonistes"


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        n = int(ch)
        if i % 2 == 1:
            n *= 2
            if n > 9:
                n -= 9
        total += n
    return total % 10 == 0


def luhn_key(first8: str) -> int:
    """The Luhn key completing ``first8`` into a valid 9-digit numéro AM."""
    return next(k for k in range(10) if luhn_ok(first8 + str(k)))


def billing_number_error(value: str | None) -> str | None:
    """Why ``value`` is not a numéro AM (French), or None when it is one."""
    v = "".join((value or "").split())
    if not v:
        return "numéro AM (facturation) obligatoire"
    if len(v) != 9 or not v.isdigit():
        return "le numéro AM compte 9 chiffres"
    if not luhn_ok(v):
        return "numéro AM invalide : clé de Luhn incorrecte"
    return None


def normalize_billing_number(value: str) -> str:
    return "".join((value or "").split())


def next_state(action: str, state: str) -> str | None:
    """The state after ``action`` from ``state``, or raise ValueError (French) when not allowed."""
    _side, froms, to = TRANSITIONS[action]
    if state not in froms:
        raise ValueError(f"impossible de {ACTION_LABELS[action]} une téléexpertise à l'état "
                         f"« {STATE_LABELS.get(state, state)} »")
    return to or state


def awaited(state: str) -> str | None:
    """Whose move it is: "expert", "requester" or None (finished)."""
    return {"submitted": "expert", "elements_requested": "requester", "answered": "requester"}.get(state)
