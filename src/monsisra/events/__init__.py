"""Real-time events, published after commit: in-process bus, Redis pub/sub when configured."""

from monsisra.events.bus import Event, EventBus, make_bus

__all__ = ["Event", "EventBus", "make_bus"]
