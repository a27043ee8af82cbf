"""« Apparaître absent »: the automatic answer of an absent professional in conversations.

Once per absence in each conversation (not again while its last word there is that answer), and
never to another automatic answer, so two absent people do not answer each other forever.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from monsisra.domain.authorship import person_name
from monsisra.domain.model import MailboxKind
from monsisra.domain.text import clean_multiline
from monsisra.services.core import Actor, Core
from monsisra.services.errors import Invalid
from monsisra.store.conversations import AbsenceSetting, ConversationMessage, ConversationParticipant
from monsisra.store.models import Account, Mailbox

MAX_MESSAGE = 2000


@dataclass(frozen=True)
class Reply:
    mailbox_id: int
    address: str
    account_id: int
    name: str
    text: str


async def replies(s: AsyncSession, conversation_id: int, poster_mailbox: int) -> list[Reply]:
    """The automatic answers a new message in this conversation calls for."""
    rows = (await s.execute(
        sa.select(Mailbox.id, Mailbox.address, Account, AbsenceSetting.message)
        .join(ConversationParticipant, ConversationParticipant.mailbox_id == Mailbox.id)
        .join(Account, Account.id == Mailbox.owner_account_id)
        .join(AbsenceSetting, AbsenceSetting.account_id == Account.id)
        .where(ConversationParticipant.conversation_id == conversation_id,
               ConversationParticipant.left_at.is_(None), Mailbox.kind == MailboxKind.PER,
               Mailbox.id != poster_mailbox, Account.appear_absent.is_(True), AbsenceSetting.autoreply.is_(True),
               AbsenceSetting.message != ""))).all()
    out = []
    for mailbox_id, address, account, text in rows:
        last_kind = await s.scalar(sa.select(ConversationMessage.kind).where(
            ConversationMessage.conversation_id == conversation_id, ConversationMessage.mailbox_id == mailbox_id)
            .order_by(ConversationMessage.id.desc()).limit(1))
        if last_kind == "auto":
            continue
        name = person_name(account.civility, account.first_name, account.last_name)
        out.append(Reply(mailbox_id, address, account.id, f"{name} (réponse automatique)", text))
    return out


async def settings_of(core: Core, actor: Actor) -> dict:
    """``{appear_absent, autoreply, message}`` of the actor."""
    async with core.read() as s:
        account = await s.get(Account, actor.account_id)
        row = await s.get(AbsenceSetting, actor.account_id)
    return {"appear_absent": bool(account and account.appear_absent), "autoreply": bool(row and row.autoreply),
            "message": row.message if row else ""}


async def set_autoreply(core: Core, actor: Actor, *, autoreply: bool, message: str | None = None) -> dict:
    """Choose whether an absence answers new conversation messages, and with which text."""
    text = None if message is None else clean_multiline(message).strip()
    if text is not None and len(text) > MAX_MESSAGE:
        raise Invalid(f"message d'absence trop long (au plus {MAX_MESSAGE} caractères)")
    async with core.write() as tx:
        row = await tx.session.get(AbsenceSetting, actor.account_id)
        if row is None:
            row = AbsenceSetting(account_id=actor.account_id, autoreply=False, message="")
            tx.session.add(row)
        if text is not None:
            row.message = text
        if autoreply and not row.message:
            raise Invalid("écrivez le message d'absence avant d'activer la réponse automatique")
        row.autoreply = autoreply
    return await settings_of(core, actor)
