"""The broker's Prometheus endpoint: its counters, read when scraped.

The receive loop already counts everything in ``Stats`` (one list increment
per event); this module adds nothing to that path. Counters and gauges are
read from ``Stats``, the publisher and the spool's last figures at scrape
time, by a collector. Only two things are observed as they happen, once per
Kafka batch rather than per event: how long Kafka took to acknowledge it and
how many events it held.

The endpoint is served from the broker's own event loop (a few lines of
HTTP over ``asyncio.start_server``), not from a thread, so a scrape reads the
counters between two cycles and never half-way through one, and a wedged
loop shows as a scrape that times out.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from zlog.broker.stats import CLASS_NAMES

if TYPE_CHECKING:
    from zlog.broker.daemon import Broker

__all__ = ["Metrics"]

PREFIX = "zlog_broker_"

# Kafka acknowledges a batch in about 2 ms on loopback and tens of ms across
# a data centre; the send timeout (5 s) ends the scale.
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5)
LATENCY_BUCKETS_S += (1.0, 2.5, 5.0, 10.0)

# A batch holds up to 512 KiB: a few thousand small envelopes.
BATCH_EVENT_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384)

# A scraper that connects and says nothing is dropped after this.
REQUEST_TIMEOUT_S = 5.0


class Metrics:
    """The registry, the collector over one broker, and the HTTP endpoint."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_BrokerCollector(broker))
        self.send_latency_s = Histogram(
            PREFIX + "kafka_send_latency_seconds",
            "Seconds from handing a batch to the producer to Kafka's acknowledgment.",
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.batch_events = Histogram(
            PREFIX + "kafka_batch_events",
            "Events per Kafka batch Kafka acknowledged.",
            buckets=BATCH_EVENT_BUCKETS,
            registry=self.registry,
        )
        self.server: asyncio.Server | None = None

    def observe_batch(self, events: int, latency_s: float) -> None:
        """Record one acknowledged batch."""
        self.send_latency_s.observe(latency_s)
        self.batch_events.observe(events)

    def render(self) -> bytes:
        """The exposition text a scrape returns."""
        return generate_latest(self.registry)

    async def serve(self, address: str) -> None:
        """Listen on ``host:port``; OSError when the address cannot be bound."""
        host, _, port = address.rpartition(":")
        self.server = await asyncio.start_server(
            self._answer, host.strip("[]"), int(port)
        )

    async def close(self) -> None:
        """Stop listening."""
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.server.wait_closed(), 1.0)
            self.server = None

    async def _answer(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                request = await reader.readline()
                while (await reader.readline()).strip():
                    pass  # headers: nothing in them changes the answer
            method, path, *_ = request.decode("latin-1").split() or ["", ""]
            if method in ("GET", "HEAD") and path.split("?")[0] in ("/", "/metrics"):
                body = self.render()
                head = f"HTTP/1.1 200 OK\r\nContent-Type: {CONTENT_TYPE_LATEST}\r\n"
            else:
                body = b"only GET /metrics is served\n"
                head = "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\n"
            head += f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            writer.write(head.encode() + (b"" if method == "HEAD" else body))
            await writer.drain()
        except (TimeoutError, OSError, ValueError):
            pass  # a scraper that went away or spoke nonsense
        finally:
            writer.close()


class _BrokerCollector:
    """Reads one broker's counts each time the registry is collected."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    def collect(self) -> Iterator[Metric]:
        broker = self.broker
        stats = broker.stats
        for name, counts, help_text in (
            ("events_received", stats.received, "Events taken from the socket."),
            ("events_published", stats.published, "Events Kafka acknowledged."),
            ("events_spooled", stats.spooled, "Events written to the spool."),
            ("events_replayed", stats.replayed, "Spooled events Kafka acknowledged."),
            ("events_failed", stats.failed, "Events lost in the broker for good."),
        ):
            yield _by_class(name, help_text, counts)
        yield _by_label(
            "events_dead_lettered",
            "Events Kafka refused for good, written to the dead-letter file.",
            "reason",
            stats.dead_lettered,
        )
        yield _by_label(
            "emitter_drops",
            "Events emitters reported dropping before they reached the broker.",
            "reason",
            stats.drops_total(),
        )
        yield _by_label(
            "losses_reported",
            "Losses published as zlog.loss events, by reason.",
            "reason",
            stats.losses.reported,
        )
        yield _by_label(
            "bad_frames", "Messages that did not decode.", "reason", stats.bad_frames
        )
        yield _spool_drops(broker.spool_status.get("drops", {}))
        for name, value, help_text in (
            (
                "bad_frames_kept",
                stats.bad_frames_kept,
                "Bad messages written to the dead-letter file.",
            ),
            (
                "bad_frames_not_kept",
                stats.bad_frames_not_kept,
                "Bad messages only counted: a write was under way or the file full.",
            ),
            (
                "events_dead_lettered_not_kept",
                stats.dead_lettered_not_kept,
                "Dead-lettered events not written: the file was at its bound.",
            ),
            (
                "losses_not_reported",
                stats.losses_not_reported,
                "Losses whose zlog.loss report failed; counted here only.",
            ),
            (
                "events_sent_again",
                stats.sent_again,
                "Events sent again after Kafka refused their batch for another.",
            ),
            (
                "producers_replaced",
                stats.producers_replaced,
                "Producers retired because Kafka refused their record numbers.",
            ),
            ("acks_sent", stats.acks_sent, "Acks sent to emitters."),
            ("nacks_sent", stats.nacks_sent, "Nacks sent to emitters."),
            (
                "replies_undeliverable",
                stats.replies_undeliverable,
                "Replies whose emitter was gone.",
            ),
        ):
            yield CounterMetricFamily(PREFIX + name, help_text, value=value)
        yield from self._gauges()

    def _gauges(self) -> Iterator[Metric]:
        broker = self.broker
        stats = broker.stats
        spool = broker.spool_status
        kafka_up = broker.publisher.connected and broker.publisher.kafka_state
        for name, value, help_text in (
            ("start_time_seconds", stats.started_at, "When the broker started."),
            ("kafka_up", kafka_up == "connected", "1 while Kafka takes batches."),
            (
                "kafka_batches_in_flight",
                broker.publisher.pending(),
                "Batches handed to the producer and not yet answered.",
            ),
            ("spooling", broker.spooling, "1 while new events go to the spool."),
            ("spool_events", spool.get("events", 0), "Events in the spool."),
            ("spool_bytes", spool.get("size_bytes", 0), "Bytes the spool holds."),
            ("spool_max_bytes", spool.get("max_bytes", 0), "Bound of the spool."),
            ("connections", stats.connections, "Emitter connections open now."),
            ("origins", len(stats.sequences), "Emitter origins seen since start."),
            (
                "sequence_missing",
                stats.sequences.confirmed_total,
                "Events missing from origins' sequence numbers (detected loss).",
            ),
            (
                "sequence_pending",
                stats.sequences.open,
                "Sequence numbers not yet arrived, not yet counted lost.",
            ),
        ):
            yield GaugeMetricFamily(PREFIX + name, help_text, value=float(value))
        uptime_s = time.monotonic() - stats.started_monotonic
        yield GaugeMetricFamily(
            PREFIX + "uptime_seconds", "Seconds since start.", value=uptime_s
        )


def _by_class(name: str, help_text: str, counts: list[int]) -> Metric:
    family = CounterMetricFamily(PREFIX + name, help_text, labels=["class"])
    for class_name, count in zip(CLASS_NAMES, counts, strict=True):
        family.add_metric([class_name], count)

    return family


def _by_label(name: str, help_text: str, label: str, counts: dict) -> Metric:
    family = CounterMetricFamily(PREFIX + name, help_text, labels=[label])
    for value, count in dict(counts).items():
        family.add_metric([value], count)

    return family


def _spool_drops(drops: dict[str, int]) -> Metric:
    family = CounterMetricFamily(
        PREFIX + "spool_drops",
        "Events the full spool evicted or refused.",
        labels=["class", "reason"],
    )
    for label, count in drops.items():
        class_name, _, reason = label.partition(":")
        family.add_metric([class_name, reason], count)

    return family
