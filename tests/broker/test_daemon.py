"""The daemon's connection to Kafka, with the publisher's start faked."""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from zlog import protocol
from zlog.broker.deadletter import DeadLetters
from zlog.broker.limits import TopicLimits
from zlog.errors import ConfigError
from zlog.protocol import EventClass

from .test_routing import make_broker

REFUSAL = "topic 'u.v1' does not exist in Kafka and the broker does not create topics"


async def refuse_topic() -> None:
    raise ConfigError(REFUSAL)


def test_topic_refused_at_start_stops_the_broker():
    """At start, a topic Kafka lacks or refuses is a setting to fix: raised."""
    broker = make_broker()
    broker.publisher.start = refuse_topic

    with pytest.raises(ConfigError, match="does not exist"):
        asyncio.run(broker._connect())


def test_topic_refused_on_a_later_connect_keeps_spooling_and_says_why():
    """Kafka reached only after the start refuses a topic: the broker keeps
    serving into the spool, says why, and tries again later.
    """
    with capture_logs() as logs:
        broker = make_broker()
        broker.publisher.start = refuse_topic
        broker.state = "serving"
        connected = asyncio.run(broker._connect())

    assert connected is False
    assert [(log["event"], log["reason"]) for log in logs] == [
        ("kafka_refused", REFUSAL)
    ]


def test_events_too_large_for_their_topic_are_refused_instead_of_spooled(tmp_path):
    """Of events about to be spooled, those over their topic's limit even
    alone are nacked, counted and dead-lettered; the others are returned to
    be spooled, and a topic whose limit is unknown refuses nothing."""
    broker = make_broker()
    broker.publisher.limits = TopicLimits(512 * 1024, None)
    broker.publisher.limits.learn("u.v1", 2048)
    broker.dead_letters = DeadLetters(tmp_path / "dead.jsonl", 1 << 20)
    small = event_to("u.v1", b"{}", seq=1)
    large = event_to("u.v1", b"x" * 3000, seq=2)
    elsewhere = event_to("other.v1", b"x" * 3000, seq=3)

    async def refuse() -> list:
        kept = broker._refuse_too_large(
            [(b"id", small), (b"id", large), (b"id", elsewhere)], None
        )
        await asyncio.gather(*broker._writes)
        return kept

    kept = asyncio.run(refuse())

    assert kept == [(b"id", small), (b"id", elsewhere)]
    ((identity, frames),) = broker.replies
    reply = protocol.decode_reply(frames)
    assert (identity, reply.kind, reply.seq) == (b"id", protocol.Kind.NACK, 2)
    assert b"max.message.bytes 2048 of topic 'u.v1'" in reply.body
    assert broker.stats.dead_lettered == {"MessageSizeTooLargeError": 1}
    assert len((tmp_path / "dead.jsonl").read_text().splitlines()) == 1


def event_to(topic: str, value: bytes, seq: int) -> protocol.Event:
    return protocol.Event(
        EventClass.TOPIC, topic, None, [], value, "h", 1, seq, wants_ack=True
    )
