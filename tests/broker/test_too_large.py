"""Events too large for their topic, beside events that are not, with real Kafka.

The broker reads each topic's max.message.bytes, bounds its batches by it
and refuses an event too large even alone before sending it: nacked and
dead-lettered, never acked. Where the limit it read is out of date, Kafka
refuses a whole batch when one record in it is too large, and the broker
sends the other events again, so only the too-large event is nacked. Every
event is settled once: each test counts the replies, reads the topic back by
id and reads the dead-letter file.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.producer.message_accumulator import BatchBuilder
from kafka_helpers import consume

from zlog import protocol
from zlog.broker.limits import alone_bytes
from zlog.protocol import EventClass

from .test_reliability import (
    AckingSender,
    closed_port,
    create_topic,
    ids_of,
    log_lines,
    lower_topic_limit,
    status,
    too_large,
    wait_for,
)

pytestmark = pytest.mark.kafka

# Small enough that one event of too_large() is refused on its own.
TOPIC_MAX_MESSAGE_BYTES = "2048"

HEADERS = protocol.encode_headers([("x-tenant", b"t")])


class TopicSender(AckingSender):
    """Sends the given envelopes to one topic; each asks for an ack.

    Replies are kept by index in the order sent (``acked``, ``nacked``).
    """

    def __init__(self, socket_path: Path, topic: str | None) -> None:
        super().__init__(socket_path, proc=7)
        # None: the events are application events, sent to that class's topic.
        self.topic = topic.encode() if topic else b""

    def send_values(self, values: list[bytes], key: bytes = b"") -> None:
        event_class = EventClass.TOPIC if self.topic else EventClass.APPLICATION
        for value in values:
            self.sent += 1
            self.dealer.send_multipart(
                protocol.encode_event(
                    event_class,
                    value,
                    host=b"test",
                    pid=self.proc,
                    seq=self.sent,
                    topic=self.topic,
                    key=key,
                    headers=HEADERS,
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


def ten_and_a_large_one(broker, topic: str, kafka_bootstrap: str, before=None):
    """Send one event; then, after ``before()`` if given, ten events and a
    too-large one (sixth) in one cycle. Returns the sender, the ids in
    Kafka, the status and the ids dead-lettered."""
    sender = TopicSender(broker.socket_path, topic)
    # Kafka writes one event of the partition first, so a refusal that
    # follows would also leave the producer's record numbers out of step.
    sender.send_values([ok(0)])
    sender.settle(30)
    if before is not None:
        before()

    # Stopped, the broker takes everything sent meanwhile in one cycle.
    os.kill(broker.process.pid, signal.SIGSTOP)
    try:
        sender.send_values([ok(n) for n in range(1, 6)] + [too_large()])
        sender.send_values([ok(n) for n in range(6, 11)])
    finally:
        os.kill(broker.process.pid, signal.SIGCONT)
    sender.settle(30)
    sender.close()
    records = consume(kafka_bootstrap, [topic], 11)
    state = status(broker.socket_path)
    dead = [json.loads(line["value"])["id"] for line in dead_letters(state)]

    return sender, ids_of(records), state, dead


def test_a_too_large_event_among_others_in_one_cycle_is_refused_before_sending(
    start_broker, topics, kafka_bootstrap
):
    """Ten events and a too-large one taken in one cycle: the ten are in
    Kafka once and acked, the large one is nacked and dead-lettered without
    Kafka being asked, nothing is sent again."""
    topic = small_topic(topics, kafka_bootstrap)
    broker = start_broker()

    sender, ids, state, dead = ten_and_a_large_one(broker, topic, kafka_bootstrap)

    assert sender.acked == set(range(12)) - {6}
    assert list(sender.nacked) == [6]
    assert "refused before sending" in sender.nacked[6]
    assert "MessageSizeTooLarge" in sender.nacked[6]
    assert ids == Counter(f"ok-{n}" for n in range(11))
    assert state["sent_again"] == 0
    assert state["kafka"]["max_message_bytes"][topic] == 2048
    assert state["dead_lettered"] == {"MessageSizeTooLargeError": 1}
    assert dead == ["big"]
    assert broker.terminate() == 0


def test_a_batch_refused_after_the_limit_was_lowered_is_sent_again_in_pieces(
    start_broker, topics, kafka_bootstrap
):
    """The topic's limit lowered after the broker read it: Kafka refuses the
    cycle's batch of ten events and a too-large one; the ten are sent again
    and in Kafka once and acked, only the large one is nacked."""
    topic = f"{topics.application}.lowered"
    create_topic(kafka_bootstrap, topic)
    broker = start_broker()

    sender, ids, state, dead = ten_and_a_large_one(
        broker,
        topic,
        kafka_bootstrap,
        before=lambda: lower_topic_limit(kafka_bootstrap, topic, 2048),
    )

    print(f"\nnacked {sender.nacked}, sent again {state['sent_again']}")
    assert sender.acked == set(range(12)) - {6}
    assert list(sender.nacked) == [6]
    assert "MessageSizeTooLarge" in sender.nacked[6]
    assert ids == Counter(f"ok-{n}" for n in range(11))
    assert state["sent_again"] >= 2, "the large event shared a batch with others"
    assert state["dead_lettered"] == {"MessageSizeTooLargeError": 1}
    assert state["failed"]["topic"] == 1
    assert dead == ["big"]
    # Kafka's refusal made the broker read the limit again.
    wait_for(
        lambda: status(broker.socket_path)["kafka"]["max_message_bytes"][topic] == 2048,
        30,
    )
    assert broker.terminate() == 0


def large(number: int) -> bytes:
    """A too-large envelope with its own id: random bytes, base64."""
    pad = base64.b64encode(os.urandom(6000))

    return b'{"id":"big-%d","pad":"%s"}' % (number, pad)


def test_a_stream_with_too_large_events_loses_and_duplicates_nothing(
    start_broker, topics, kafka_bootstrap
):
    """2,000 events sent without waiting for replies, one in fifty too large:
    each event gets one reply, each normal one is in Kafka once and acked,
    each large one is nacked and dead-lettered once, nothing is sent again
    or spooled."""
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
    assert sender.acked == fine
    assert set(sender.nacked) == big
    assert all("MessageSizeTooLarge" in r for r in sender.nacked.values())
    assert ids_of(records) == Counter(f"ok-{n}" for n in fine)
    assert dead == Counter(f"big-{n}" for n in big)
    assert state["dead_lettered"] == {"MessageSizeTooLargeError": len(big)}
    assert state["sent_again"] == 0
    assert sum(state["spooled"].values()) == 0
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


# Pads of the envelopes in a mixed stream, straddling 2 KiB as an outside
# tester's did: uncompressed, the first four fit the topic alone, the others
# do not; a codec shrinks all of them below it.
PADS = [100, 300, 1500, 1900, 1990, 2000, 2100, 2500, 8000]
MIXED_EVENTS = 1500


def padded(number: int, pad: int) -> bytes:
    return b'{"id":"ev-%d","pad":"%s"}' % (number, b"x" * pad)


@pytest.mark.parametrize(
    ("options", "compressed"),
    [
        pytest.param(("--compression", "none"), False, id="uncompressed"),
        pytest.param((), True, id="default-codec"),
    ],
)
def test_a_mixed_stream_never_acks_an_event_too_large_for_its_topic(
    start_broker, topics, kafka_bootstrap, options, compressed
):
    """1,500 application events with one key, sent without waiting for
    replies to a one-partition topic of max.message.bytes 2048, about half
    of them over it uncompressed and one in ten random (over it whatever the
    codec): each event too large as sent is nacked and dead-lettered, never
    acked; each other one is acked and in Kafka once; nothing is sent again
    or spooled, and every reply comes within the bound."""
    create_topic(
        kafka_bootstrap,
        topics.application,
        **{"max.message.bytes": TOPIC_MAX_MESSAGE_BYTES},
    )
    broker = start_broker(*options)
    sender = TopicSender(broker.socket_path, None)
    values, big = [], set()
    for number in range(MIXED_EVENTS):
        pad = PADS[number % len(PADS)]
        if number % 10 == 3:
            values.append(large(number))
            big.add(number)
        else:
            values.append(padded(number, pad))
            if pad >= 1990 and not compressed:
                big.add(number)
    fine = set(range(MIXED_EVENTS)) - big

    started = time.monotonic()
    for start in range(0, MIXED_EVENTS, 100):
        sender.send_values(values[start : start + 100], key=b"samekey")
        sender.collect(0)
    sender.settle(60)
    answered_s = time.monotonic() - started
    sender.close()
    records = consume(kafka_bootstrap, [topics.application], len(fine))
    state = status(broker.socket_path)
    dead = Counter(json.loads(line["value"])["id"] for line in dead_letters(state))

    print(
        f"\n{len(big)} of {MIXED_EVENTS} too large, all answered in "
        f"{answered_s:.2f} s, {state['sent_again']} sent again"
    )
    assert set(sender.nacked) == big
    assert sender.acked == fine
    assert all("refused before sending" in r for r in sender.nacked.values())
    ids = ids_of(records)
    assert ids == Counter(f"ev-{n}" for n in fine)
    assert dead == Counter(f"big-{n}" if n % 10 == 3 else f"ev-{n}" for n in big)
    assert state["dead_lettered"] == {"MessageSizeTooLargeError": len(big)}
    assert state["sent_again"] == 0
    assert sum(state["spooled"].values()) == 0
    assert state["kafka"]["max_message_bytes"][topics.application] == 2048
    assert broker.terminate() == 0


def sized(name: bytes, batch_bytes: int) -> bytes:
    """An envelope whose batch alone, uncompressed, is ``batch_bytes``."""
    headers = protocol.decode_headers(HEADERS)
    pad = batch_bytes
    value = b""
    while not value or alone_bytes(event_of(value, headers)) > batch_bytes:
        pad -= 1
        value = b'{"id":"%s","pad":"%s"}' % (name, b"x" * pad)
    builder = BatchBuilder(1 << 20, 0)
    builder.append(timestamp=0, key=None, value=value, headers=headers)
    assert len(builder._build()) == batch_bytes

    return value


def event_of(value: bytes, headers: list) -> protocol.Event:
    return protocol.Event(EventClass.TOPIC, "t", None, headers, value, "h", 1, 1, True)


def kafka_refusal(bootstrap: str, topic: str, value: bytes) -> str | None:
    """What Kafka answers to ``value`` alone, uncompressed, from a producer
    of the test's own: None when it took it, else the error's name."""

    async def send() -> str | None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        try:
            headers = protocol.decode_headers(HEADERS)
            await producer.send_and_wait(topic, value, headers=headers)
        except KafkaError as exc:
            return type(exc).__name__
        finally:
            await producer.stop()

        return None

    return asyncio.run(send())


def test_an_event_at_the_limit_is_published_and_one_byte_more_is_refused(
    start_broker, topics, kafka_bootstrap
):
    """Uncompressed, an event whose batch alone is exactly the topic's
    max.message.bytes is published; one byte more is refused before
    sending, as Kafka itself refuses it."""
    topic = small_topic(topics, kafka_bootstrap)
    broker = start_broker("--compression", "none")
    sender = TopicSender(broker.socket_path, topic)
    at_limit, over = sized(b"at", 2048), sized(b"over", 2049)

    sender.send_values([at_limit])
    sender.settle(30)
    sender.send_values([over])
    sender.settle(30)
    sender.close()
    records = consume(kafka_bootstrap, [topic], 1)

    assert sender.acked == {0}
    assert list(sender.nacked) == [1]
    assert "refused before sending" in sender.nacked[1]
    assert ids_of(records) == Counter(["at"])
    assert kafka_refusal(kafka_bootstrap, topic, over) == "MessageSizeTooLargeError"
    assert broker.terminate() == 0


def test_events_too_large_arriving_while_the_broker_spools_are_nacked_not_spooled(
    start_broker, topics, kafka_bootstrap, socket_path
):
    """A broker that starts with 5,000 events to replay spools new events
    behind them, after it read its topics' limits: the new events too large
    for the application topic are nacked and dead-lettered, never spooled
    and acked; the others are spooled, acked and in Kafka once."""
    create_topic(
        kafka_bootstrap,
        topics.application,
        **{"max.message.bytes": TOPIC_MAX_MESSAGE_BYTES},
    )
    away = start_broker(bootstrap=f"127.0.0.1:{closed_port()}")
    filler = AckingSender(away.socket_path, proc=1)
    filler.send(5000, EventClass.AUDIT)
    filler.settle(30)
    filler.close()
    assert away.terminate() == 0

    broker = start_broker(wait=False)
    # Queued before the broker serves, they are taken while it still spools.
    sender = TopicSender(socket_path, None)
    values = [large(n) if n % 4 == 1 else ok(n) for n in range(200)]
    big = {n for n in range(200) if n % 4 == 1}
    sender.send_values(values)
    sender.settle(60)
    sender.close()
    wait_for(lambda: status(broker.socket_path)["spool"]["events"] == 0, 60)
    records = consume(kafka_bootstrap, [topics.application], 150)
    state = status(broker.socket_path)

    assert state["spooled"]["application"] == 150, "taken while spooling"
    assert set(sender.nacked) == big
    assert sender.acked == set(range(200)) - big
    assert ids_of(records) == Counter(f"ok-{n}" for n in range(200) if n not in big)
    assert state["dead_lettered"] == {"MessageSizeTooLargeError": len(big)}
    assert broker.terminate() == 0
