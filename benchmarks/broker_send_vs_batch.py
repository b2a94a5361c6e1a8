"""Compare aiokafka ``send()`` per event with ``create_batch()``/``send_batch()``.

Both paths publish the same ready-made envelopes (bytes, key, two headers) through
one producer configured as the broker configures it (acks=all, idempotence,
compression), and wait until Kafka acknowledged every record. Usage::

    python benchmarks/broker_send_vs_batch.py [--bootstrap-servers B] [--events N]
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from zlog.broker.config import default_compression

ENVELOPE = (
    b'{"event_type":"omninode.logging.application.v1","event_id":"%s",'
    b'"tenant_id":"default","payload":{"service_name":"bench","level":"INFO",'
    b'"message":"GET /health 200 in 1.2 ms","context":{"path":"/health"}}}'
)
HEADERS = [("x-tenant", b"default"), ("x-schema-hash", b"registry://bench/v1")]
KEYS = [f"service-{i}".encode() for i in range(8)]


async def run_send(producer: AIOKafkaProducer, topic: str, values: list) -> None:
    futures = []
    for i, value in enumerate(values):
        key = KEYS[i % len(KEYS)]
        futures.append(await producer.send(topic, value, key=key, headers=HEADERS))
    await asyncio.gather(*futures)


async def run_send_batch(producer: AIOKafkaProducer, topic: str, values: list) -> None:
    partitions = sorted(await producer.partitions_for(topic))
    partitioner = producer._partitioner
    part_of = {key: partitioner(key, partitions, partitions) for key in KEYS}
    builders: dict[int, object] = {}
    futures = []
    now_ms = int(time.time() * 1000)
    for i, value in enumerate(values):
        key = KEYS[i % len(KEYS)]
        partition = part_of[key]
        builder = builders.get(partition)
        if builder is None:
            builder = builders[partition] = producer.create_batch()
        if builder.append(timestamp=now_ms, key=key, value=value, headers=HEADERS):
            continue
        futures.append(await producer.send_batch(builder, topic, partition=partition))
        builder = builders[partition] = producer.create_batch()
        builder.append(timestamp=now_ms, key=key, value=value, headers=HEADERS)
    for partition, builder in builders.items():
        futures.append(await producer.send_batch(builder, topic, partition=partition))
    await asyncio.gather(*futures)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap-servers", default="127.0.0.1:9092")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--max-batch-bytes", type=int, default=512 * 1024)
    args = parser.parse_args()

    topic = f"bench.send-vs-batch.{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=args.bootstrap_servers)
    await admin.start()
    await admin.create_topics([NewTopic(topic, args.partitions, 1)])
    await admin.close()

    values = [ENVELOPE % uuid.uuid4().hex.encode() for _ in range(args.events)]
    producer = AIOKafkaProducer(
        bootstrap_servers=args.bootstrap_servers,
        acks="all",
        enable_idempotence=True,
        compression_type=default_compression(),
        linger_ms=5,
        max_batch_size=args.max_batch_bytes,
    )
    await producer.start()
    try:
        await producer.partitions_for(topic)
        for name, path in (("send", run_send), ("send_batch", run_send_batch)):
            started = time.perf_counter()
            await path(producer, topic, values)
            elapsed_s = time.perf_counter() - started
            print(
                f"{name:>10}: {args.events} events in {elapsed_s:.2f} s, "
                f"{args.events / elapsed_s:,.0f} events/s"
            )
    finally:
        await producer.stop()


if __name__ == "__main__":
    asyncio.run(main())
