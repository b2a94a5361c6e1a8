"""The dead-letter file: what is kept of a bad frame, and its bounds on disk."""

from __future__ import annotations

import base64
import json

from zlog.broker.deadletter import (
    BAD_FRAME_SHARE,
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
    letters = DeadLetters(tmp_path / "dl.jsonl", max_bytes=1 << 20)

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


def refused_event(seq: int) -> Event:
    return Event(
        EventClass.AUDIT, None, b"k", [], b'{"id":"%d"}' % seq, "h", 1, seq, True
    )


def test_bad_frames_stop_at_their_share_of_the_file_and_are_counted(tmp_path):
    """Past their share of max_bytes bad frames are refused: a flood fills
    neither the disk nor the room refused events need."""
    letters = DeadLetters(tmp_path / "dl.jsonl", max_bytes=80_000)
    flood = [bad_frame(bytes(range(256)) * 40) for _ in range(10)]

    kept = letters.write_bad_frames(flood)
    kept_later = letters.write_bad_frames(flood)

    assert 0 < kept < len(flood)
    assert kept_later == 0
    assert letters.path.stat().st_size <= 80_000 * BAD_FRAME_SHARE
    assert len(lines(letters.path)) == kept


def test_a_refused_event_is_kept_with_its_topic_and_envelope(tmp_path):
    letters = DeadLetters(tmp_path / "dl.jsonl", max_bytes=1 << 20)

    kept = letters.write("t.audit", "MessageSizeTooLargeError", [refused_event(1)])

    (line,) = lines(letters.path)
    assert kept == 1
    assert (line["kind"], line["topic"], line["value"]) == (
        "event",
        "t.audit",
        '{"id":"1"}',
    )


def test_refused_events_stop_at_the_file_bound_in_order(tmp_path):
    """Past max_bytes refused events are only counted by the caller: the
    first ones are kept whole, in order, and the file stays within the bound."""
    letters = DeadLetters(tmp_path / "dl.jsonl", max_bytes=2_000)
    events = [refused_event(seq) for seq in range(1, 21)]

    kept = letters.write("t.audit", "MessageSizeTooLargeError", events)
    kept_later = letters.write("t.audit", "MessageSizeTooLargeError", events)

    assert 0 < kept < len(events)
    assert kept_later == 0
    assert letters.path.stat().st_size <= 2_000
    assert [line["seq"] for line in lines(letters.path)] == list(range(1, kept + 1))


def test_refused_events_are_kept_after_bad_frames_reached_their_share(tmp_path):
    """Garbage stops at its share; refused events still have the rest."""
    letters = DeadLetters(tmp_path / "dl.jsonl", max_bytes=80_000)
    flood = [bad_frame(bytes(range(256)) * 40) for _ in range(20)]
    letters.write_bad_frames(flood)

    kept = letters.write("t.audit", "reason", [refused_event(1)])

    assert kept == 1
    assert lines(letters.path)[-1]["kind"] == "event"
