"""Kafka refusing for good: a topic it lacks, a topic the broker may not write.

One private Kafka serves this module: automatic topic creation off, the
standard authorizer on, and a SASL_PLAINTEXT listener whose one user has only
the ACLs a test grants. The PLAINTEXT listener is the super user's: tests
create topics and grant ACLs through it, and brokers use it when they need no
authorization. Each expectation is the same: one log line naming the topic
and the reason, a count, a dead-letter line and a nack per event, and no
retry, while the other topics go on.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.client import AIOKafkaClient
from aiokafka.protocol.admin import CreateAclsRequest
from kafka_helpers import consume, private_kafka_port

from zlog import protocol

from .test_metrics import free_port, scrape
from .test_reliability import (
    KAFKA_SCRIPT,
    AckingSender,
    ids_of,
    log_lines,
    send_to_topic,
    status,
)

pytestmark = pytest.mark.kafka

AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"

# The SASL listener sits this far above the PLAINTEXT port (scripts/kafka).
SASL_PORT_OFFSET = 200

# CreateAcls codes: resource TOPIC, pattern LITERAL, permission ALLOW, and the
# operations (DESCRIBE alone lets a client see a topic, not write it).
TOPIC, LITERAL, ALLOW = 2, 3, 3
WRITE, DESCRIBE = 4, 8

# A broker refusing to start says so within this bound.
START_REFUSAL_TIMEOUT_S = 60


@dataclass(frozen=True)
class GuardedKafka:
    """A private Kafka with ACLs: its two listeners and its one SASL user."""

    plain: str
    sasl: str
    user: str
    password: str


@pytest.fixture(scope="module")
def guarded_kafka() -> Iterator[GuardedKafka]:
    """A Kafka that creates no topics and checks ACLs; stopped at the end."""
    port = kafka_port()
    command = [sys.executable, KAFKA_SCRIPT]
    options = [
        "--port",
        str(port),
        "--set",
        "auto.create.topics.enable=false",
        "--set",
        f"authorizer.class.name={AUTHORIZER}",
        "--sasl-plain-user",
        "zlog:zlog-secret",
    ]
    subprocess.run([*command, "start", *options], check=True, timeout=180)
    try:
        yield GuardedKafka(
            plain=f"127.0.0.1:{port}",
            sasl=f"127.0.0.1:{port + SASL_PORT_OFFSET}",
            user="zlog",
            password="zlog-secret",
        )
    finally:
        subprocess.run([*command, "stop", "--port", str(port)], timeout=120)


def kafka_port() -> int:
    """A free port whose controller (+100) and SASL (+200) ports are free too."""
    return private_kafka_port(100, SASL_PORT_OFFSET)


def create_topics(bootstrap: str, *names: str) -> None:
    """Create one-partition topics as the super user."""

    async def create() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(name, 1, 1) for name in names])
        finally:
            await admin.close()

    asyncio.run(create())


def grant(bootstrap: str, user: str, operation: int, *topics: str) -> None:
    """Allow ``user`` one operation on each topic, as the super user."""

    async def create_acls() -> None:
        client = AIOKafkaClient(bootstrap_servers=bootstrap)
        await client.bootstrap()
        try:
            for topic in topics:
                request = CreateAclsRequest(
                    TOPIC, topic, LITERAL, f"User:{user}", "*", operation, ALLOW
                )
                response = await client.send(client.get_random_node(), request)
                assert [r[0] for r in response.creation_responses] == [0]
        finally:
            await client.close()

    asyncio.run(create_acls())


def sasl_flags(kafka: GuardedKafka, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Broker flags to connect as the SASL user (the password goes by env)."""
    monkeypatch.setenv("ZLOG_KAFKA_SASL_PASSWORD", kafka.password)

    return [
        "--security-protocol",
        "SASL_PLAINTEXT",
        "--sasl-mechanism",
        "PLAIN",
        "--sasl-username",
        kafka.user,
    ]


def lines_naming(stderr: str, topic: str) -> list[dict]:
    """The broker's log lines that name ``topic`` anywhere."""
    return [line for line in log_lines(stderr) if topic in json.dumps(line)]


def refused_at_start(broker) -> dict:
    """Wait for a broker's exit; return its one ``refused`` line."""
    started_s = time.monotonic()
    assert broker.process.wait(timeout=START_REFUSAL_TIMEOUT_S) == 2
    print(f"\nexit 2 after {time.monotonic() - started_s:.1f} s")
    refused = [
        line for line in log_lines(broker.stderr()) if line["event"] == "refused"
    ]
    assert len(refused) == 1, broker.stderr()

    return refused[0]


@dataclass
class Outcome:
    """What a broker did with refused events among acked class events."""

    broker: object
    sender: AckingSender
    replies: dict[str, dict]
    state: dict
    samples: dict
    ids: dict[str, int]
    per_topic: int


def run_beside_refusals(
    broker, metrics: str, kafka: GuardedKafka, refused: list[str], per_topic: int
) -> Outcome:
    """200 acked class events, events for each refused topic, 200 more."""
    sender = AckingSender(broker.socket_path, proc=6)
    sender.send(200)
    replies = {}
    for topic in refused:
        values = [b'{"id":"refused-%d"}' % i for i in range(per_topic)]
        started_s = time.monotonic()
        replies[topic] = send_to_topic(broker.socket_path, topic, values)
        elapsed_s = time.monotonic() - started_s
        print(f"\n{topic}: {per_topic} events answered in {elapsed_s:.3f} s")
    sender.send(200)
    sender.settle(30)
    sender.close()
    state = status(broker.socket_path)
    samples = scrape(metrics)
    records = consume(kafka.plain, broker.topics.all(), 400)

    return Outcome(broker, sender, replies, state, samples, ids_of(records), per_topic)


def assert_refused_once_each(
    outcome: Outcome, reasons: dict[str, str], label: str
) -> None:
    """Each refused topic: nacks, one log line, dead letters, a count, no
    retry; and every class event acked and in Kafka once.
    """
    state, per_topic = outcome.state, outcome.per_topic
    stderr = outcome.broker.stderr()
    dead = log_lines(Path(state["dead_letter_path"]).read_text())
    for topic, reason in reasons.items():
        replies = outcome.replies[topic]
        assert sorted(replies) == list(range(1, per_topic + 1))
        for kind, body in replies.values():
            assert kind is protocol.Kind.NACK
            assert reason in body and topic in body
        logged = lines_naming(stderr, topic)
        assert [(line["event"], line["level"]) for line in logged] == [
            ("kafka_rejected", "warning")
        ]
        assert reason in logged[0]["reason"]
        kept = [d for d in dead if d["topic"] == topic]
        assert len(kept) == per_topic
        assert all(reason in d["reason"] for d in kept)
    refused = per_topic * len(reasons)
    assert state["failed"]["topic"] == refused
    assert state["dead_lettered"] == {label: refused}
    metric = "zlog_broker_events_dead_lettered_total", (("reason", label),)
    assert outcome.samples[metric] == refused
    # Nothing went to the spool: a refusal is final, not retried later.
    assert state["totals"]["spooled"] == 0
    assert state["spool"]["events"] == 0
    assert state["kafka"]["state"] == "connected"
    assert len(outcome.sender.acked) == outcome.sender.sent == 400
    assert len(outcome.ids) == 400 and sum(outcome.ids.values()) == 400


def test_event_for_a_topic_kafka_lacks_is_refused_once_and_not_retried(
    start_broker, topics, guarded_kafka
):
    """Automatic creation off: events naming a missing topic are nacked with
    the reason, dead-lettered, counted and logged once; other topics go on.
    """
    create_topics(guarded_kafka.plain, *topics.all())
    metrics = f"127.0.0.1:{free_port()}"
    broker = start_broker(
        "--no-create-topics",
        "--metrics-address",
        metrics,
        bootstrap=guarded_kafka.plain,
    )
    missing = f"{topics.application}.missing"

    outcome = run_beside_refusals(
        broker, metrics, guarded_kafka, [missing], per_topic=5
    )

    assert_refused_once_each(
        outcome, {missing: "does not exist in Kafka"}, "UnknownTopicOrPartitionError"
    )
    assert broker.terminate() == 0


def test_class_topic_kafka_lacks_stops_the_start_naming_it(
    start_broker, topics, guarded_kafka
):
    """With --no-create-topics, a missing class topic is a setting to fix:
    the broker exits 2 with one line naming the topic and the remedy.
    """
    create_topics(guarded_kafka.plain, topics.application, topics.security)

    broker = start_broker(
        "--no-create-topics", bootstrap=guarded_kafka.plain, wait=False
    )
    refused = refused_at_start(broker)

    print(f"\nrefused: {refused['reason']}")
    assert topics.audit in refused["reason"]
    assert "does not exist in Kafka" in refused["reason"]
    assert "--create-topics" in refused["reason"]


def test_topics_the_broker_may_not_write_are_refused_once_each_and_not_retried(
    start_broker, topics, guarded_kafka, monkeypatch
):
    """As a SASL user allowed only its class topics: events naming a topic it
    may not see, or may see but not write, are nacked with Kafka's refusal,
    dead-lettered, counted and logged once per topic; the class topics go on.
    """
    hidden = f"{topics.application}.hidden"
    read_only = f"{topics.application}.read-only"
    create_topics(guarded_kafka.plain, *topics.all(), hidden, read_only)
    grant(guarded_kafka.plain, guarded_kafka.user, WRITE, *topics.all())
    grant(guarded_kafka.plain, guarded_kafka.user, DESCRIBE, read_only)
    metrics = f"127.0.0.1:{free_port()}"
    broker = start_broker(
        "--no-create-topics",
        "--metrics-address",
        metrics,
        *sasl_flags(guarded_kafka, monkeypatch),
        bootstrap=guarded_kafka.sasl,
    )

    outcome = run_beside_refusals(
        broker, metrics, guarded_kafka, [hidden, read_only], per_topic=3
    )

    refusal = "TopicAuthorizationFailed"
    assert_refused_once_each(
        outcome,
        {hidden: refusal, read_only: refusal},
        "TopicAuthorizationFailedError",
    )
    assert broker.terminate() == 0


def test_class_topic_the_broker_may_not_write_stops_the_start_naming_it(
    start_broker, topics, guarded_kafka, monkeypatch
):
    """A SASL user without ACLs: the broker exits 2 with one line naming the
    topic, the user and the permissions to grant.
    """
    create_topics(guarded_kafka.plain, *topics.all())

    broker = start_broker(
        *sasl_flags(guarded_kafka, monkeypatch),
        bootstrap=guarded_kafka.sasl,
        wait=False,
    )
    refused = refused_at_start(broker)

    print(f"\nrefused: {refused['reason']}")
    assert topics.application in refused["reason"]
    assert f"User:{guarded_kafka.user}" in refused["reason"]
    assert "grant it WRITE and DESCRIBE" in refused["reason"]
