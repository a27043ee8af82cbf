"""Who wrote or read it in a shared mailbox (issue 13 item 3): the line everyone reads, built
from the acting account and the mailbox it acted in — a person's name, never a login."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from monsisra.domain.authorship import author_label, owner_short, person_name
from monsisra.domain.model import Access
from monsisra.services.core import Actor
from monsisra.store.models import Account, Mailbox


async def author_line(s: AsyncSession, actor: Actor, mailbox_id: int, access: str) -> str:
    """« Dr Bruno PETIT pour Avis Hémostase », « Sophie BLANC, secrétariat, pour le Dr MARTIN »,
    or the person's name alone in their own mailbox."""
    me = await s.get(Account, actor.account_id)
    mailbox = await s.get(Mailbox, mailbox_id)
    person = person_name(me.civility, me.first_name, me.last_name, fallback=mailbox.display_name if mailbox else "")
    if mailbox is None or access == Access.OWNER:
        return person
    owner = await s.get(Account, mailbox.owner_account_id) if mailbox.owner_account_id else None
    short = owner_short(owner.civility, owner.last_name, mailbox.display_name) if owner else mailbox.display_name
    return author_label(person, access, mailbox.display_name, owner=short, secretary=not me.national_id)


async def reader_name(s: AsyncSession, account_id: int) -> str:
    account = await s.get(Account, account_id)
    return person_name(account.civility, account.first_name, account.last_name, fallback=account.username) \
        if account else ""
