"""The producer's record numbers after a refused batch, without Kafka.

The batches are aiokafka's own builders, numbered the way its sender
numbers them; only the producer holding the numbers is a stand-in.
"""

from __future__ import annotations

from types import SimpleNamespace

from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.structs import TopicPartition

from zlog.broker.idempotence import SequenceRewind

TOPIC, PARTITION = "t.small", 0
TP = TopicPartition(TOPIC, PARTITION)
PRODUCER_ID = 4000


class Numbers:
    """The producer's per-partition counter, as aiokafka's sender uses it."""

    def __init__(self) -> None:
        self.next: dict[TopicPartition, int] = {}

    def sequence_number(self, tp: TopicPartition) -> int:
        return self.next.get(tp, 0)

    def increment_sequence_number(self, tp: TopicPartition, increment: int) -> None:
        self.next[tp] = self.sequence_number(tp) + increment

    def number(self, records: int) -> BatchBuilder:
        """A batch of ``records`` numbered as the sender numbers it when sent."""
        builder = BatchBuilder(16384, 0)
        for _ in range(records):
            builder.append(timestamp=0, key=None, value=b"{}", headers=[])
        builder._set_producer_state(PRODUCER_ID, 0, self.sequence_number(TP))
        self.increment_sequence_number(TP, records)

        return builder


def rewind_for(numbers: Numbers | None) -> SequenceRewind:
    return SequenceRewind(SimpleNamespace(_txn_manager=numbers))


def test_a_refused_batch_gives_its_numbers_back():
    """The next batch is numbered where the refused one started."""
    numbers = Numbers()
    rewind = rewind_for(numbers)
    numbers.number(5)
    rewind.written(TOPIC, PARTITION)
    refused = numbers.number(3)

    rewind.failed(TOPIC, PARTITION, refused)

    assert numbers.sequence_number(TP) == 5


def test_a_batch_numbered_before_the_rewind_is_rewound_when_it_fails_too():
    """The sender numbered the next batch first: it fails out of order, and
    the numbers go back to where the first refused batch started."""
    numbers = Numbers()
    rewind = rewind_for(numbers)
    numbers.number(5)
    refused = numbers.number(3)
    numbered_meanwhile = numbers.number(2)

    rewind.failed(TOPIC, PARTITION, refused)
    after_first_failure = numbers.sequence_number(TP)
    rewind.failed(TOPIC, PARTITION, numbered_meanwhile)

    assert after_first_failure == 10
    assert numbers.sequence_number(TP) == 5


def test_a_batch_numbered_before_the_rewind_and_written_keeps_the_numbers():
    """On a partition new to the producer Kafka writes it anyway: the numbers
    then follow that batch, and a later failure rewinds only itself."""
    numbers = Numbers()
    rewind = rewind_for(numbers)
    refused = numbers.number(3)
    numbers.number(2)

    rewind.failed(TOPIC, PARTITION, refused)
    rewind.written(TOPIC, PARTITION)
    later = numbers.number(4)
    rewind.failed(TOPIC, PARTITION, later)

    assert numbers.sequence_number(TP) == 5


def test_other_partitions_keep_their_numbers():
    """Only the refused batch's partition is rewound."""
    numbers = Numbers()
    rewind = rewind_for(numbers)
    numbers.next[TopicPartition(TOPIC, 1)] = 7
    refused = numbers.number(3)

    rewind.failed(TOPIC, PARTITION, refused)

    assert numbers.next == {TP: 0, TopicPartition(TOPIC, 1): 7}


def test_a_batch_never_numbered_changes_nothing():
    """A batch failed before the sender numbered it has no numbers to return."""
    numbers = Numbers()
    numbers.next[TP] = 9
    builder = BatchBuilder(16384, 0)
    builder.append(timestamp=0, key=None, value=b"{}", headers=[])

    rewind_for(numbers).failed(TOPIC, PARTITION, builder)

    assert numbers.sequence_number(TP) == 9


def test_without_idempotence_nothing_is_numbered_or_touched():
    """With acks=1 the producer has no numbers; a failure is only noted."""
    builder = BatchBuilder(16384, 0)
    builder.append(timestamp=0, key=None, value=b"{}", headers=[])

    rewind_for(None).failed(TOPIC, PARTITION, builder)
