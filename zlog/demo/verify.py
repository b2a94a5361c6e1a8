"""Read the demo's topics back from Kafka and judge the replay.

Three steps, each its own function so the judging is tested without Kafka:

1. ``read_topics`` consumes every record of the three topics, from the first
   offset to the end offset it saw on start (the broker has stopped by then,
   so nothing more is coming), and turns each into an ``Arrival``: which
   line of which file, which repeat, and how long it took.
2. ``judge`` matches arrivals against the lines the replay logged, keyed by
   (file, line number, repeat): exactly once means no key missing, none
   twice, none unknown, and every event in the topic of its class.
3. ``render_report`` prints the table.

Latency is the Kafka record timestamp minus the ``sent_at`` time the worker
put in the event just before logging it. The demo creates its topics with
``message.timestamp.type=LogAppendTime``, so the record timestamp is when
Kafka appended the record: the whole path, worker to Kafka log. On a topic
that keeps the producer's create time it ends where the broker's producer
took the record. Both clocks are this host's.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import orjson

__all__ = [
    "Arrival",
    "Verdict",
    "judge",
    "read_topics",
    "render_report",
]

# The envelope's event_type names its class (COMPAT.md).
_CLASS_BY_EVENT_TYPE = {
    "omninode.logging.application.v1": "application",
    "omninode.logging.audit.v1": "audit",
    "omninode.logging.security.v1": "security",
}

CLASSES = ("application", "audit", "security")

# Kafka's record timestamp types, as aiokafka reports them.
_LOG_APPEND_TIME = 1

Key = tuple[str, int, int]


@dataclass(frozen=True)
class Arrival:
    """One record read back: where it came from and what it says."""

    topic: str
    event_class: str
    key: Key | None
    latency_ms: float | None
    record_time_ms: int
    log_append_time: bool


@dataclass
class Verdict:
    """What ``judge`` found; ``passed`` is the exactly-once answer."""

    expected: int
    arrived_once: int
    missing: list[Key] = field(default_factory=list)
    duplicated: list[Key] = field(default_factory=list)
    unexpected: int = 0
    wrong_topic: int = 0

    @property
    def passed(self) -> bool:
        return (
            self.arrived_once == self.expected
            and not self.missing
            and not self.duplicated
            and not self.unexpected
            and not self.wrong_topic
        )


def arrival_from_record(topic: str, value: bytes, timestamp_ms: int, ts_type: int):
    """Decode one record value into an ``Arrival`` (unknown shapes key None)."""
    try:
        envelope = orjson.loads(value)
    except orjson.JSONDecodeError:
        envelope = {}
    payload = envelope.get("payload") or {}
    context = payload.get("context") or {}
    fields = {**payload, **context}
    event_class = _CLASS_BY_EVENT_TYPE.get(envelope.get("event_type"), "unknown")
    key = _key_of(fields)
    latency_ms = None
    if isinstance(fields.get("sent_at"), int | float):
        latency_ms = timestamp_ms - fields["sent_at"] * 1000.0

    return Arrival(
        topic,
        event_class,
        key,
        latency_ms,
        timestamp_ms,
        ts_type == _LOG_APPEND_TIME,
    )


def _key_of(fields: dict) -> Key | None:
    try:
        return (
            str(fields["source_file"]),
            int(fields["line_no"]),
            int(fields["repeat"]),
        )
    except (KeyError, TypeError, ValueError):
        return None


async def read_topics(
    bootstrap_servers: str, topics: Iterable[str], timeout_s: float = 60.0
) -> list[Arrival]:
    """Every record now in ``topics``, from the beginning, as arrivals.

    A topic that does not exist contributes nothing. Raises TimeoutError when
    the end offsets are not reached within ``timeout_s``.
    """
    import asyncio

    from aiokafka import AIOKafkaConsumer

    partitions = await _partitions_of(bootstrap_servers, list(topics))
    if not partitions:
        return []
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        end_offsets = await consumer.end_offsets(partitions)

        return await asyncio.wait_for(
            _read_until(consumer, end_offsets), timeout=timeout_s
        )
    finally:
        await consumer.stop()


async def _partitions_of(bootstrap_servers: str, topics: list[str]) -> list:
    # Asked of the admin client: a consumer's own metadata may predate topics
    # created moments ago by this run.
    from aiokafka import TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        described = await admin.describe_topics(topics)
    finally:
        await admin.close()

    return [
        TopicPartition(topic["topic"], partition["partition"])
        for topic in described
        if topic["error_code"] == 0
        for partition in sorted(topic["partitions"], key=lambda p: p["partition"])
    ]


async def _read_until(consumer, end_offsets) -> list[Arrival]:
    arrivals: list[Arrival] = []
    remaining = {tp for tp, end in end_offsets.items() if end > 0}
    while remaining:
        batches = await consumer.getmany(timeout_ms=1000, max_records=10_000)
        for tp, records in batches.items():
            arrivals += [
                arrival_from_record(tp.topic, r.value, r.timestamp, r.timestamp_type)
                for r in records
            ]
        for tp in list(remaining):
            if await consumer.position(tp) >= end_offsets[tp]:
                remaining.discard(tp)

    return arrivals


def judge(
    arrivals: Iterable[Arrival],
    expected: Mapping[Key, str],
    topic_of_class: Mapping[str, str],
) -> Verdict:
    """Match arrivals to the expected keys, each mapped to its event class."""
    seen = Counter(a.key for a in arrivals if a.key in expected)
    verdict = Verdict(expected=len(expected), arrived_once=0)
    for arrival in arrivals:
        if arrival.key not in expected:
            verdict.unexpected += 1
        elif arrival.topic != topic_of_class[expected[arrival.key]]:
            verdict.wrong_topic += 1
    verdict.arrived_once = sum(1 for n in seen.values() if n == 1)
    verdict.duplicated = sorted(k for k, n in seen.items() if n > 1)
    verdict.missing = sorted(k for k in expected if k not in seen)

    return verdict


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile of ``values`` (sorted here)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))

    return ordered[rank - 1]


@dataclass(frozen=True)
class ReplayFigures:
    """What the replay itself measured, for the report."""

    lines_by_source: Mapping[str, int]
    repeat: int
    workers: int
    replay_s: float
    broker_exit_code: int | None
    emitter_drops: Mapping[str, int] = field(default_factory=dict)
    unflushed_chunks: int = 0
    call_time_s: Mapping[str, Sequence[float]] = field(default_factory=dict)


def render_report(
    figures: ReplayFigures,
    arrivals: list[Arrival],
    expected: Mapping[Key, str],
    topic_of_class: Mapping[str, str],
    verdict: Verdict,
) -> str:
    """The demo's closing table, as plain text."""
    lines = [""]
    lines += _sources_table(figures, expected)
    lines += [""]
    lines += _topics_table(arrivals, topic_of_class)
    lines += [""]
    lines += _figures_lines(figures, arrivals, verdict)

    return "\n".join(lines) + "\n"


def _sources_table(figures: ReplayFigures, expected: Mapping[Key, str]) -> list[str]:
    by_source: dict[str, Counter[str]] = {}
    for (source, _line, _repeat), event_class in expected.items():
        by_source.setdefault(source, Counter())[event_class] += 1
    row = "{:<18} {:>10} {:>12} {:>9} {:>9}"
    lines = [row.format("source", "lines read", *CLASSES), "-" * 62]
    totals: Counter[str] = Counter()
    for source, read in figures.lines_by_source.items():
        counts = by_source.get(source, Counter())
        totals.update(counts)
        totals["lines"] += read
        lines.append(row.format(source, f"{read:,}", *_counts(counts)))
    lines += ["-" * 62, row.format("total", f"{totals['lines']:,}", *_counts(totals))]

    return lines


def _counts(counts: Mapping[str, int]) -> list[str]:
    return [f"{counts.get(name, 0):,}" for name in CLASSES]


def _topics_table(
    arrivals: list[Arrival], topic_of_class: Mapping[str, str]
) -> list[str]:
    per_topic = Counter((a.topic, a.event_class) for a in arrivals)
    width = max([len(t) for t in topic_of_class.values()] + [5])
    row = "{:<12} {:<WIDTH} {:>12}".replace("WIDTH", str(width))
    lines = [row.format("class", "topic", "events in it"), "-" * (width + 26)]
    for event_class, topic in topic_of_class.items():
        lines.append(
            row.format(event_class, topic, f"{per_topic[topic, event_class]:,}")
        )
    strays = {k: n for k, n in per_topic.items() if topic_of_class.get(k[1]) != k[0]}
    for (topic, event_class), count in sorted(strays.items()):
        lines.append(row.format(f"{event_class}?", topic, f"{count:,}"))

    return lines


def _figures_lines(
    figures: ReplayFigures, arrivals: list[Arrival], verdict: Verdict
) -> list[str]:
    label = "{:<14} {}"
    outcome = "PASS" if verdict.passed else "FAIL"
    lines = [
        label.format(
            "exactly once",
            f"{outcome}: {verdict.arrived_once:,} of {verdict.expected:,} "
            f"(file, line, repeat) arrived exactly once; "
            f"{len(verdict.missing):,} missing, {len(verdict.duplicated):,} "
            f"duplicated, {verdict.unexpected:,} unexpected, "
            f"{verdict.wrong_topic:,} in the wrong topic",
        )
    ]
    lines += [label.format("", f"e.g. missing {k}") for k in verdict.missing[:3]]
    lines += [label.format("", f"e.g. duplicated {k}") for k in verdict.duplicated[:3]]
    total = sum(figures.lines_by_source.values())
    if figures.replay_s > 0:
        lines.append(
            label.format(
                "throughput",
                f"{total:,} events logged by {figures.workers} workers in "
                f"{figures.replay_s:.2f} s: {total / figures.replay_s:,.0f} events/s",
            )
        )
    lines += _call_time_lines(figures, label)
    lines += _latency_lines(arrivals, label)
    drops = ", ".join(
        f"{n:,} {why}" for why, n in sorted(figures.emitter_drops.items())
    )
    lines.append(label.format("dropped", drops or "none by the workers' emitters"))
    if figures.unflushed_chunks:
        lines.append(
            label.format(
                "unflushed",
                f"{figures.unflushed_chunks:,} chunks not confirmed by the broker",
            )
        )
    if figures.broker_exit_code is not None:
        lines.append(label.format("broker", f"exit code {figures.broker_exit_code}"))

    return lines


def _call_time_lines(figures: ReplayFigures, label: str) -> list[str]:
    means = [
        f"{name} {_duration(seconds / calls)}"
        for name in CLASSES
        if name in figures.call_time_s
        for calls, seconds in [figures.call_time_s[name]]
        if calls
    ]
    if not means:
        return []

    return [
        label.format("log call", "mean " + ", ".join(means)),
        label.format("", "(audit and security calls wait for the broker's ack)"),
    ]


def _duration(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:,.0f} µs"

    return f"{seconds * 1e3:,.1f} ms"


def _latency_lines(arrivals: list[Arrival], label: str) -> list[str]:
    latencies = [a.latency_ms for a in arrivals if a.latency_ms is not None]
    if not latencies:
        return [label.format("latency", "no event carried a send time")]
    span_ms = max(a.record_time_ms for a in arrivals) - min(
        a.record_time_ms for a in arrivals
    )
    where = (
        "Kafka log append"
        if all(a.log_append_time for a in arrivals)
        else ("producer record time")
    )
    lines = [
        label.format(
            "latency",
            f"worker log call -> {where}: p50 {percentile(latencies, 0.50):.1f} ms, "
            f"p99 {percentile(latencies, 0.99):.1f} ms, "
            f"max {max(latencies):.1f} ms over {len(latencies):,} events",
        )
    ]
    if span_ms > 0:
        lines.append(
            label.format(
                "into Kafka",
                f"{len(arrivals):,} records appended over {span_ms / 1000:.2f} s: "
                f"{len(arrivals) / (span_ms / 1000):,.0f} records/s",
            )
        )

    return lines
