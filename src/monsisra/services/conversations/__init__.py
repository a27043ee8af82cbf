"""Conversations (chat, not mail): live threads between professionals' and services' mailboxes,
optionally about a patient. Start, post (text, files, photos cleaned of their metadata), add
participants (who see the whole history), leave, read state per participant (« Vu par … »),
typing, and closing with a PDF summary letter delivered to every participant.

One module per concern; the functions other layers call are re-exported here. 13b's support
requests open their conversation with :func:`start`.
"""

from monsisra.services.conversations.absence import set_autoreply, settings_of
from monsisra.services.conversations.access import NOT_FOUND, participations
from monsisra.services.conversations.summary import close, render_pdf, summary_title
from monsisra.services.conversations.views import consult, get, list_conversations, unread_total
from monsisra.services.conversations.writing import (
    MAX_BODY,
    MAX_TITLE,
    add_participants,
    leave,
    mark_read,
    post,
    start,
    typing,
)

__all__ = ["MAX_BODY", "MAX_TITLE", "NOT_FOUND", "add_participants", "close", "consult", "get", "leave",
           "list_conversations", "mark_read", "participations", "post", "render_pdf", "set_autoreply", "settings_of",
           "start", "summary_title", "typing", "unread_total"]
