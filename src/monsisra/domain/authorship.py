"""Who wrote it, as everyone reads it (issue 13 item 3): a person's name, never a login, and for
whom they wrote when it was not their own mailbox.

« Dr Bruno PETIT pour Avis Hémostase » (a member writing from a service mailbox), « Sophie BLANC,
secrétariat, pour le Dr MARTIN » (a delegate in a professional's mailbox).
"""

from __future__ import annotations


def person_name(civility: str, first_name: str, last_name: str, fallback: str = "") -> str:
    """« Dr Alice MARTIN »; ``fallback`` (a mailbox's name) when the account has no name."""
    name = " ".join(p for p in ((civility or "").strip(), (first_name or "").strip(), (last_name or "").upper().strip())
                    if p)
    return name or fallback


def owner_short(civility: str, last_name: str, mailbox_name: str) -> str:
    """How a delegate names the mailbox owner: « le Dr MARTIN », else the mailbox's name."""
    if (civility or "").strip().lower() in ("dr", "dr.", "docteur") and last_name:
        return f"le Dr {last_name.upper()}"
    if (civility or "").strip().lower() in ("pr", "pr.", "professeur") and last_name:
        return f"le Pr {last_name.upper()}"
    return mailbox_name


def author_label(person: str, access: str, mailbox_name: str, *, owner: str = "",
                 secretary: bool = False) -> str:
    """The author line of a message written by ``person`` with ``access`` (owner, member,
    delegate) to the mailbox named ``mailbox_name``; ``owner``: the owner as :func:`owner_short`
    names them; ``secretary``: the delegate is not a health professional (no national id)."""
    if access == "owner" or not mailbox_name:
        return person
    if access == "delegate":
        return f"{person}{', secrétariat,' if secretary else ''} pour {owner or mailbox_name}"
    return f"{person} pour {mailbox_name}"
