"""The publisher's parts around the producer: how a batch refused as too large
is split, and how an acked batch Kafka does not answer in time is spooled."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiokafka.errors import KafkaConnectionError

from zlog import protocol
from zlog.broker.config import BrokerConfig
from zlog.broker.idempotence import SequenceRewind
from zlog.broker.publisher import OpenBatch, Publisher, split_too_large
from zlog.broker.stats import Stats
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


class HeldProducer:
    """Takes batches and answers them only when a test says, like a producer
    whose Kafka went away after it sent them."""

    def __init__(self) -> None:
        self.futures: list[asyncio.Future] = []

    async def send_batch(self, builder, topic, partition) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        self.futures.append(future)

        return future


async def held_batch(answer, ack_spool_after_s: float = 0.05) -> dict:
    """Submit an acked batch, wait past the bound, then let Kafka ``answer``."""
    spilled, replies = [], []
    config = BrokerConfig(
        socket_path=Path("/nonexistent.sock"), ack_spool_after_s=ack_spool_after_s
    )
    publisher = Publisher(
        config,
        Stats(),
        lambda identity, frames: replies.append(frames),
        spill=lambda batch, reason: spilled.append(reason),
        reject=lambda batch, reason: pytest.fail(f"rejected: {reason}"),
    )
    publisher.producer = HeldProducer()
    publisher._rewind = SequenceRewind(object())
    batch = OpenBatch(builder=None, topic="t.audit", partition=0)
    for event in events(10, 10):
        batch.count(b"sender", event._replace(event_class=EventClass.AUDIT))
    await publisher.submit(batch)
    await asyncio.sleep(0.3)
    during = [publisher.replay_state(event) for event in batch.events]
    answer(publisher.producer.futures[0])
    await asyncio.sleep(0)

    return {
        "spilled": spilled,
        "during": during,
        "after": [publisher.replay_state(event) for event in batch.events],
        "then": [publisher.replay_state(event) for event in batch.events],
        "replies": replies,
    }


def test_acked_batch_unanswered_past_the_bound_is_spooled_and_held():
    """The batch goes to the spool, and the replay waits for Kafka's answer;
    Kafka taking it then makes the replay remove its events, once, unsent."""
    result = asyncio.run(held_batch(lambda future: future.set_result(None)))

    assert len(result["spilled"]) == 1 and "within 0.05 s" in result["spilled"][0]
    assert result["during"] == [False, False]
    assert result["after"] == [True, True]
    assert result["then"] == [None, None]
    assert result["replies"] == []


def test_held_batch_kafka_refuses_is_replayed():
    """A held batch Kafka fails leaves its spooled events to the replay."""
    result = asyncio.run(
        held_batch(lambda future: future.set_exception(KafkaConnectionError()))
    )

    assert result["during"] == [False, False]
    assert result["after"] == [None, None]


def test_acked_batch_answered_within_the_bound_is_neither_spooled_nor_held():
    """Kafka answering in time publishes the batch: acked, nothing held."""
    result = asyncio.run(
        held_batch(lambda future: future.set_result(None), ack_spool_after_s=60)
    )

    assert result["spilled"] == []
    assert result["during"] == [None, None] and result["after"] == [None, None]
    assert len(result["replies"]) == 2
