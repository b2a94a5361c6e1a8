"""What the harness measures around a run: processes, Kafka, the machine.

- ``Watch`` samples the processes of one run (workers and the daemon between
  them and Kafka) while it lasts: the Kafka connections they hold, and the
  daemon's CPU time and peak RSS.
- ``KafkaProbe`` creates a run's topics and counts what Kafka holds in them
  (end offsets, so a record counts once every replica has it), and reads the
  records back for their append times.
- ``machine`` describes the computer the figures came from.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import re
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import workload
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

# zlog's broker creates its topics with three partitions; every path gets the
# same. Kafka stamps each record with its append time, the end of the
# end-to-end latency.
TOPIC_PARTITIONS = 3
TOPIC_CONFIG = {"message.timestamp.type": "LogAppendTime"}

CLASSES = ("application", "audit", "security")

# Often enough to see short-lived connections of a few workers; rarely enough
# not to compete with them on two cores.
SAMPLE_INTERVAL_S = 0.25


def percentile(ordered: list, fraction: float) -> float:
    if not ordered:
        return float("nan")

    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def cpu_s(process: psutil.Process) -> float:
    times = process.cpu_times()

    return times.user + times.system


def peak_rss_bytes(pid: int) -> int:
    """The kernel's high-water mark of a process's resident memory."""
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)

    return int(match.group(1)) * 1024 if match else 0


@dataclass
class Watch:
    """Samples a run's processes until stopped."""

    kafka_port: int
    daemon_pid: int | None = None
    pids: list[int] = field(default_factory=list)
    peak_connections: int = 0
    daemon_connections: int = 0
    _daemon_cpu_start_s: float = 0.0
    daemon_cpu_s: float = 0.0
    daemon_peak_rss_bytes: int = 0

    def start(self) -> None:
        if self.daemon_pid is not None:
            self._daemon_cpu_start_s = cpu_s(psutil.Process(self.daemon_pid))

    def finish(self) -> None:
        if self.daemon_pid is not None:
            self.daemon_cpu_s = (
                cpu_s(psutil.Process(self.daemon_pid)) - self._daemon_cpu_start_s
            )
            self.daemon_peak_rss_bytes = peak_rss_bytes(self.daemon_pid)

    async def sample_until(self, done: asyncio.Event) -> None:
        while not done.is_set():
            self.sample()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), SAMPLE_INTERVAL_S)

    def sample(self) -> None:
        total = 0
        for pid in [*self.pids, self.daemon_pid]:
            if pid is None:
                continue
            held = self._kafka_connections(pid)
            total += held
            if pid == self.daemon_pid:
                self.daemon_connections = max(self.daemon_connections, held)
        self.peak_connections = max(self.peak_connections, total)

    def _kafka_connections(self, pid: int) -> int:
        try:
            connections = psutil.Process(pid).net_connections(kind="tcp")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return 0

        return sum(
            1
            for c in connections
            if c.raddr
            and c.raddr.port == self.kafka_port
            and c.status == psutil.CONN_ESTABLISHED
        )


class KafkaProbe:
    """Topics and counts on the Kafka every path publishes to."""

    def __init__(self, bootstrap_servers: str) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.consumer: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        # aiokafka clients must be created inside the running loop.
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap_servers, enable_auto_commit=False
        )
        await self.consumer.start()

    async def stop(self) -> None:
        await self.consumer.stop()

    async def create_topics(self, prefix: str) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap_servers)
        await admin.start()
        try:
            await admin.create_topics(
                [
                    NewTopic(
                        f"{prefix}.{name}",
                        TOPIC_PARTITIONS,
                        1,
                        topic_configs=TOPIC_CONFIG,
                    )
                    for name in CLASSES
                ]
            )
        except TopicAlreadyExistsError:
            pass
        finally:
            await admin.close()

    @staticmethod
    def partitions(prefix: str) -> list[TopicPartition]:
        return [
            TopicPartition(f"{prefix}.{name}", p)
            for name in CLASSES
            for p in range(TOPIC_PARTITIONS)
        ]

    async def count(self, prefix: str) -> int:
        """Records Kafka holds in the run's topics (no transactions: exact)."""
        ends = await self.consumer.end_offsets(self.partitions(prefix))

        return sum(ends.values())

    async def latencies_ms(self, prefix: str, expected: int, timeout_s: float):
        """Append time minus ``sent_ns`` of every record, in milliseconds."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap_servers, enable_auto_commit=False
        )
        await consumer.start()
        latencies: list[float] = []
        try:
            consumer.assign(self.partitions(prefix))
            await consumer.seek_to_beginning()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout_s
            while len(latencies) < expected and loop.time() < deadline:
                batches = await consumer.getmany(timeout_ms=500, max_records=10_000)
                for records in batches.values():
                    latencies.extend(_latency_ms(r) for r in records)
        finally:
            await consumer.stop()

        return sorted(x for x in latencies if x is not None)


def _latency_ms(record) -> float | None:
    match = workload.SENT_NS.search(record.value)
    if match is None:
        return None

    return record.timestamp - int(match.group(1)) / 1e6


def kafka_process(port: int) -> psutil.Process | None:
    """The process listening on Kafka's port, if this machine runs it."""
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
            return psutil.Process(conn.pid)

    return None


def kafka_version(process: psutil.Process | None) -> str:
    if process is None:
        return "unknown (not on this machine)"
    match = re.search(r"kafka_[\d.]+-([\d.]+)\.jar", " ".join(process.cmdline()))

    return f"Apache Kafka {match.group(1)}" if match else "unknown"


def machine(kafka: psutil.Process | None) -> dict:
    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        found = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.M)
        model = found.group(1).strip() if found else ""

    return {
        "cores": os.cpu_count(),
        "cpu": model or platform.processor(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(terse=True),
        "python": platform.python_version(),
        "kafka": kafka_version(kafka),
    }
