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
over all its frames and lists at most ``KEPT_FRAMES`` of them.

The file is bounded by ``max_bytes`` (``--dead-letter-max-bytes``). Refused
events are written while it is under that; bad frames only while it is
under a ``BAD_FRAME_SHARE`` of it, so garbage sent as fast as a process can
neither fills the disk nor takes the room of events. What is not written is
only counted, by the caller; the file is never trimmed: an operator moves
it away, and the next write starts a new one.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from zlog.protocol import Event

__all__ = [
    "BAD_FRAME_SHARE",
    "KEPT_FRAMES",
    "KEPT_MESSAGE_BYTES",
    "BadFrame",
    "DeadLetters",
    "clip_frames",
]

# Bad frames stop at this part of the file's bound: 64 MiB of the default
# 256 MiB, a few thousand messages at the full KEPT_MESSAGE_BYTES, enough to
# show what a misbehaving process sends.
BAD_FRAME_SHARE = 0.25

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

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.bad_frame_max_bytes = int(max_bytes * BAD_FRAME_SHARE)

    def write(self, topic: str, reason: str, events: list[Event]) -> int:
        """Append what fits of ``events`` refused for ``reason``; return how many.

        On disk on return: an event here is data its sender was told is lost.
        """
        now_ms = time.time_ns() // 1_000_000
        lines = (_event_line(topic, reason, event, now_ms) for event in events)

        return self._append_within(lines, self.max_bytes, sync=True)

    def write_bad_frames(self, bad: list[BadFrame]) -> int:
        """Append what fits of ``bad`` under its share; return how many did.

        Not synced: a bad frame is evidence, not data anyone waits for, and
        an fsync per write would slow the spool's writes in the same thread.
        """
        now_ms = time.time_ns() // 1_000_000
        lines = (_bad_frame_line(frame, now_ms) for frame in bad)

        return self._append_within(lines, self.bad_frame_max_bytes, sync=False)

    def _append_within(self, lines: Iterator[bytes], max_bytes: int, sync: bool) -> int:
        """Append lines, in order, while the file stays within ``max_bytes``."""
        room = max_bytes - self._size()
        kept = []
        for line in lines:
            if len(line) > room:
                break
            room -= len(line)
            kept.append(line)
        if kept:
            self._append(b"".join(kept), sync)

        return len(kept)

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
