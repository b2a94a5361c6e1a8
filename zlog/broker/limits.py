"""How large a batch each topic takes, learned from Kafka before sending.

Kafka refuses a record batch whose size as sent (compressed, when the
producer compresses) is over the topic's ``max.message.bytes``, and writes
none of it. A refusal costs a round trip, puts the idempotent producer's
record numbers out of step (``zlog.broker.idempotence``), and the batches
queued behind it are refused out of order and sent again. Under load,
splitting refused batches took longer than ``send_timeout_s``: their events
went to the spool, were acked there, and the too-large ones were only
dead-lettered at replay, never nacked.

So the publisher reads each topic's ``max.message.bytes`` (DescribeConfigs:
at start for the class topics, at first use for a topic an event names,
then every ``LIMITS_REFRESH_S``), and with it:

- builds batches of at most the limit, less ``compression_slack_bytes``
  when it compresses. The builder measures a batch uncompressed, and a codec
  makes data it cannot shrink a little larger (aiokafka sends the
  compressed form all the same), so a batch of several events always fits.
- refuses before sending an event that does not fit even alone. The builder
  takes a batch's first record whatever its size and nothing after one over
  its bound, so such an event is always alone in its batch, and its size as
  sent is known exactly: the builder's size when uncompressed; compressed,
  that of a copy built and measured (only events over the bound pay for
  it). An event over the limit uncompressed that fits compressed is sent.

The refusal says what Kafka would (``MessageSizeTooLargeError``). Where the
limit read is not Kafka's, Kafka's own refusal still decides and the
publisher's splitting of refused batches is the fallback: the limit changed
since it was read (a refusal asks for a new read, at most every
``LIMITS_MIN_REFRESH_S``), or the topic recompresses with a codec of its own
(``compression.type`` other than ``producer``). A topic whose configuration
cannot be read (no DescribeConfigs permission, a timeout) has batches capped
by the brokers' ``message.max.bytes`` when that can be read, but no event is
refused for it: the topic may allow more than the brokers' default.
"""

from __future__ import annotations

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import MessageSizeTooLargeError
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record.default_records import DefaultRecordBatch
from aiokafka.record.default_records import DefaultRecordBatchBuilder as RecordBuilder
from aiokafka.record.util import size_of_varint

from zlog import protocol

__all__ = [
    "BATCH_HEADER_BYTES",
    "RECORD_OVERHEAD_BYTES",
    "TopicLimits",
    "alone_bytes",
    "compression_slack_bytes",
    "read_broker_default",
    "read_limits",
    "record_bytes",
]

# The topic setting Kafka checks each batch against, and the brokers' default
# for topics that do not set it.
MAX_MESSAGE_BYTES = "max.message.bytes"
BROKER_MAX_MESSAGE_BYTES = "message.max.bytes"

# A record batch's fixed part (offsets, length, CRC, producer state, count),
# which Kafka counts in the size it checks: an empty batch's size, 61 bytes.
BATCH_HEADER_BYTES = RecordBuilder(2, 0, 0, -1, -1, -1, 0).size()

# What a batch of one event adds to its record_bytes() at most: the header,
# the record's length (a varint, 5 bytes at most), attributes and deltas.
RECORD_OVERHEAD_BYTES = BATCH_HEADER_BYTES + 5 + 3

# The smallest bound a batch is given, so a tiny limit still leaves room for
# the header.
MIN_BATCH_BYTES = BATCH_HEADER_BYTES + 1

_size_of = RecordBuilder.size_of


def compression_slack_bytes(limit_bytes: int) -> int:
    """What a codec may add to ``limit_bytes`` of data it cannot shrink.

    zstd's bound is 1/256 of the data plus 64 bytes and a frame header of
    up to 18; gzip's 1/4096 plus 25; lz4 frames store such data raw, 4 bytes
    a block plus 19. 1/128 plus 128 bytes covers each (measured for 1,000
    random bytes: zstd 10, lz4 19, gzip 23, snappy 25 bytes more).
    """
    return limit_bytes // 128 + 128


def _codec(compression: str | None) -> int:
    if compression is None:
        return DefaultRecordBatch.CODEC_NONE

    return getattr(DefaultRecordBatch, f"CODEC_{compression.upper()}")


class TopicLimits:
    """Each topic's ``max.message.bytes`` as last read, and the batch bound under it."""

    def __init__(self, max_batch_bytes: int, compression: str | None) -> None:
        self.max_batch_bytes = max_batch_bytes
        self._codec = _codec(compression)
        # topic -> max.message.bytes; None when Kafka would not say.
        self._limits: dict[str, int | None] = {}
        self._batch_bytes: dict[str, int] = {}
        # topic -> batch bound, for the topics whose limit is known: an event
        # whose record fits the bound is never refused.
        self.refusing: dict[str, int] = {}
        # The brokers' message.max.bytes: caps the batches of a topic whose
        # own limit could not be read.
        self.broker_default_bytes: int | None = None

    def learn(self, topic: str, limit_bytes: int | None) -> None:
        """Take ``limit_bytes`` as the topic's limit; None when it is unknown."""
        self._limits[topic] = limit_bytes
        self.refusing.pop(topic, None)
        bound_bytes = limit_bytes or self.broker_default_bytes
        if bound_bytes is None:
            self._batch_bytes.pop(topic, None)
            return
        if self._codec != DefaultRecordBatch.CODEC_NONE:
            bound_bytes -= compression_slack_bytes(bound_bytes)
        bound_bytes = max(MIN_BATCH_BYTES, bound_bytes)
        self._batch_bytes[topic] = min(self.max_batch_bytes, bound_bytes)
        if limit_bytes is not None:
            self.refusing[topic] = self._batch_bytes[topic]

    def known(self, topic: str) -> bool:
        """Whether the topic's limit was looked up, whatever the answer."""
        return topic in self._limits

    @property
    def topics(self) -> list[str]:
        """The topics looked up so far."""
        return list(self._limits)

    def limit_of(self, topic: str) -> int | None:
        """The topic's ``max.message.bytes``, None when not known."""
        return self._limits.get(topic)

    def batch_bytes(self, topic: str) -> int:
        """How large, uncompressed, a batch of several events may grow."""
        return self._batch_bytes.get(topic, self.max_batch_bytes)

    def new_builder(self, topic: str) -> BatchBuilder:
        """An empty batch builder bounded for ``topic``."""
        return BatchBuilder(self.batch_bytes(topic), self._codec)

    def batch_refusal(
        self, topic: str, builder: BatchBuilder, events: list[protocol.Event]
    ) -> MessageSizeTooLargeError | None:
        """Kafka's refusal of a batch, known before sending; None when it may fit.

        Kept lean: a batch within its bound costs one comparison. Only a
        batch of one event is refused here; several events over the limit
        (their batch was bounded before a lower limit was read) are left for
        Kafka to refuse and the publisher to split.
        """
        if builder.size() <= self.batch_bytes(topic) or len(events) != 1:
            return None

        return self.event_refusal(topic, events[0])

    def event_refusal(
        self, topic: str, event: protocol.Event
    ) -> MessageSizeTooLargeError | None:
        """Kafka's refusal of ``event`` even alone, known before sending; else None."""
        limit_bytes = self._limits.get(topic)
        if limit_bytes is None:
            return None
        size_bytes = alone_bytes(event)
        if size_bytes <= self.batch_bytes(topic):
            return None
        if self._codec != DefaultRecordBatch.CODEC_NONE:
            size_bytes = self._compressed_bytes(event)
        if size_bytes <= limit_bytes:
            return None

        return MessageSizeTooLargeError(
            f"the event alone is over max.message.bytes {limit_bytes} of topic "
            f"{topic!r} (refused before sending)"
        )

    def _compressed_bytes(self, event: protocol.Event) -> int:
        """The size as sent of a batch holding only ``event``, compressed."""
        builder = RecordBuilder(2, self._codec, 0, -1, -1, -1, self.max_batch_bytes)
        builder.append(0, 0, event.key, event.value, event.headers)

        return len(builder.build())

    def status(self) -> dict[str, int | None]:
        """Each topic's limit as read, for the status document."""
        return dict(self._limits)


def record_bytes(event: protocol.Event) -> int:
    """The size of ``event``'s key, value and headers as a record holds them.

    Kept lean: a batch holding only the event is at most
    ``RECORD_OVERHEAD_BYTES`` larger.
    """
    return _size_of(event.key, event.value, event.headers)


def alone_bytes(event: protocol.Event) -> int:
    """The size of a batch holding only ``event``, uncompressed.

    The record is its attributes, timestamp and offset deltas (one byte
    each: both deltas are 0 for a batch's first record), key, value and
    headers, behind its length.
    """
    body_bytes = 3 + record_bytes(event)

    return BATCH_HEADER_BYTES + size_of_varint(body_bytes) + body_bytes


async def read_limits(
    admin: AIOKafkaAdminClient, topics: list[str]
) -> dict[str, int | None]:
    """Each topic's ``max.message.bytes`` as Kafka applies it.

    Kafka answers with the topic's own setting or the brokers' default it
    falls back to; None for a topic it would not describe.
    """
    resources = [
        ConfigResource(ConfigResourceType.TOPIC, topic, {MAX_MESSAGE_BYTES: None})
        for topic in topics
    ]
    limits: dict[str, int | None] = dict.fromkeys(topics)
    for response in await admin.describe_configs(resources):
        for name, value in _config_values(response, MAX_MESSAGE_BYTES):
            if name in limits:
                limits[name] = value

    return limits


async def read_broker_default(admin: AIOKafkaAdminClient) -> int | None:
    """The brokers' ``message.max.bytes``, as one of them has it; None if unread."""
    cluster = await admin.describe_cluster()
    if not cluster["brokers"]:
        return None
    node_id = str(cluster["brokers"][0]["node_id"])
    resource = ConfigResource(
        ConfigResourceType.BROKER, node_id, {BROKER_MAX_MESSAGE_BYTES: None}
    )
    for response in await admin.describe_configs([resource]):
        for _, value in _config_values(response, BROKER_MAX_MESSAGE_BYTES):
            return value

    return None


def _config_values(response: object, config: str) -> list[tuple[str, int]]:
    """(resource name, value) of ``config`` in a DescribeConfigs response.

    Resources Kafka reports an error for, or a value that is not a whole
    number, are left out.
    """
    values = []
    for code, _, _, name, entries in response.resources:
        if code != 0:
            continue
        for entry in entries:
            if entry[0] == config and str(entry[1]).isdigit():
                values.append((name, int(entry[1])))

    return values
