"""Events too large for their topic, beside events that are not, with real Kafka.

Kafka refuses a whole batch when one record in it is too large. The broker
sends the other events again, so only the too-large event is nacked and
dead-lettered, and every event is settled once: each test counts the
replies, reads the topic back by id and reads the dead-letter file.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
from kafka_helpers import consume

from zlog import protocol
from zlog.protocol import EventClass

from .test_reliability import (
    AckingSender,
    closed_port,
    create_topic,
    ids_of,
    log_lines,
    status,
    too_large,
    wait_for,
)

pytestmark = pytest.mark.kafka

# Small enough that one event of too_large() is refused on its own.
TOPIC_MAX_MESSAGE_BYTES = "2048"


class TopicSender(AckingSender):
    """Sends the given envelopes to one topic; each asks for an ack.

    Replies are kept by index in the order sent (``acked``, ``nacked``).
    """

    def __init__(self, socket_path: Path, topic: str) -> None:
        super().__init__(socket_path, proc=7)
        self.topic = topic.encode()

    def send_values(self, values: list[bytes]) -> None:
        for value in values:
            self.sent += 1
            self.dealer.send_multipart(
                protocol.encode_event(
                    EventClass.TOPIC,
                    value,
                    host=b"test",
                    pid=self.proc,
                    seq=self.sent,
                    topic=self.topic,
                    wants_ack=True,
                )
            )


def small_topic(topics, kafka_bootstrap: str) -> str:
    """A new one-partition topic that refuses batches over 2 KiB."""
    name = f"{topics.application}.small"
    create_topic(
        kafka_bootstrap, name, **{"max.message.bytes": TOPIC_MAX_MESSAGE_BYTES}
    )

    return name


def ok(number: int) -> bytes:
    return b'{"id":"ok-%d"}' % number


def dead_letters(state: dict) -> list[dict]:
    path = Path(state["dead_letter_path"])

    return log_lines(path.read_text()) if path.exists() else []


def test_events_sharing_a_batch_with_a_too_large_one_are_published(
    start_broker, topics, kafka_bootstrap
):
    """Ten events and a too-large one taken in one cycle: the ten are in
    Kafka once and acked, only the large one is nacked and dead-lettered."""
    topic = small_topic(topics, kafka_bootstrap)
    broker = start_broker()
    sender = TopicSender(broker.socket_path, topic)
    # Kafka writes one event of the partition first, so the refusal that
    # follows would also leave the producer's record numbers out of step.
    sender.send_values([ok(0)])
    sender.settle(30)

    # Stopped, the broker takes everything sent meanwhile in one cycle.
    os.kill(broker.process.pid, signal.SIGSTOP)
    try:
        sender.send_values([ok(n) for n in range(1, 6)])
        sender.send_values([too_large()])
        sender.send_values([ok(n) for n in range(6, 11)])
    finally:
        os.kill(broker.process.pid, signal.SIGCONT)
    sender.settle(30)
    sender.close()
    records = consume(kafka_bootstrap, [topic], 11)
    state = status(broker.socket_path)
    dead = dead_letters(state)

    print(f"\nnacked {sender.nacked}, sent again {state['sent_again']}")
    assert sender.acked == set(range(12)) - {6}
    assert list(sender.nacked) == [6]
    assert "MessageSizeTooLarge" in sender.nacked[6]
    assert ids_of(records) == Counter(f"ok-{n}" for n in range(11))
    assert state["sent_again"] >= 2, "the large event shared a batch with others"
    assert state["dead_lettered"] == {"MessageSizeTooLargeError": 1}
    assert state["failed"]["topic"] == 1
    assert [json.loads(line["value"])["id"] for line in dead] == ["big"]
    assert broker.terminate() == 0


def large(number: int) -> bytes:
    """A too-large envelope with its own id: random bytes, base64."""
    pad = base64.b64encode(os.urandom(6000))

    return b'{"id":"big-%d","pad":"%s"}' % (number, pad)


def test_a_stream_with_too_large_events_loses_and_duplicates_nothing(
    start_broker, topics, kafka_bootstrap
):
    """2,000 events sent without waiting for replies, one in fifty too large:
    batches queue behind refused ones, yet each event gets one reply, each
    normal one is in Kafka once, each large one is dead-lettered once.

    A large event is nacked, or acked if its batch was spooled (the spool
    took it) and dead-lettered at replay.
    """
    topic = small_topic(topics, kafka_bootstrap)
    broker = start_broker()
    sender = TopicSender(broker.socket_path, topic)
    values = [large(n) if n % 50 == 25 else ok(n) for n in range(2000)]
    big = {n for n in range(2000) if n % 50 == 25}
    fine = set(range(2000)) - big

    started = time.monotonic()
    for start in range(0, len(values), 100):
        sender.send_values(values[start : start + 100])
        sender.collect(0.01)
    sender.settle(60)
    answered_s = time.monotonic() - started
    sender.close()
    wait_for(lambda: status(broker.socket_path)["spool"]["events"] == 0, 60)
    records = consume(kafka_bootstrap, [topic], len(fine))
    state = status(broker.socket_path)
    dead = Counter(json.loads(line["value"])["id"] for line in dead_letters(state))

    print(
        f"\nall answered in {answered_s:.2f} s: {len(sender.nacked)} nacked, "
        f"{state['sent_again']} sent again, {sum(state['spooled'].values())} spooled"
    )
    assert not sender.acked & set(sender.nacked)
    assert fine <= sender.acked
    assert set(sender.nacked) <= big
    assert all("MessageSizeTooLarge" in r for r in sender.nacked.values())
    assert ids_of(records) == Counter(f"ok-{n}" for n in fine)
    assert dead == Counter(f"big-{n}" for n in big)
    assert state["dead_lettered"] == {"MessageSizeTooLargeError": len(big)}
    assert broker.terminate() == 0


def test_too_large_event_replayed_from_the_spool_is_dead_lettered_once(
    start_broker, topics, kafka_bootstrap
):
    """Spooled while Kafka was away, a too-large event and ten others are
    replayed: the ten reach Kafka once, the large one is dead-lettered once,
    the spool empties and the broker exits 0."""
    topic = small_topic(topics, kafka_bootstrap)
    away = start_broker(bootstrap=f"127.0.0.1:{closed_port()}")
    sender = TopicSender(away.socket_path, topic)
    sender.send_values([ok(n) for n in range(5)])
    sender.send_values([too_large()])
    sender.send_values([ok(n) for n in range(5, 10)])
    sender.settle(30)
    sender.close()
    assert len(sender.acked) == 11, "spooled events are acked as stored"
    assert away.terminate() == 0

    broker = start_broker()
    wait_for(lambda: status(broker.socket_path)["spool"]["events"] == 0, 60)
    records = consume(kafka_bootstrap, [topic], 10)
    state = status(broker.socket_path)
    dead = dead_letters(state)

    assert ids_of(records) == Counter(f"ok-{n}" for n in range(10))
    assert state["replayed"]["topic"] == 10
    assert state["dead_lettered"] == {"MessageSizeTooLargeError": 1}
    assert state["totals"]["failed"] == 0, "settled once already, when spooled"
    assert [json.loads(line["value"])["id"] for line in dead] == ["big"]
    assert broker.terminate() == 0


def test_refused_events_past_the_dead_letter_bound_are_nacked_and_counted(
    start_broker, topics, kafka_bootstrap
):
    """With a dead-letter file of 20,000 bytes, two 8 KiB refused events are
    kept, the next three only counted; all five are nacked either way."""
    topic = small_topic(topics, kafka_bootstrap)
    broker = start_broker("--dead-letter-max-bytes", "20000")
    sender = TopicSender(broker.socket_path, topic)

    for number in range(5):
        sender.send_values([large(number)])
        sender.settle(30)
    sender.close()
    state = status(broker.socket_path)
    dead = dead_letters(state)
    file_bytes = Path(state["dead_letter_path"]).stat().st_size
    full_warnings = [
        line
        for line in log_lines(broker.stderr())
        if line["event"] == "dead_letter_full"
    ]

    assert sorted(sender.nacked) == [0, 1, 2, 3, 4]
    assert state["dead_lettered"] == {"MessageSizeTooLargeError": 5}
    assert state["dead_lettered_not_kept"] == 3
    assert [json.loads(line["value"])["id"] for line in dead] == ["big-0", "big-1"]
    assert file_bytes <= 20_000
    assert len(full_warnings) == 1
    assert broker.terminate() == 0
