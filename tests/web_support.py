"""Helpers of the web tests: a message carrying hostile HTML, stored as received."""

from __future__ import annotations

import email
import email.policy

import sqlalchemy as sa

from monsisra.domain.clock import utcnow
from monsisra.domain.model import Category, Role
from monsisra.domain.text import preview
from monsisra.services import messages
from monsisra.store.models import Mailbox, Message, Recipient
from tests.support import FIXTURES


def insert_hostile_message(server, username: str) -> tuple[int, int, str]:
    """Store ``bad_html_script.eml`` in the user's mailbox with its HTML *unsanitised*, as the
    worst case of a faulty intake path: the page must still run nothing."""
    parsed = email.message_from_bytes((FIXTURES / "bad_html_script.eml").read_bytes(), policy=email.policy.default)
    subject = str(parsed["Subject"])
    html = parsed.get_body(("html",)).get_content()
    text = parsed.get_body(("plain",)).get_content()
    address = f"{username}@{server.settings.domain}"

    async def store() -> tuple[int, int]:
        core = server.core
        async with core.write() as tx:
            box = await tx.session.scalar(sa.select(Mailbox).where(Mailbox.address == address))
            now = utcnow()
            msg = Message(message_id=messages.new_message_id("evil.mssante.fr"), sender_address="x@evil.mssante.fr",
                          sender_name="", subject=subject, body=text, html=html, preview=preview(text),
                          category=Category.MSSANTE, created_at=now, sent_at=now, origin="smtp",
                          search_text=messages.build_search_text(subject, text, "", "x@evil.mssante.fr", []))
            tx.session.add(msg)
            await tx.session.flush()
            msg.thread_id = msg.id
            tx.session.add(Recipient(message_id=msg.id, kind="to", address=address, display_name=box.display_name,
                                     mailbox_id=box.id, status="delivered"))
            await messages.deliver(tx, msg, [(box.id, Role.IN)])
            return box.id, msg.id

    mailbox_id, message_id = server.call(store)
    return mailbox_id, message_id, subject
