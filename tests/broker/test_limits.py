"""Topic limits: batch bounds and refusals before sending, without Kafka.

The builders are aiokafka's own, so the sizes measured here are the sizes
Kafka would check; tests/broker/test_too_large.py checks them against Kafka.
"""

from __future__ import annotations

import os

import pytest
from aiokafka import codec
from aiokafka.producer.message_accumulator import BatchBuilder
from hypothesis import given, settings
from hypothesis import strategies as st

from zlog import protocol
from zlog.broker.limits import (
    BATCH_HEADER_BYTES,
    RECORD_OVERHEAD_BYTES,
    TopicLimits,
    alone_bytes,
    compression_slack_bytes,
    record_bytes,
)
from zlog.protocol import EventClass

TOPIC = "t.small"
LIMIT_BYTES = 2048
MAX_BATCH_BYTES = 512 * 1024

CODECS = [
    pytest.param(None, id="none"),
    pytest.param("gzip", id="gzip"),
    pytest.param(
        "zstd",
        id="zstd",
        marks=pytest.mark.skipif(not codec.has_zstd(), reason="no zstd codec"),
    ),
    pytest.param(
        "lz4",
        id="lz4",
        marks=pytest.mark.skipif(not codec.has_lz4(), reason="no lz4 codec"),
    ),
]


def event(value: bytes, key: bytes | None = None, headers=()) -> protocol.Event:
    return protocol.Event(
        event_class=EventClass.TOPIC,
        topic=TOPIC,
        key=key,
        headers=list(headers),
        value=value,
        host="h",
        pid=1,
        seq=1,
        wants_ack=True,
    )


def limits(compression: str | None, limit_bytes: int | None = LIMIT_BYTES):
    topic_limits = TopicLimits(MAX_BATCH_BYTES, compression)
    topic_limits.learn(TOPIC, limit_bytes)

    return topic_limits


def incompressible(size_bytes: int) -> bytes:
    """Random bytes: what no codec shrinks."""
    return os.urandom(size_bytes)


def sent_bytes(compression: str | None, events: list[protocol.Event]) -> int:
    """The size of a batch of ``events`` as the producer sends it."""
    builder = limits(compression).new_builder("other")
    for one in events:
        assert builder.append(
            timestamp=0, key=one.key, value=one.value, headers=one.headers
        )

    return len(builder._build())


def value_alone_at(total_bytes: int) -> bytes:
    """A value whose batch alone, uncompressed, is ``total_bytes``."""
    value = b"x" * (total_bytes - BATCH_HEADER_BYTES)
    while alone_bytes(event(value)) > total_bytes:
        value = value[:-1]

    return value


@given(
    key=st.none() | st.binary(max_size=40),
    value=st.binary(max_size=20_000),
    headers=st.lists(
        st.tuples(st.text(min_size=1, max_size=12), st.binary(max_size=200)),
        max_size=4,
    ),
)
@settings(max_examples=200, deadline=None)
def test_the_size_of_an_event_alone_is_what_the_builder_makes(key, value, headers):
    """Computed without building, the size of a batch of one event is the
    size of the batch aiokafka builds for it, uncompressed, and the quick
    bound from its record's size is never below it."""
    alone = event(value, key, headers)

    assert alone_bytes(alone) == sent_bytes(None, [alone])
    assert alone_bytes(alone) <= record_bytes(alone) + RECORD_OVERHEAD_BYTES


@pytest.mark.parametrize("compression", CODECS)
def test_batches_are_bounded_by_the_limit_less_the_codec_slack(compression):
    """Uncompressed, a batch may grow to the limit; compressed, to the limit
    less what a codec may add; never past the configured batch size."""
    topic_limits = limits(compression)
    slack_bytes = compression_slack_bytes(LIMIT_BYTES) if compression else 0

    assert topic_limits.batch_bytes(TOPIC) == LIMIT_BYTES - slack_bytes
    assert limits(compression, 10 << 20).batch_bytes(TOPIC) == MAX_BATCH_BYTES
    assert topic_limits.batch_bytes("never.read") == MAX_BATCH_BYTES


@pytest.mark.parametrize("compression", CODECS)
@pytest.mark.parametrize("size_bytes", [40, 300, 700, 1500])
def test_a_batch_of_several_incompressible_events_fits_the_limit_as_sent(
    compression, size_bytes
):
    """Filled to its bound with events no codec shrinks, a batch of several
    events is within the limit once compressed and built."""
    builder = limits(compression).new_builder(TOPIC)
    count = 0
    while builder.append(
        timestamp=0, key=b"k", value=incompressible(size_bytes), headers=[]
    ):
        count += 1

    assert count >= 1
    assert len(builder._build()) <= LIMIT_BYTES


def test_an_event_over_the_bound_is_alone_in_its_batch():
    """No event joins a batch after one over the bound, and one over the
    bound joins no batch that holds events already."""
    topic_limits = limits("gzip")
    small = {"timestamp": 0, "key": None, "value": b"{}", "headers": []}
    large = {**small, "value": incompressible(3000)}

    first = topic_limits.new_builder(TOPIC)
    assert first.append(**large)
    assert first.append(**small) is None
    second = topic_limits.new_builder(TOPIC)
    assert second.append(**small)
    assert second.append(**large) is None


@pytest.mark.parametrize("compression", CODECS)
def test_an_event_at_the_limit_fits_and_one_byte_more_is_refused(compression):
    """Uncompressed the limit is exact: a batch of one event of exactly the
    limit is sent, one byte more is refused, naming limit and topic.
    Compressed, the same events are sent: they shrink."""
    topic_limits = limits(compression)
    at_limit = event(value_alone_at(LIMIT_BYTES))
    over = event(value_alone_at(LIMIT_BYTES) + b"x")

    assert sent_bytes(None, [at_limit]) == LIMIT_BYTES
    assert topic_limits.event_refusal(TOPIC, at_limit) is None
    refusal = topic_limits.event_refusal(TOPIC, over)
    if compression is None:
        assert "max.message.bytes 2048 of topic 't.small'" in str(refusal)
    else:
        assert refusal is None


@pytest.mark.parametrize("compression", CODECS[1:])
def test_a_compressed_event_is_refused_only_when_it_does_not_fit_compressed(
    compression,
):
    """Over the limit uncompressed, an event that compresses below it is
    sent; one that does not is refused, and truly is over the limit as sent."""
    topic_limits = limits(compression)
    repetitive = event(b'{"pad":"%s"}' % (b"x" * 8000))
    random = event(incompressible(2100))

    assert topic_limits.event_refusal(TOPIC, repetitive) is None
    assert sent_bytes(compression, [repetitive]) <= LIMIT_BYTES
    assert topic_limits.event_refusal(TOPIC, random) is not None
    assert sent_bytes(compression, [random]) > LIMIT_BYTES


def test_an_incompressible_event_just_under_the_limit_is_refused_when_compressed():
    """Within the limit uncompressed, an event a codec makes larger than the
    limit is refused: Kafka would check the larger, compressed batch."""
    topic_limits = limits("gzip")
    near = event(incompressible(len(value_alone_at(LIMIT_BYTES - 4))))

    assert alone_bytes(near) <= LIMIT_BYTES < sent_bytes("gzip", [near])
    assert topic_limits.event_refusal(TOPIC, near) is not None


def test_key_and_headers_count_toward_the_size():
    """A value that fits alone is refused when its key and headers do not."""
    topic_limits = limits(None)
    value = value_alone_at(LIMIT_BYTES - 100)

    assert topic_limits.event_refusal(TOPIC, event(value)) is None
    assert topic_limits.event_refusal(TOPIC, event(value, key=b"k" * 100))
    with_headers = event(value, headers=[("x-tenant", b"t" * 95)])
    assert topic_limits.event_refusal(TOPIC, with_headers)


def test_an_unknown_limit_refuses_nothing_and_the_brokers_default_bounds_batches():
    """A topic whose limit could not be read has no event refused; its
    batches are bounded by the brokers' default when that was read, which
    the topic may exceed."""
    topic_limits = TopicLimits(MAX_BATCH_BYTES, None)
    topic_limits.broker_default_bytes = 4096
    topic_limits.learn(TOPIC, None)
    huge = event(b"x" * 100_000)

    assert topic_limits.known(TOPIC)
    assert topic_limits.batch_bytes(TOPIC) == 4096
    assert topic_limits.event_refusal(TOPIC, huge) is None
    assert topic_limits.event_refusal("never.read", huge) is None


def test_only_a_batch_of_one_event_is_refused_before_sending():
    """A batch of several events over the limit (bounded before a lower limit
    was read) is left for Kafka to refuse and the publisher to split."""
    topic_limits = TopicLimits(MAX_BATCH_BYTES, None)
    topic_limits.learn(TOPIC, 1 << 20)
    events = [event(b"x" * 1500) for _ in range(3)]
    builder = topic_limits.new_builder(TOPIC)
    for one in events:
        builder.append(timestamp=0, key=None, value=one.value, headers=[])
    topic_limits.learn(TOPIC, LIMIT_BYTES)
    alone = BatchBuilder(MAX_BATCH_BYTES, 0)
    alone.append(timestamp=0, key=None, value=b"x" * 3000, headers=[])

    assert topic_limits.batch_refusal(TOPIC, builder, events) is None
    refusal = topic_limits.batch_refusal(TOPIC, alone, [event(b"x" * 3000)])
    assert "MessageSizeTooLargeError" in type(refusal).__name__
