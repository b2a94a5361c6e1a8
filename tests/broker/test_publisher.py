"""The publisher's pure parts: how a batch refused as too large is split."""

from __future__ import annotations

from zlog import protocol
from zlog.broker.publisher import split_too_large
from zlog.protocol import EventClass


def events(*sizes: int) -> list[protocol.Event]:
    """Events whose envelopes have these sizes; ``seq`` numbers them from 0."""
    return [
        protocol.Event(EventClass.TOPIC, "t", None, [], b"x" * size, "h", 1, seq, True)
        for seq, size in enumerate(sizes)
    ]


def seqs(parts: list[list[protocol.Event]]) -> list[list[int]]:
    return [[event.seq for event in part] for part in parts]


def test_an_event_that_is_most_of_the_batch_goes_on_its_own():
    """The likely cause is sent alone, the events around it keep their order."""
    batch = events(10, 10, 5000, 10, 10, 10)

    assert seqs(split_too_large(batch)) == [[0, 1], [2], [3, 4, 5]]


def test_a_large_first_or_last_event_leaves_no_empty_piece():
    assert seqs(split_too_large(events(5000, 10, 10))) == [[0], [1, 2]]
    assert seqs(split_too_large(events(10, 10, 5000))) == [[0, 1], [2]]


def test_events_too_many_together_are_halved():
    """No event stands out: the batch is halved, in order."""
    batch = events(300, 400, 350, 300, 500)

    assert seqs(split_too_large(batch)) == [[0, 1], [2, 3, 4]]


def test_every_piece_is_smaller_than_the_batch():
    """Splitting again always ends at single events."""
    for sizes in [(1, 1), (9, 1), (1, 9), (4, 4, 4), (100, 1, 1, 1)]:
        parts = split_too_large(events(*sizes))

        assert all(0 < len(part) < len(sizes) for part in parts)
        assert [e.seq for part in parts for e in part] == list(range(len(sizes)))
