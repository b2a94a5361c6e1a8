"""The dead-letter file: events Kafka will never take, kept with the reason.

When Kafka refuses a batch for a reason that will not pass (a record too
large, no authorization, a topic that does not exist and may not be
created), retrying would hold the partition forever and spooling would only
postpone the refusal. The broker writes such events here instead: one JSON
object per line, beside the spool, so an operator can see what was refused,
why, and publish it again once the cause is fixed.

A line holds ``reason``, ``topic``, ``class``, the origin (``host``,
``pid``, ``seq``), ``dead_lettered_ms``, and the key, headers and envelope,
each as text when it is UTF-8 and as ``{"base64": ...}`` when it is not.
"""

from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path

from zlog.protocol import Event

__all__ = ["DeadLetters"]


class DeadLetters:
    """Appends refused events to a JSON-lines file. Synchronous: run it in a thread."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, topic: str, reason: str, events: list[Event]) -> None:
        """Append ``events`` refused for ``reason``; on disk on return."""
        now_ms = time.time_ns() // 1_000_000
        lines = [_line(topic, reason, event, now_ms) for event in events]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "ab") as file:
            file.write(b"".join(lines))
            file.flush()
            os.fsync(file.fileno())


def _line(topic: str, reason: str, event: Event, now_ms: int) -> bytes:
    record = {
        "reason": reason,
        "topic": topic,
        "class": event.event_class.name.lower(),
        "host": event.host,
        "pid": event.pid,
        "seq": event.seq,
        "dead_lettered_ms": now_ms,
        "key": _text(event.key),
        "headers": [[name, _text(value)] for name, value in event.headers],
        "value": _text(event.value),
    }

    return json.dumps(record, separators=(",", ":")).encode() + b"\n"


def _text(data: bytes | None) -> str | dict | None:
    if data is None:
        return None
    try:
        return data.decode()
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(data).decode()}
