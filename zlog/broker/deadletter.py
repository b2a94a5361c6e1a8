"""The dead-letter file: what the broker will never publish, kept with the reason.

Two things end here. Events Kafka refused for a reason that will not pass
(a record too large, no authorization, a topic that does not exist and may
not be created): retrying would hold the partition forever and spooling
would only postpone the refusal. And messages that did not decode (bad
frames), so an operator can see what a misbehaving process sent. One JSON
object per line, beside the spool.

An event's line holds ``kind`` ("event"), ``reason``, ``topic``, ``class``,
the origin (``host``, ``pid``, ``seq``), ``dead_lettered_ms``, and the key,
headers and envelope, each as text when it is UTF-8 and as
``{"base64": ...}`` when it is not.

A bad frame's line holds ``kind`` ("bad_frame"), ``reason`` (the metric
label), ``detail``, ``dead_lettered_ms``, the ROUTER ``connection`` identity
in hex, ``frame_count``, and ``frames``: each frame's length in ``bytes`` and
its first bytes in ``base64``. A message keeps at most ``KEPT_MESSAGE_BYTES``
over all its frames and lists at most ``KEPT_FRAMES`` of them, and bad frames
stop being kept once the file reaches its ``max_bytes``: garbage sent as fast
as a process can cannot fill the disk. Events are written whatever the size.
"""

from __future__ import annotations

import base64
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from zlog.protocol import Event

__all__ = [
    "DEFAULT_MAX_BYTES",
    "KEPT_FRAMES",
    "KEPT_MESSAGE_BYTES",
    "BadFrame",
    "DeadLetters",
    "clip_frames",
]

# Enough for a few thousand bad messages at the full KEPT_MESSAGE_BYTES, which
# shows what a misbehaving process sends; small beside the default spool.
DEFAULT_MAX_BYTES = 64 << 20

# A head and the start of an envelope fit in 4 KiB; the rest of a garbage
# frame up to --max-frame-bytes says nothing more.
KEPT_MESSAGE_BYTES = 4096

# A message of thousands of empty frames is described by its first few.
KEPT_FRAMES = 16


@dataclass(frozen=True, slots=True)
class BadFrame:
    """A message that did not decode, clipped to what is kept of it."""

    reason: str
    detail: str
    connection: bytes
    frame_count: int
    # (full length, first bytes) of each frame kept.
    frames: tuple[tuple[int, bytes], ...]


def clip_frames(frames: list[bytes]) -> tuple[tuple[int, bytes], ...]:
    """Each frame's length and first bytes, within the per-message budget."""
    budget = KEPT_MESSAGE_BYTES
    clipped = []
    for frame in frames[:KEPT_FRAMES]:
        clipped.append((len(frame), frame[:budget]))
        budget -= len(clipped[-1][1])

    return tuple(clipped)


class DeadLetters:
    """Appends lines to the dead-letter file. Synchronous: run it in a thread."""

    def __init__(self, path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.path = path
        self.max_bytes = max_bytes

    def write(self, topic: str, reason: str, events: list[Event]) -> None:
        """Append ``events`` refused for ``reason``; on disk on return."""
        now_ms = time.time_ns() // 1_000_000
        lines = [_event_line(topic, reason, event, now_ms) for event in events]
        self._append(b"".join(lines), sync=True)

    def write_bad_frames(self, bad: list[BadFrame]) -> int:
        """Append what fits of ``bad`` under ``max_bytes``; return how many did.

        Not synced: a bad frame is evidence, not data anyone waits for, and
        an fsync per write would slow the spool's writes in the same thread.
        """
        now_ms = time.time_ns() // 1_000_000
        room = self.max_bytes - self._size()
        lines = []
        for frame in bad:
            line = _bad_frame_line(frame, now_ms)
            if len(line) > room:
                break
            room -= len(line)
            lines.append(line)
        if lines:
            self._append(b"".join(lines), sync=False)

        return len(lines)

    def _size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def _append(self, data: bytes, sync: bool) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "ab") as file:
            file.write(data)
            file.flush()
            if sync:
                os.fsync(file.fileno())


def _event_line(topic: str, reason: str, event: Event, now_ms: int) -> bytes:
    record = {
        "kind": "event",
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


def _bad_frame_line(frame: BadFrame, now_ms: int) -> bytes:
    record = {
        "kind": "bad_frame",
        "reason": frame.reason,
        "detail": frame.detail,
        "dead_lettered_ms": now_ms,
        "connection": frame.connection.hex(),
        "frame_count": frame.frame_count,
        "frames": [
            {"bytes": size, "base64": base64.b64encode(kept).decode()}
            for size, kept in frame.frames
        ],
    }

    return json.dumps(record, separators=(",", ":")).encode() + b"\n"


def _text(data: bytes | None) -> str | dict | None:
    if data is None:
        return None
    try:
        return data.decode()
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(data).decode()}
