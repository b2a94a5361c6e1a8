"""The idempotent producer's record numbers, put back after a refused batch.

With idempotence on (``acks=all``), the producer numbers the records of each
partition: a batch carries the number of its first record, and Kafka writes
a batch only when that number follows the last one it wrote for this
producer on the partition. aiokafka 0.14 counts a batch's records when it
sends the batch and never takes the count back, so a batch Kafka refuses (a
record too large) leaves a hole: every later batch of that partition is
refused as out of order (``OutOfOrderSequenceNumber``) for as long as the
producer lives. Kafka lets the hole pass only on a partition where it has
nothing yet from this producer, which is why a test on a new topic passes.

``SequenceRewind`` puts the count back when a batch fails. The producer
sends one batch per partition at a time, so when a failure is handled
nothing has usually been numbered after it, and the count goes back to the
failed batch's first number. The sender may number the partition's next
batch in between: that one then fails out of order as well (or is written,
on a partition new to this producer), and the rewind waits for its answer.
The batches that failed out of order are sent again by the publisher.

Only a batch Kafka refused is rewound (``publisher.not_written``): one that
timed out or lost its connection may have been written, and the next batch
reusing its numbers would be taken for a duplicate and dropped by Kafka.
"""

from __future__ import annotations

from aiokafka.record.default_records import DefaultRecordBatch
from aiokafka.structs import TopicPartition

__all__ = ["SequenceRewind"]

# What a batch the sender never numbered carries as its producer id.
_NO_PRODUCER_ID = -1


class SequenceRewind:
    """Keeps a producer's per-partition record numbers in step with Kafka."""

    def __init__(self, producer: object) -> None:
        # None when idempotence is off: nothing is numbered then.
        self._numbers = getattr(producer, "_txn_manager", None)
        # partition -> the number Kafka expects next, while a batch numbered
        # after a failed one is still waiting for its answer.
        self._expected: dict[TopicPartition, int] = {}

    def written(self, topic: str, partition: int) -> None:
        """Kafka wrote a batch of the partition: its numbers are in step."""
        if self._expected:
            self._expected.pop(TopicPartition(topic, partition), None)

    def failed(self, topic: str, partition: int, builder: object) -> None:
        """Kafka did not write this batch: take its numbers back."""
        if self._numbers is None:
            return
        # The buffer is what the producer sent; building again returns it.
        header = DefaultRecordBatch(bytes(builder._build()))
        if header.producer_id == _NO_PRODUCER_ID:
            return
        tp = TopicPartition(topic, partition)
        first = header.base_sequence
        expected = min(self._expected.get(tp, first), first)
        following = first + builder.record_count()
        current = self._numbers.sequence_number(tp)
        if current == following:
            self._numbers.increment_sequence_number(tp, expected - current)
            self._expected.pop(tp, None)
        else:
            self._expected[tp] = expected
