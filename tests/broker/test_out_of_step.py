"""A producer whose record numbers Kafka refuses for good, with real Kafka.

After Kafka restarts with batches in flight, the producer's numbers for a
partition and Kafka's can part for good: Kafka wrote a batch the producer
saw fail, and every later batch is refused as out of order. The events are
not at fault. The publisher spools the refused batch and retires the
producer; a new one (new producer id, numbers from 0) sends them. Here the
numbers are pushed apart by hand, the way a rewind after such a batch does.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from aiokafka.structs import TopicPartition
from kafka_helpers import consume
from structlog.testing import capture_logs

from zlog import protocol
from zlog.broker.config import BrokerConfig
from zlog.broker.publisher import Publisher
from zlog.broker.stats import Stats
from zlog.protocol import EventClass

pytestmark = pytest.mark.kafka


def audit_events(first: int, count: int) -> list[protocol.Event]:
    return [
        protocol.Event(
            EventClass.AUDIT, "", b"tenant", [], b'{"n":%d}' % n, "h", 1, n, False
        )
        for n in range(first, first + count)
    ]


async def submit(publisher: Publisher, topic: str, events: list) -> asyncio.Future:
    batch = publisher.new_batch(topic, 0)
    now_ms = int(time.time() * 1000)
    for event in events:
        assert batch.add(None, event, now_ms)

    return await publisher.submit(batch)


async def until(condition, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def test_a_producer_out_of_step_is_replaced_and_nothing_is_dead_lettered(
    kafka_bootstrap, topics
):
    """Refused out of order past the resends: spooled, not dead-lettered; the
    producer is retired, and a new one publishes the events."""
    spilled: list[list[protocol.Event]] = []
    rejected: list[str] = []
    config = BrokerConfig(
        socket_path=Path("/nonexistent/b.sock"),
        bootstrap_servers=kafka_bootstrap,
        application_topic=topics.application,
        audit_topic=topics.audit,
        security_topic=topics.security,
        topic_partitions=1,
    )
    publisher = Publisher(
        config,
        Stats(),
        lambda identity, frames: None,
        spill=lambda batch, reason: spilled.append(list(batch.events)),
        reject=lambda batch, reason: rejected.append(reason),
    )

    async def scenario() -> list[str]:
        await publisher.start()
        await (await submit(publisher, topics.audit, audit_events(0, 3)))
        # A hole of 10 in the numbers, as a rewind past a written batch leaves.
        numbers = publisher.producer._txn_manager
        numbers.increment_sequence_number(TopicPartition(topics.audit, 0), 10)
        with capture_logs() as logs:
            await submit(publisher, topics.audit, audit_events(3, 4))
            await until(lambda: not publisher.connected and spilled, 60)
            await until(lambda: not publisher._retiring, 60)
        await publisher.start()
        again = await submit(publisher, topics.audit, spilled[0])
        await asyncio.wait_for(again, 60)
        await publisher.stop(10)

        return [log["event"] for log in logs if log["log_level"] == "warning"]

    warnings = asyncio.run(scenario())
    records = consume(kafka_bootstrap, [topics.audit], 7, timeout_s=60)

    assert rejected == []
    assert [e.seq for e in spilled[0]] == [3, 4, 5, 6]
    assert "producer_replaced" in warnings
    assert publisher.stats.producers_replaced == 1
    assert sorted(json.loads(r.value)["n"] for r in records) == list(range(7))
