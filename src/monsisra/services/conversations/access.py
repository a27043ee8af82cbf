"""Who may see and write in a conversation, and as whom.

An account sees a conversation when it may use one of its participant mailboxes (owner, member
of a service mailbox, delegate); everyone else gets 404, as for mail. A mailbox that left keeps
its history up to its leaving, and may no longer write. A delegate writes only with the right to
send on the owner's behalf.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from monsisra.domain import delegation
from monsisra.domain.delegation import Right
from monsisra.domain.model import Access
from monsisra.services import authorship
from monsisra.services.core import Actor
from monsisra.services.errors import Conflict, Forbidden, NotFound
from monsisra.store.conversations import Conversation, ConversationParticipant
from monsisra.store.models import Mailbox, MailboxAccess

NOT_FOUND = "conversation introuvable"
CLOSED = "cette conversation est close : on ne peut plus y écrire"
_ORDER = {Access.OWNER: 0, Access.MEMBER: 1, Access.DELEGATE: 2}


@dataclass(frozen=True)
class Participation:
    """The actor's place in a conversation through one mailbox it may use."""

    participant_id: int
    mailbox_id: int
    address: str
    mailbox_name: str
    access: str
    rights: frozenset[Right]
    left_at: datetime | None
    last_read_message_id: int | None

    @property
    def active(self) -> bool:
        return self.left_at is None


async def participations(s: AsyncSession, actor: Actor, conversation_id: int) -> list[Participation]:
    """Every participant mailbox of the conversation the actor may use, best first (own
    mailbox, then services, then delegations; present before departed)."""
    rows = (await s.execute(
        sa.select(ConversationParticipant, Mailbox.address, Mailbox.display_name, MailboxAccess.access,
                  MailboxAccess.rights)
        .join(Mailbox, Mailbox.id == ConversationParticipant.mailbox_id)
        .join(MailboxAccess, MailboxAccess.mailbox_id == ConversationParticipant.mailbox_id)
        .where(ConversationParticipant.conversation_id == conversation_id,
               MailboxAccess.account_id == actor.account_id))).all()
    found = [Participation(p.id, p.mailbox_id, address, name, access, delegation.decode(rights), p.left_at,
                           p.last_read_message_id) for p, address, name, access, rights in rows]
    found.sort(key=lambda p: (not p.active, _ORDER.get(p.access, 3), p.mailbox_id))
    return found


async def require(s: AsyncSession, actor: Actor, conversation_id: int, *, write: bool = False,
                  from_mailbox: int | None = None, lock: bool = False,
                  closed: str = CLOSED) -> tuple[Conversation, Participation]:
    """The conversation and the actor's participation, or the French error: 404 to outsiders,
    403 to one who left (or a delegate without the right to send) when writing, 409 when it is
    closed and ``write``."""
    stmt = sa.select(Conversation).where(Conversation.id == conversation_id)
    if lock and s.bind.dialect.name != "sqlite":
        stmt = stmt.with_for_update()
    conversation = await s.scalar(stmt)
    mine = await participations(s, actor, conversation_id) if conversation is not None else []
    if from_mailbox is not None:
        mine = [p for p in mine if p.mailbox_id == from_mailbox]
    if conversation is None or not mine:
        raise NotFound(NOT_FOUND)
    best = mine[0]
    if write:
        if not best.active:
            raise Forbidden("vous avez quitté cette conversation : vous ne pouvez plus y écrire")
        if conversation.state != "open":
            raise Conflict(closed)
        if Right.SEND not in best.rights:
            raise Forbidden("votre délégation sur cette boîte ne permet pas d'écrire de la part du titulaire")
    return conversation, best


async def author(s: AsyncSession, actor: Actor, mailbox_id: int, access: str) -> str:
    """The author line of what the actor writes through this mailbox (never a login name)."""
    return await authorship.author_line(s, actor, mailbox_id, access)


async def audience(s: AsyncSession, conversation_id: int) -> tuple[list[int], list[int]]:
    """(accounts, mailboxes) of the present participants: who hears the conversation's events."""
    rows = (await s.execute(
        sa.select(ConversationParticipant.mailbox_id, MailboxAccess.account_id)
        .join(MailboxAccess, MailboxAccess.mailbox_id == ConversationParticipant.mailbox_id, isouter=True)
        .where(ConversationParticipant.conversation_id == conversation_id,
               ConversationParticipant.left_at.is_(None)))).all()
    return sorted({a for _, a in rows if a is not None}), sorted({m for m, _ in rows})
