"""The rule a chosen password must meet, explained in French (NIST SP 800-63B in spirit).

Length first (12 characters at least: a passphrase of a few words passes easily), no composition
rule, and an estimate of how fast it would be guessed (zxcvbn: dictionaries, keyboard walks,
sequences, repeats, dates, l33t), fed with the person's own names and the French words that
people put in passwords, which zxcvbn's English lists do not know. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable

from zxcvbn import zxcvbn

MIN_LENGTH = 12
MAX_LENGTH = 256
MIN_SCORE = 3  # zxcvbn: 3 = "safely unguessable: moderate protection from offline slow-hash attacks"

RULE = ("Au moins 12 caractères. Une phrase de passe de quelques mots sans lien avec vous est facile à "
        "retenir et difficile à deviner. Évitez votre nom, votre identifiant, les mots de passe courants, "
        "les dates et les suites de touches (azerty, 123456).")

# French words (and local ones) common in passwords; zxcvbn ranks them like its own dictionaries.
FRENCH_WORDS = (
    "motdepasse", "azerty", "azertyuiop", "qsdfghjklm", "wxcvbn", "bonjour", "bonsoir", "salut", "coucou",
    "soleil", "doudou", "chouchou", "loulou", "nounours", "jetaime", "amour", "mamour", "bisous", "chaton",
    "chocolat", "princesse", "papa", "maman", "famille", "france", "paris", "marseille", "lyon", "toulouse",
    "clermont", "auvergne", "aurillac", "cantal", "vichy", "thiers", "medecin", "docteur", "sante", "hopital",
    "clinique", "cabinet", "secretariat", "secretaire", "infirmiere", "infirmier", "patient", "urgence",
    "pharmacie", "monsisra", "mssante", "messagerie", "sisra", "secret", "bienvenue", "utilisateur",
    "nouveau", "changeme", "vacances", "printemps", "automne", "hiver", "janvier", "fevrier", "mars",
    "avril", "juin", "juillet", "aout", "septembre", "octobre", "novembre", "decembre",
)

_HINTS = {
    "dictionary": "il repose sur un mot ou un mot de passe courant",
    "spatial": "c'est une suite de touches voisines du clavier",
    "sequence": "c'est une suite de caractères (abcd, 1234)",
    "repeat": "il répète les mêmes caractères",
    "date": "une date ou une année se devine facilement",
    "regex": "une année ou une suite de chiffres se devine facilement",
}


class WeakPassword(ValueError):
    """The password does not meet the rule; ``str()`` says why, in French."""


def check_strength(password: str, personal: Iterable[str] = ()) -> None:
    """Raise :class:`WeakPassword` (a French reason followed by the rule) unless ``password``
    is long enough and hard enough to guess; ``personal``: the username, names, e-mail…"""
    if len(password) < MIN_LENGTH:
        raise WeakPassword(f"mot de passe trop court ({len(password)} caractère{'s' if len(password) > 1 else ''}) "
                           f"— {RULE}")
    if len(password) > MAX_LENGTH:
        raise WeakPassword(f"mot de passe trop long (au plus {MAX_LENGTH} caractères)")
    if password.strip() != password or not password.isprintable():
        raise WeakPassword("le mot de passe ne peut ni commencer ni finir par une espace, ni contenir de "
                           "caractère de contrôle")
    words = _personal_words(personal)
    folded = password.lower()
    if any(len(w) >= 4 and w in folded for w in words):
        raise WeakPassword(f"le mot de passe ne doit contenir ni votre identifiant ni votre nom — {RULE}")
    # zxcvbn's cost grows quickly with length; what lies past 100 characters adds no weakness.
    result = zxcvbn(password[:100], user_inputs=[*words, *FRENCH_WORDS])
    if result["score"] < MIN_SCORE:
        raise WeakPassword(f"mot de passe trop facile à deviner : {_hint(result)} — {RULE}")


def _personal_words(values: Iterable[str]) -> list[str]:
    out: set[str] = set()
    for value in values:
        value = (value or "").lower()
        if not value:
            continue
        out.add(value)
        for part in value.replace("@", " ").replace(".", " ").replace("-", " ").replace("_", " ").split():
            out.add(part)
    return sorted(w for w in out if len(w) >= 3)


def _hint(result: dict) -> str:
    patterns = [m.get("pattern") for m in result.get("sequence", [])]
    for pattern in ("dictionary", "spatial", "sequence", "repeat", "date", "regex"):
        if pattern in patterns:
            return _HINTS[pattern]
    return "il est trop court ou trop simple pour résister à une attaque"
