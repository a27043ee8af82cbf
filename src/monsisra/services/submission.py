"""SMTP submission: a message written by a mail client or practice software, sent by an
authenticated account through the same path as the web page (``messages.send``: local delivery,
the MSSanté trust space, the outbox for other operators, a copy in Envoyés).

The From header must name a mailbox the account may send from; the envelope recipients are the
recipients (those absent from To/Cc travel as Bcc). Attachments, an IHE_XDM archive included,
are kept as they came.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import sqlalchemy as sa

from monsisra.domain import delegation
from monsisra.domain.addresses import normalize_address
from monsisra.domain.delegation import Right
from monsisra.domain.mail import mime
from monsisra.domain.model import Category
from monsisra.services import attachments, audit, messages
from monsisra.services.core import Actor, Core
from monsisra.services.errors import Forbidden, Invalid
from monsisra.store.models import Mailbox, MailboxAccess

FROM_REFUSED = "l'adresse d'expédition {address} n'est pas une boîte aux lettres que vous pouvez utiliser"


async def sending_mailbox(core: Core, actor: Actor, address: str) -> int:
    """The id of the mailbox at ``address`` if the account may send from it; else Forbidden."""
    normalised = normalize_address(address or "") or (address or "").strip().lower()
    async with core.read() as s:
        row = (await s.execute(
            sa.select(Mailbox.id, MailboxAccess.rights).join(MailboxAccess, MailboxAccess.mailbox_id == Mailbox.id)
            .where(Mailbox.address == normalised, MailboxAccess.account_id == actor.account_id,
                   Mailbox.active.is_(True)))).first()
    if row is None or Right.SEND not in delegation.decode(row.rights):
        await audit.record_now(core, [audit.entry(actor.account_id, "submission.refused", client=actor.client,
                                                  detail={"from": (address or "")[:254]})])
        raise Forbidden(FROM_REFUSED.format(address=normalised or "(vide)"))
    return row.id


async def submit(core: Core, actor: Actor, mail_from: str, rcpt_tos: list[str], raw: bytes) -> dict[str, Any]:
    """Send a submitted message; returns it as the sending mailbox sees it."""
    try:
        parsed = await asyncio.to_thread(mime.parse, raw)
    except mime.MailError as exc:
        raise Invalid(str(exc)) from None
    mailbox_id = await sending_mailbox(core, actor, parsed.sender_address)
    if mail_from and normalize_address(mail_from) != normalize_address(parsed.sender_address):
        await sending_mailbox(core, actor, mail_from)  # the envelope sender must be usable too
    to = [a for _, a in parsed.to]
    cc = [a for _, a in parsed.cc]
    named = {normalize_address(a) for a in to + cc}
    bcc = [r for r in rcpt_tos if normalize_address(r) not in named]
    # Only envelope recipients receive it (RFC 6409): a header address not in the envelope is kept
    # in the header only when it is also a recipient; the usual client sends all of them.
    wanted = {normalize_address(r) for r in rcpt_tos}
    to = [a for a in to if normalize_address(a) in wanted]
    cc = [a for a in cc if normalize_address(a) in wanted]
    ids = await attachments.store_parts(core, actor, parsed.attachments)
    req = messages.Compose(from_mailbox=mailbox_id, to=to, cc=cc, bcc=bcc, subject=parsed.subject,
                           body=parsed.text, html=parsed.html, category=Category.LETTER, attachments=ids,
                           receipt_requested=bool(parsed.notify_to), message_id=client_message_id(parsed))
    return await messages.send(core, actor, req)


_MESSAGE_ID = re.compile(r"^<[^<>\s@]{1,200}@[^<>\s@]{1,200}>$")


def client_message_id(parsed: mime.ParsedMail) -> str | None:
    """The client's Message-ID when well formed, kept as the message's (RFC 6409 §8.3): its own
    copy saved in Envoyés afterwards (IMAP APPEND) is then recognised, not stored twice."""
    value = (parsed.message_id or "").strip()
    if value and not value.startswith("<"):
        value = f"<{value}>"
    return value if len(value) <= 255 and _MESSAGE_ID.match(value) else None
