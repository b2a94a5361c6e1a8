"""Routing: which topic and partition an event lands in, and what is counted."""

from __future__ import annotations

from pathlib import Path

import pytest

from zlog import protocol
from zlog.broker.config import BrokerConfig
from zlog.broker.daemon import Broker
from zlog.broker.publisher import OpenBatch
from zlog.broker.routing import Routes
from zlog.protocol import EventClass

ROUTES = Routes(application="a.v1", audit="u.v1", security="s.v1")


def make_event(event_class: EventClass, topic: str | None = None) -> protocol.Event:
    return protocol.Event(
        event_class=event_class,
        topic=topic,
        key=b"k",
        headers=[],
        value=b"{}",
        host="h",
        pid=1,
        seq=1,
        wants_ack=False,
    )


@pytest.mark.parametrize(
    ("event_class", "topic"),
    [
        pytest.param(EventClass.APPLICATION, "a.v1", id="application"),
        pytest.param(EventClass.AUDIT, "u.v1", id="audit"),
        pytest.param(EventClass.SECURITY, "s.v1", id="security"),
    ],
)
def test_class_routes_to_its_topic(event_class, topic):
    """Each event class goes to the topic configured for it."""
    assert ROUTES.topic_for(make_event(event_class)) == topic


def test_explicit_topic_wins_over_the_class_table():
    """An event that names its topic is published to that topic."""
    event = make_event(EventClass.TOPIC, topic="custom.topic")

    assert ROUTES.topic_for(event) == "custom.topic"


class FakeBuilder:
    """Stands in for aiokafka's BatchBuilder: holds at most ``capacity`` records."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.records: list[tuple] = []

    def append(self, *, timestamp, key, value, headers):
        if len(self.records) >= self.capacity:
            return None
        self.records.append((key, value, headers))
        return object()


class FakePublisher:
    """Knows the three class topics; partition is the key's length modulo 3."""

    def __init__(self, known: set[str], capacity: int = 1000) -> None:
        self.known = known
        self.capacity = capacity

    def partition_map(self, topic):
        return {} if topic in self.known else None

    def partition_for(self, topic, key):
        return len(key or b"") % 3

    def new_batch(self, topic, partition):
        return OpenBatch(FakeBuilder(self.capacity), topic, partition)


def make_broker(capacity: int = 1000) -> Broker:
    config = BrokerConfig(
        socket_path=Path("/nonexistent/b.sock"),
        application_topic="a.v1",
        audit_topic="u.v1",
        security_topic="s.v1",
        compression="gzip",
    )
    broker = Broker(config)
    broker.publisher = FakePublisher(set(config.topics), capacity)
    broker.replies = []
    broker.reply = lambda identity, frames: broker.replies.append((identity, frames))

    return broker


def route(broker: Broker, messages: list[list[bytes]]) -> tuple:
    """One receive cycle's decoding and routing, without Kafka."""
    return broker._route(broker._decode(messages))


def message(identity: bytes, event_class=EventClass.AUDIT, **fields) -> list[bytes]:
    arguments = {"host": b"h", "pid": 5, "seq": 1, "key": b"tenant"}
    arguments.update(fields)

    return [identity, *protocol.encode_event(event_class, b'{"a":1}', **arguments)]


def test_events_group_into_one_batch_per_topic_partition():
    """Events of one topic and key share a batch; other keys and classes do not."""
    broker = make_broker()
    messages = [
        message(b"id1", seq=1),
        message(b"id1", seq=2),
        message(b"id1", seq=3, key=b"xy"),
        message(b"id2", EventClass.APPLICATION, seq=1, key=b"svc"),
    ]

    full, open_batches, unresolved = route(broker, messages)

    assert full == []
    assert unresolved == {}
    sizes = {tp: len(b.builder.records) for tp, b in open_batches.items()}
    assert sizes == {("u.v1", 0): 2, ("u.v1", 2): 1, ("a.v1", 0): 1}
    assert broker.stats.received[EventClass.AUDIT] == 3


def test_full_batch_is_set_aside_and_a_new_one_opened():
    """When a batch refuses a record, it is queued for sending and a fresh one used."""
    broker = make_broker(capacity=2)
    messages = [message(b"id", seq=seq) for seq in range(1, 6)]

    full, open_batches, _ = route(broker, messages)

    assert [len(b.builder.records) for b in full] == [2, 2]
    assert len(open_batches["u.v1", 0].builder.records) == 1


def test_acks_are_remembered_per_batch_with_identity_and_sequence():
    """A batch knows whom to ack for which event once Kafka answers."""
    broker = make_broker()
    messages = [
        message(b"who", seq=10, wants_ack=True),
        message(b"who", seq=11),
        message(b"else", seq=12, pid=6, wants_ack=True),
    ]

    _, open_batches, _ = route(broker, messages)

    acks = open_batches["u.v1", 0].acks
    assert [(identity, event.seq) for identity, event in acks] == [
        (b"who", 10),
        (b"else", 12),
    ]


def test_unknown_explicit_topic_waits_for_metadata():
    """An event naming a topic without metadata is held for a lookup, not lost."""
    broker = make_broker()
    messages = [
        message(b"id", EventClass.TOPIC, topic=b"other.topic", seq=1),
    ]

    _, open_batches, unresolved = route(broker, messages)

    assert open_batches == {}
    assert list(unresolved) == ["other.topic"]


def test_bad_frames_are_counted_and_the_rest_routed():
    """A malformed message is counted by reason and does not stop the cycle."""
    broker = make_broker()
    messages = [[b"id", b"junk"], message(b"id", seq=1), [b"id"]]

    _, open_batches, _ = route(broker, messages)

    assert broker.stats.bad_frames == {"bad_head": 1, "bad_frame_count": 1}
    assert sum(len(b.builder.records) for b in open_batches.values()) == 1


def test_status_request_is_answered_in_the_cycle():
    """A status request gets a status reply to the identity that asked."""
    broker = make_broker()
    broker.publisher.status = dict

    route(broker, [[b"asker", *protocol.encode_status_request(3)]])

    ((identity, frames),) = broker.replies
    assert identity == b"asker"
    assert protocol.decode_reply(frames).kind is protocol.Kind.STATUS_REPLY


def test_sequence_gaps_are_open_until_confirmed():
    """Skipped numbers are pending at first and missing once confirmed."""
    broker = make_broker()
    messages = [message(b"id", seq=seq) for seq in (1, 2, 5, 6)]

    route(broker, messages)
    pending = broker.stats.status()["sequence"]
    broker.stats.confirm_gaps(0.0)
    confirmed = broker.stats.status()["sequence"]

    assert (pending["missing"], pending["pending"]) == (0, 2)
    assert (confirmed["missing"], confirmed["pending"]) == (2, 0)


def test_late_sequence_number_fills_its_gap():
    """A number arriving after a higher one is out of order, never missing."""
    broker = make_broker()
    messages = [message(b"id", seq=seq) for seq in (1, 3, 2, 4)]

    route(broker, messages)
    broker.stats.confirm_gaps(0.0)

    sequence = broker.stats.status()["sequence"]
    assert (sequence["missing"], sequence["out_of_order"]) == (0, 1)


def drops(counts: dict[str, int], pid: int = 1) -> list[bytes]:
    return [b"id", *protocol.encode_drops(counts, host=b"h", pid=pid)]


def test_drop_reports_add_up_per_origin_and_leave_the_sequence_alone():
    """Drop reports carry increments: they are summed, and they take no number."""
    broker = make_broker()
    reports = [
        drops({"queue_full": 3}),
        message(b"id", pid=1, seq=1),
        drops({"queue_full": 5}),
        message(b"id", pid=1, seq=2),
        drops({"too_big": 1}, pid=2),
    ]

    route(broker, reports)
    broker.stats.confirm_gaps(0.0)

    assert broker.stats.drops_total() == {"queue_full": 8, "too_big": 1}
    sequence = broker.stats.status()["sequence"]
    assert (sequence["missing"], sequence["out_of_order"]) == (0, 0)


def test_drop_reasons_past_the_bound_of_an_origin_count_as_other():
    """An origin names at most MAX_DROP_REASONS reasons; later new ones are other."""
    broker = make_broker()
    bound = protocol.MAX_DROP_REASONS
    reports = [drops({f"r{i}": 1}) for i in range(bound + 3)] + [drops({"r0": 2})]

    route(broker, reports)

    counts = broker.stats.emitter_drops["h:1"]
    assert len(counts) == bound + 1
    assert (counts["other"], counts["r0"]) == (3, 3)
    assert sum(broker.stats.losses.take()["h", 1].values()) == bound + 5


def test_poison_drop_report_is_a_bad_frame_and_counts_nothing():
    """A drop report with reasons of 40 KB each is refused as bad_drops."""
    broker = make_broker()

    route(broker, [drops({"a" * 40_000: 1, "b" * 40_000: 1})])

    assert broker.stats.bad_frames == {"bad_drops": 1}
    assert broker.stats.emitter_drops == {}
    assert broker.stats.losses.take() == {}


def test_gaps_and_emitter_drops_reach_the_loss_ledger_by_origin():
    """What the broker knows lost is kept per origin and reason, and taken once."""
    broker = make_broker()
    messages = [
        message(b"id", pid=1, seq=1),
        message(b"id", pid=1, seq=4),
        drops({"queue_full": 3}, pid=2),
    ]

    route(broker, messages)
    broker.stats.confirm_gaps(0.0)
    taken = broker.stats.losses.take()

    assert taken == {
        ("h", 1): {"sequence_gap": 2},
        ("h", 2): {"emitter_queue_full": 3},
    }
    assert broker.stats.losses.take() == {}
