"""Real-time events, published after commit: in-process bus, Redis pub/sub when configured."""

from monsisra.events.bus import (
    MAILBOX_GRANTED,
    MAILBOX_REVOKED,
    SESSION_ENDED,
    Event,
    EventBus,
    Subscription,
    TooManySubscriptions,
    make_bus,
)

__all__ = ["MAILBOX_GRANTED", "MAILBOX_REVOKED", "SESSION_ENDED", "Event", "EventBus", "Subscription",
           "TooManySubscriptions", "make_bus"]
