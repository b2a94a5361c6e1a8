"""The publisher's parts around the producer: how a batch refused as too
large is split, how an acked batch Kafka does not answer in time is
spooled, how topics are created and topic limits learned (Kafka's answers
stood in for)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import pytest
from aiokafka.admin.config_resource import ConfigResourceType
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NotLeaderForPartitionError,
    OutOfOrderSequenceNumber,
    RequestTimedOutError,
    TopicAuthorizationFailedError,
)
from structlog.testing import capture_logs

from zlog import protocol
from zlog.broker import publisher as publisher_module
from zlog.broker.config import BrokerConfig
from zlog.broker.idempotence import SequenceRewind
from zlog.broker.publisher import OpenBatch, Publisher, not_written, split_too_large
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
    # The producer stand-in never reads the builder; the limit check asks
    # only its size.
    builder = SimpleNamespace(size=lambda: 0)
    batch = OpenBatch(builder=builder, topic="t.audit", partition=0)
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


class ConfigAdmin:
    """Answers DescribeConfigs as Kafka would, for the limits it is given.

    A topic not in ``topics`` is refused (topic authorization failed); the
    brokers' default is given when ``broker_bytes`` is not None.
    """

    def __init__(self, topics: dict[str, int], broker_bytes: int | None) -> None:
        self.topics = topics
        self.broker_bytes = broker_bytes

    async def describe_configs(self, resources: list) -> list:
        answers = []
        for resource in resources:
            (name,) = resource.configs
            value = self.topics.get(resource.name, self.broker_bytes)
            if resource.resource_type is ConfigResourceType.BROKER and value:
                answers.append((0, "", 4, resource.name, [(name, str(value))]))
            elif resource.name in self.topics:
                answers.append((0, "", 2, resource.name, [(name, str(value))]))
            else:
                answers.append((29, "not authorized", 2, resource.name, []))

        return [SimpleNamespace(resources=answers)]

    async def describe_cluster(self) -> dict:
        return {"brokers": [{"node_id": 1}]}


def publisher(compression: str = "none") -> Publisher:
    config = BrokerConfig(
        socket_path=Path("/nonexistent/b.sock"), compression=compression
    )

    return Publisher(config, Stats(), None, spill=None, reject=None)


def test_limits_read_at_start_bound_batches_and_refuse_events():
    """A topic's max.message.bytes read from Kafka bounds its batches; a
    topic Kafka will not describe is unknown: nothing is refused for it."""
    subject = publisher()
    admin = ConfigAdmin({"t.small": 2048}, broker_bytes=None)

    with capture_logs() as logs:
        asyncio.run(subject._learn_limits(admin, ["t.small", "t.secret"]))

    assert subject.limits.status() == {"t.small": 2048, "t.secret": None}
    assert subject.limits.batch_bytes("t.small") == 2048
    assert subject.limits.refusing == {"t.small": 2048}
    assert [log["event"] for log in logs] == ["topic_limit_unknown"]
    assert logs[0]["topics"] == ["t.secret"]


def test_the_brokers_default_bounds_batches_of_a_topic_not_described():
    """Where a topic's own limit cannot be read, the brokers' default bounds
    its batches; it refuses nothing, as the topic may allow more."""
    subject = publisher()
    admin = ConfigAdmin({}, broker_bytes=4096)

    with capture_logs():
        asyncio.run(subject._learn_limits(admin, ["t.secret"]))

    assert subject.limits.broker_default_bytes == 4096
    assert subject.limits.batch_bytes("t.secret") == 4096
    assert subject.limits.refusing == {}


def test_a_limit_read_before_is_kept_when_it_cannot_be_read_again():
    """A refresh that fails keeps the limit known before."""
    subject = publisher()
    asyncio.run(subject._learn_limits(ConfigAdmin({"t": 2048}, None), ["t"]))

    with capture_logs():
        asyncio.run(subject._learn_limits(ConfigAdmin({}, None), ["t"]))

    assert subject.limits.limit_of("t") == 2048


class CreatingAdmin:
    """Creates topics after ``no_controller`` calls that fail the way
    aiokafka's admin client does while Kafka names no controller; then
    describes each topic with the code in ``shown``."""

    def __init__(self, no_controller: int, shown: dict[str, int]) -> None:
        self.no_controller = no_controller
        self.shown = shown
        self.create_calls = 0

    async def create_topics(self, new_topics: list) -> SimpleNamespace:
        self.create_calls += 1
        if self.create_calls <= self.no_controller:
            raise AttributeError("'NoneType' object has no attribute 'nodeId'")
        return SimpleNamespace(topic_errors=[(t.name, 0, None) for t in new_topics])

    async def describe_topics(self, topics: list[str]) -> list[dict]:
        return [{"topic": t, "error_code": self.shown[t]} for t in topics]


TOPICS = ("t.app", "t.audit", "t.security")


def creating_publisher(monkeypatch) -> Publisher:
    monkeypatch.setattr(publisher_module, "TOPIC_LOOKUP_TIMEOUT_S", 0.3)
    monkeypatch.setattr(publisher_module, "TOPIC_LOOKUP_INTERVAL_S", 0.01)
    config = BrokerConfig(
        socket_path=Path("/nonexistent/b.sock"),
        application_topic="t.app",
        audit_topic="t.audit",
        security_topic="t.security",
        create_topics=True,
    )

    return Publisher(config, Stats(), None, spill=None, reject=None)


def test_topics_are_created_once_kafka_names_a_controller(monkeypatch):
    """The admin client's AttributeError while Kafka has no controller yet is
    waited out, and the topics are then created."""
    subject = creating_publisher(monkeypatch)
    admin = CreatingAdmin(no_controller=3, shown=dict.fromkeys(TOPICS, 0))

    asyncio.run(subject._ensure_topics(admin))

    assert admin.create_calls == 4


def test_no_controller_for_long_is_kafka_unavailable_not_a_crash(monkeypatch):
    """A Kafka that names no controller within the bound is a KafkaError the
    daemon spools through, not an AttributeError that ends the broker."""
    subject = creating_publisher(monkeypatch)
    admin = CreatingAdmin(no_controller=10**6, shown=dict.fromkeys(TOPICS, 0))

    with pytest.raises(KafkaError, match="no controller"):
        asyncio.run(subject._ensure_topics(admin))


def test_a_created_topic_not_shown_yet_is_retried_not_refused(monkeypatch):
    """A broker that creates topics does not say it does not: a topic
    unknown after creation is Kafka being slow, tried again later."""
    subject = creating_publisher(monkeypatch)
    admin = CreatingAdmin(no_controller=0, shown=dict.fromkeys(TOPICS, 3))

    codes = asyncio.run(subject._describe_topics(admin))
    with pytest.raises(KafkaError, match="was created but Kafka does not show it"):
        subject._check_topic("t.app", codes["t.app"])


class StoppedProducer:
    """Stops at once, leaving whatever it had in flight unanswered."""

    async def stop(self) -> None:
        return None


def test_a_retired_producer_leaves_no_batch_unanswered():
    """A batch the retired producer never answered fails as retriable, so
    its held events do not wait in the spool for good."""
    subject = publisher()

    async def retire() -> list:
        loop = asyncio.get_running_loop()
        answered, unanswered = loop.create_future(), loop.create_future()
        answered.set_result(None)
        await subject._retire(StoppedProducer(), [answered, unanswered])
        return [answered.exception(), unanswered.exception()]

    errors = asyncio.run(retire())

    assert errors[0] is None
    assert isinstance(errors[1], KafkaConnectionError)
    assert publisher_module.is_retriable(errors[1])


@pytest.mark.parametrize(
    ("exc", "refused"),
    [
        (MessageSizeTooLargeError(), True),
        (TopicAuthorizationFailedError(), True),
        (OutOfOrderSequenceNumber(), True),
        (KafkaConnectionError(), False),
        (RequestTimedOutError(), False),
        (NotLeaderForPartitionError(), False),
        (KafkaTimeoutError(), False),
    ],
)
def test_only_a_refusal_says_kafka_did_not_write_a_batch(exc, refused):
    """A refusal gives the batch's record numbers back; a timeout, a lost
    connection or a leader change may hide a written batch, so it does not."""
    assert not_written(exc) is refused


class RecordingRewind:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def written(self, topic: str, partition: int) -> None:
        self.calls.append("written")

    def failed(self, topic: str, partition: int, builder: object) -> None:
        self.calls.append("failed")


def test_a_batch_timed_out_keeps_its_record_numbers():
    """Settling a batch that failed without Kafka saying it was not written
    leaves the numbers taken; a refused one gives them back."""
    subject = Publisher(
        BrokerConfig(socket_path=Path("/nonexistent/b.sock")),
        Stats(),
        None,
        spill=lambda batch, reason: None,
        reject=lambda batch, reason: None,
    )

    async def settle(exc: BaseException) -> list[str]:
        rewind = RecordingRewind()
        batch = OpenBatch(SimpleNamespace(size=lambda: 0), "t.audit", 0)
        batch.answer = publisher_module.Answer(
            asyncio.get_running_loop().create_future()
        )
        future = asyncio.get_running_loop().create_future()
        future.set_exception(exc)
        subject._settle(batch, future, rewind)
        return rewind.calls

    async def both() -> tuple[list[str], list[str]]:
        return await settle(RequestTimedOutError()), await settle(
            TopicAuthorizationFailedError()
        )

    timed_out, refused = asyncio.run(both())

    assert timed_out == []
    assert refused == ["failed"]
