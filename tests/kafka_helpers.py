"""Reading what the broker wrote, and ports for private Kafka nodes."""

from __future__ import annotations

import asyncio
import random
import socket
import time

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

# Linux hands out ephemeral ports from 32768 up. A private Kafka on such a
# port that a test stops and starts again can find it taken: a client retrying
# its connection meanwhile may connect to itself there (TCP simultaneous open).
EPHEMERAL_PORTS_FROM = 32_768


def private_kafka_port(*offsets: int) -> int:
    """A free port below the ephemeral range, with ``port + offset`` free too
    for each offset (a node's controller and SASL listeners)."""
    for _ in range(200):
        port = random.randrange(20_000, EPHEMERAL_PORTS_FROM - max(offsets, default=0))
        if all(_bindable(port + offset) for offset in (0, *offsets)):
            return port
    raise RuntimeError("no free loopback port below the ephemeral range")


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False

    return True


# After the expected count arrived, keep reading this long so that duplicates,
# which would arrive after it, are caught too.
SETTLE_S = 1.0


async def _consume(
    bootstrap: str, topics: list[str], expected: int, timeout_s: float
) -> list[ConsumerRecord]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    records: list[ConsumerRecord] = []
    try:
        partitions = [
            TopicPartition(topic, partition)
            for topic in topics
            for partition in (await consumer._client._wait_on_metadata(topic))
        ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        deadline = time.monotonic() + timeout_s
        settle_until = None
        while time.monotonic() < deadline:
            if settle_until is None and len(records) >= expected:
                settle_until = time.monotonic() + SETTLE_S
            if settle_until is not None and time.monotonic() > settle_until:
                break
            batches = await consumer.getmany(timeout_ms=200, max_records=50_000)
            for batch in batches.values():
                records.extend(batch)
    finally:
        await consumer.stop()

    return records


def consume(
    bootstrap: str, topics: list[str], expected: int, timeout_s: float = 60.0
) -> list[ConsumerRecord]:
    """Every record of ``topics``, read until ``expected`` arrived (plus a moment)."""
    return asyncio.run(_consume(bootstrap, topics, expected, timeout_s))
