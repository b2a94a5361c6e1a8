"""The dead-letter file: what is kept of a bad frame, and its bound on disk."""

from __future__ import annotations

import base64
import json

from zlog.broker.deadletter import (
    KEPT_FRAMES,
    KEPT_MESSAGE_BYTES,
    BadFrame,
    DeadLetters,
    clip_frames,
)
from zlog.protocol import Event, EventClass


def bad_frame(*frames: bytes) -> BadFrame:
    return BadFrame(
        "bad_head",
        "head frame is 4 bytes",
        b"\x00id",
        len(frames),
        clip_frames(list(frames)),
    )


def lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_bad_frame_is_kept_with_its_reason_and_bytes(tmp_path):
    """The line names the reason and detail and holds the frame's bytes."""
    letters = DeadLetters(tmp_path / "dl.jsonl")

    kept = letters.write_bad_frames([bad_frame(b"junk", b"\xff\x00")])

    (line,) = lines(letters.path)
    assert kept == 1
    assert (line["kind"], line["reason"]) == ("bad_frame", "bad_head")
    assert line["detail"] == "head frame is 4 bytes"
    assert line["connection"] == "006964"
    assert [f["bytes"] for f in line["frames"]] == [4, 2]
    assert base64.b64decode(line["frames"][1]["base64"]) == b"\xff\x00"


def test_a_large_message_keeps_only_its_first_bytes():
    """Over all its frames a message keeps at most KEPT_MESSAGE_BYTES."""
    frames = [b"a" * 3000, b"b" * 3000, b"c" * 10] + [b""] * 100

    clipped = clip_frames(frames)

    assert sum(len(kept) for _, kept in clipped) == KEPT_MESSAGE_BYTES
    assert [size for size, _ in clipped[:3]] == [3000, 3000, 10]
    assert len(clipped) == KEPT_FRAMES


def test_bad_frames_stop_at_the_file_size_and_are_counted(tmp_path):
    """Past max_bytes bad frames are refused, so a flood cannot fill the disk."""
    letters = DeadLetters(tmp_path / "dl.jsonl", max_bytes=20_000)
    flood = [bad_frame(bytes(range(256)) * 40) for _ in range(10)]

    kept = letters.write_bad_frames(flood)
    kept_later = letters.write_bad_frames(flood)

    assert 0 < kept < len(flood)
    assert kept_later == 0
    assert letters.path.stat().st_size <= 20_000
    assert len(lines(letters.path)) == kept


def test_refused_events_are_written_whatever_the_size(tmp_path):
    """Events Kafka refused are data, not evidence: the bound does not apply."""
    letters = DeadLetters(tmp_path / "dl.jsonl", max_bytes=10)
    event = Event(EventClass.AUDIT, None, b"k", [], b'{"id":"1"}', "h", 1, 1, True)

    letters.write("t.audit", "MessageSizeTooLargeError", [event])

    (line,) = lines(letters.path)
    assert (line["kind"], line["topic"], line["value"]) == (
        "event",
        "t.audit",
        '{"id":"1"}',
    )
