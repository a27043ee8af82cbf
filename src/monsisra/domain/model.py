"""The enumerations of the vocabulary (DESIGN §2, §4)."""

from __future__ import annotations

from enum import StrEnum


class MailboxKind(StrEnum):
    PER = "PER"
    ORG = "ORG"
    APP = "APP"
    CAB = "CAB"


class Access(StrEnum):
    OWNER = "owner"
    MEMBER = "member"
    DELEGATE = "delegate"


class Category(StrEnum):
    LETTER = "letter"
    CONVERSATION = "conversation"
    MSSANTE = "mssante"
    PATIENT = "patient"
    TELEEXPERTISE = "teleexpertise"
    SUPPORT = "support"
    RESULT = "result"
    EVENT = "event"
    DGS_URGENT = "dgs_urgent"


class View(StrEnum):
    INBOX = "inbox"
    UNREAD = "unread"
    ALL = "all"
    SENT = "sent"
    DRAFTS = "drafts"
    FAVORITES = "favorites"
    TODO = "todo"
    ARCHIVED = "archived"
    TRASH = "trash"  # the bin (corbeille): deleted, restorable for 30 days


class Role(StrEnum):
    """How a message sits in a mailbox: received, sent from it, or a draft of it."""

    IN = "in"
    SENT = "sent"
    DRAFT = "draft"


CATEGORY_LABELS = {
    Category.CONVERSATION: "Conversations",
    Category.LETTER: "Courriers",
    Category.MSSANTE: "MSSanté",
    Category.PATIENT: "Échanges patient",
    Category.TELEEXPERTISE: "Téléexpertises",
    Category.SUPPORT: "Demandes d'appui",
    Category.RESULT: "Résultats",
    Category.EVENT: "Évènements",
    Category.DGS_URGENT: "DGS Urgent",
}
