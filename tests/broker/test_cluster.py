"""A three-node Kafka cluster loses one node under acked load: nothing acked is lost.

The module starts its own cluster (replication factor 3, min.insync.replicas
2) on free loopback ports and stops it at the end, also when a test fails.
Every event carries an id ("proc-i"); the test counts by those ids.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from conftest import broker_answers
from kafka_helpers import consume

pytestmark = pytest.mark.kafka

KAFKA_SCRIPT = str(Path(__file__).parents[2] / "scripts" / "kafka")

# Three JVMs beside the rest of the suite on a 24 GiB, 2-core CI machine: half
# the script's default heap each. Kafka's log cleaner takes 128 MiB of heap at
# start (log.cleaner.dedupe.buffer.size), so a 256 MiB heap sometimes failed to
# start a node (OutOfMemoryError in LogCleaner, two runs of four).
CLUSTER_HEAP = "-Xms128m -Xmx384m"

# Controller ports sit this far above broker ports (scripts/kafka).
CONTROLLER_PORT_OFFSET = 100

# Load: senders x rate for this long; the node dies this far into it.
SENDERS, RATE_PER_S, LOAD_S, KILL_AFTER_S = 3, 300, 25, 8


def port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False

    return True


# Node ports are drawn below this: Linux hands out ephemeral ports from 32768
# up, and a client connection that took a node's port between the check and
# Kafka's bind failed a node's start ("Unable to start acceptor").
EPHEMERAL_PORTS_FROM = 32_768


def free_base_port() -> int:
    """A port P with P..P+2 and their controller ports P+100..P+102 all free."""
    for _ in range(200):
        base = random.randrange(20_000, EPHEMERAL_PORTS_FROM - 200)
        offsets = (0, CONTROLLER_PORT_OFFSET)
        ports = [base + n + offset for n in range(3) for offset in offsets]
        if all(port_free(port) for port in ports):
            return base
    pytest.fail("no free block of loopback ports for a three-node cluster")


def kafka(*args: str, timeout_s: float = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "ZLOG_KAFKA_HEAP": CLUSTER_HEAP}
    command = [sys.executable, KAFKA_SCRIPT, *args]

    return subprocess.run(command, env=env, check=True, timeout=timeout_s)


def node_rss_bytes(port: int) -> list[int]:
    """Resident memory of each running node, read from the script's pid files."""
    home = os.environ.get("ZLOG_KAFKA_HOME") or Path.home() / ".cache/zlog/kafka"
    sizes = []
    for pid_file in sorted(Path(home, f"cluster-{port}").glob("node-*/kafka.pid")):
        try:
            sizes.append(psutil.Process(int(pid_file.read_text())).memory_info().rss)
        except (psutil.NoSuchProcess, ValueError):
            continue

    return sizes


@pytest.fixture(scope="module")
def cluster() -> Iterator[int]:
    """Base port of a private three-node cluster, stopped at the module's end."""
    port = free_base_port()
    try:
        kafka("start", "--nodes", "3", "--port", str(port))
        yield port
    finally:
        kafka("stop", "--port", str(port), timeout_s=120)


def topic_config(bootstrap: str, topic: str, name: str) -> str:
    async def describe() -> str:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            resource = ConfigResource(ConfigResourceType.TOPIC, topic, {name: None})
            (response,) = await admin.describe_configs([resource])
        finally:
            await admin.close()
        (resource_entry,) = response.resources
        for entry in resource_entry[4]:
            if entry[0] == name:
                return entry[1]
        raise AssertionError(f"{name} not described for {topic}")

    return asyncio.run(describe())


def status(socket_path: Path) -> dict:
    body = broker_answers(socket_path, timeout_s=10)
    assert body is not None, "the broker did not answer a status request"

    return json.loads(body)


def test_one_node_killed_under_load_loses_no_acked_event(
    cluster, start_broker, start_senders, topics, tmp_path
):
    """Node 2 of 3 is killed mid-load: every event is acked, all are in Kafka,
    few twice."""
    bootstrap = ",".join(f"127.0.0.1:{cluster + n}" for n in range(3))
    broker = start_broker("--topic-replication", "3", bootstrap=bootstrap)
    assert topic_config(bootstrap, topics.audit, "min.insync.replicas") == "2"
    report = str(tmp_path / "sender-{proc}.json")
    paced = ("--paced", str(RATE_PER_S), str(LOAD_S), "--report", report)
    started = time.monotonic()

    senders = start_senders(broker.socket_path, SENDERS, 0, *paced)
    time.sleep(KILL_AFTER_S)
    rss_bytes = node_rss_bytes(cluster)
    kafka("kill-node", "2", "--port", str(cluster), timeout_s=30)
    assert [sender.wait(timeout=120) for sender in senders] == [0] * SENDERS
    load_s = time.monotonic() - started
    deadline = time.monotonic() + 60
    while (state := status(broker.socket_path))["spool"]["events"]:
        assert time.monotonic() < deadline, "the spool did not drain in 60 s"
        time.sleep(0.5)
    reports = [
        json.loads(Path(report.format(proc=proc)).read_text())
        for proc in range(SENDERS)
    ]
    acked = {f"{p}-{i}" for p, r in enumerate(reports) for i in r["acked"]}
    sent = sum(r["sent"] for r in reports)
    records = consume(bootstrap, topics.all(), len(acked), timeout_s=60)
    ids = [json.loads(r.value).get("id") for r in records]
    distinct = set(ids) - {None}
    duplicates = len([i for i in ids if i is not None]) - len(distinct)

    print(
        f"\nsent {sent}, acked {len(acked)}, nacked "
        f"{sum(len(r['nacked']) for r in reports)}, in Kafka {len(distinct)} "
        f"distinct, duplicates {duplicates}, spooled {state['totals']['spooled']}, "
        f"load {load_s:.1f} s, node RSS {[b >> 20 for b in rss_bytes]} MiB, "
        f"broker {state['totals']}"
    )
    assert acked <= distinct, f"{len(acked - distinct)} acked events not in Kafka"
    assert duplicates <= sent * 0.001
    # A broker that stops reading or answering leaves events unanswered when
    # the senders give up waiting (sender.REPLY_WAIT_S after the load).
    assert len(acked) == sent, f"{sent - len(acked)} of {sent} events not acked"
    assert broker.terminate() == 0
