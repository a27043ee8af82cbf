"""Messages: send (local and external recipients), drafts, replies, lists, reading, flags, the bin,
counts, search and receipts.

Each public function validates first, writes in one transaction, and emits its events only after
commit. A message is stored once; per-mailbox state lives in ``deliveries`` (one row per
mailbox × message). One module per concern; the functions other layers call are re-exported here.
"""

from monsisra.domain.html import sanitize_html
from monsisra.services import mailboxes
from monsisra.services.messages.compose import (
    MAX_BODY,
    MAX_RECIPIENTS,
    MAX_SUBJECT,
    OUTSIDE_TRUST,
    Compose,
    PatientRef,
    check_address,
    reply_category,
    send,
)
from monsisra.services.messages.placement import (
    MAILBOX_TOKEN,
    Placement,
    allocate_uids,
    build_search_text,
    bump_modseq,
    deliver,
    mailbox_tokens,
    new_message_id,
    place,
    place_sync,
)
from monsisra.services.messages.reading import PAGE_MAX, access_kind, get, list_messages, thread
from monsisra.services.messages.receipts import receipts, require_sender_access
from monsisra.services.messages.states import counts, purge_trash, restore, tally, trash, update_state
from monsisra.services.patients import patient_dict

__all__ = ["MAILBOX_TOKEN", "MAX_BODY", "MAX_RECIPIENTS", "MAX_SUBJECT", "OUTSIDE_TRUST", "PAGE_MAX", "Compose",
           "PatientRef", "Placement", "access_kind", "allocate_uids", "build_search_text", "bump_modseq",
           "check_address", "counts", "deliver", "get", "list_messages", "mailbox_tokens", "mailboxes",
           "new_message_id", "patient_dict", "place", "place_sync", "purge_trash", "receipts", "reply_category",
           "require_sender_access",
           "restore", "sanitize_html", "send", "tally", "thread", "trash", "update_state"]
