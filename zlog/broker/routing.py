"""Which topic an event goes to: its explicit topic, else its class's topic.

Routing is a table lookup, kept as data so the receive loop indexes a tuple
per event instead of calling a function.
"""

from __future__ import annotations

from dataclasses import dataclass

from zlog.protocol import Event, EventClass

__all__ = ["Routes"]


@dataclass(frozen=True, slots=True)
class Routes:
    """The topic of each event class."""

    application: str
    audit: str
    security: str

    @property
    def by_class(self) -> tuple[str | None, str, str, str]:
        """Topics indexed by ``EventClass`` value; TOPIC events carry their own."""
        table: list[str | None] = [None] * len(EventClass)
        table[EventClass.APPLICATION] = self.application
        table[EventClass.AUDIT] = self.audit
        table[EventClass.SECURITY] = self.security

        return tuple(table)

    def topic_for(self, event: Event) -> str:
        """The topic ``event`` is published to."""
        return event.topic or self.by_class[event.event_class]
