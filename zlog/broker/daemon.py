"""The broker daemon: how it works.

Lifecycle. The broker checks its socket path, takes the lock beside it
(refusing to start when another broker holds it or answers on the socket),
makes sure its three topics exist, starts its one Kafka producer, then binds a
ZeroMQ ROUTER on the socket and serves until SIGTERM or SIGINT. Then it drains
(below) and exits 0.

Receive loop. One asyncio task waits until the ROUTER is readable, takes up
to ``recv_batch`` messages (or ``recv_max_bytes`` of envelopes) without
blocking, and decodes each with ``protocol.decode``. An event is routed by its
class (or its explicit topic) and partition key to an open Kafka batch for
that topic-partition; its envelope bytes go to Kafka untouched, never parsed.
At the end of the cycle every open batch is handed to the producer with
``send_batch``. Status requests are answered in the same pass, drop reports
and bad frames are counted.

Back-pressure. ``send_batch`` waits while the previous batch of the same
partition is still queued in the producer, so when Kafka is slow the loop
stops reading, the socket's queues fill, and emitters see their sends refused
(they count that as a drop, by reason). The broker's memory stays bounded by
one cycle plus what the producer holds.

Acknowledgments. An event whose sender asked for one is acked when Kafka
acknowledged the batch holding it (acks=all, so every in-sync replica has it),
and nacked with Kafka's reason when Kafka refused it. Nothing is acked when it
is merely received.

Shutdown. On SIGTERM or SIGINT the loop stops reading, the socket file is
removed so new emitters cannot connect, messages already queued in the socket
are taken one last time, every batch is published and the producer flushed,
all within ``drain_timeout_s``. Events still unpublished when the time runs
out are counted failed and reported in the final log line (the disk spool of
a later issue will keep them instead). Nothing dropped goes uncounted.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time

import zmq

from zlog import protocol
from zlog.broker.config import BrokerConfig
from zlog.broker.listener import Listener
from zlog.broker.logs import RateLimiter, get_logger
from zlog.broker.publisher import OpenBatch, Publisher
from zlog.broker.routing import Routes
from zlog.broker.stats import CLASS_NAMES, Stats

__all__ = ["Broker", "run_broker"]

# On shutdown, messages already queued in the socket are taken in at most this
# many cycles; an emitter that keeps sending cannot hold the drain forever.
FINAL_SWEEP_CYCLES = 64

_Event = protocol.Event
_Drops = protocol.DropReport
_Status = protocol.StatusRequest


class Broker:
    """One running broker: the socket, the receive loop and the publisher."""

    def __init__(self, config: BrokerConfig) -> None:
        self.config = config
        self.log = get_logger()
        self.stats = Stats()
        self.warnings = RateLimiter()
        self.listener = Listener(
            config.socket_path,
            mode=config.socket_mode,
            group=config.socket_group,
            max_frame_bytes=config.max_frame_bytes,
        )
        self.publisher = Publisher(config, self.stats, self.reply)
        self.routes = Routes(*config.topics)
        self.socket: zmq.Socket | None = None
        self.state = "starting"
        self._stopping = False
        self._readable = asyncio.Event()

    async def run(self) -> int:
        """Serve until a signal, then drain; return the process exit code."""
        self.log.info("started", socket=str(self.config.socket_path))
        self.socket = self.listener.bind()
        self.log.info("bound", socket=str(self.config.socket_path))
        try:
            await self._start_publisher()
            self.log.info(
                "kafka_connected",
                bootstrap_servers=self.config.bootstrap_servers,
                topics=list(self.config.topics),
                compression=self.config.compression_type,
            )
            self._watch_signals()
            self.state = "serving"
            self.log.info("serving")
            await self._receive_loop()
            return await self._drain()
        finally:
            self._unwatch()
            self.listener.close()

    async def _start_publisher(self) -> None:
        try:
            await self.publisher.start()
        except BaseException:
            await self.publisher.stop(timeout_s=5.0)
            raise

    def stop(self) -> None:
        """Ask the receive loop to stop reading and drain."""
        self._stopping = True
        self._readable.set()

    def _watch_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stop)
        loop.add_reader(self.socket.getsockopt(zmq.FD), self._readable.set)

    def _unwatch(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        if self.socket is not None:
            loop.remove_reader(self.socket.getsockopt(zmq.FD))

    async def _receive_loop(self) -> None:
        sock = self.socket
        while not self._stopping:
            # The ZeroMQ descriptor is edge-triggered: clear, then re-check the
            # socket's own flag, so an edge between the two is never lost.
            if not sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                self._readable.clear()
                if not sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                    await self._readable.wait()
                continue
            await self._cycle(self._take())

    def _take(self) -> list[list[bytes]]:
        """Messages waiting in the socket, up to the cycle's caps."""
        recv = self.socket.recv_multipart
        messages: list[list[bytes]] = []
        append = messages.append
        cap = self.config.recv_batch
        max_bytes = self.config.recv_max_bytes
        size = 0
        try:
            while size < max_bytes and len(messages) < cap:
                frames = recv(zmq.NOBLOCK)
                append(frames)
                size += len(frames[-1])
        except zmq.Again:
            pass

        return messages

    async def _cycle(self, messages: list[list[bytes]]) -> None:
        """Route one cycle's messages into batches and hand them to Kafka."""
        full, open_batches, unresolved = self._route(messages)
        for topic, events in unresolved.items():
            await self._route_late(topic, events, open_batches)
        publisher = self.publisher
        for batch in full:
            await publisher.submit(batch)
        for batch in open_batches.values():
            await publisher.submit(batch)
        publisher.end_cycle()

    def _route(self, messages: list[list[bytes]]) -> tuple:
        """The per-event path: decode, count, append to a batch. Kept lean."""
        decode = protocol.decode
        publisher = self.publisher
        topics = self.routes.by_class
        received = self.stats.received
        note_sequence = self.stats.note_sequence
        partition_maps: dict[str, dict] = {}
        open_batches: dict[tuple[str, int], OpenBatch] = {}
        full: list[OpenBatch] = []
        unresolved: dict[str, list] = {}
        now_ms = int(time.time() * 1000)
        for frames in messages:
            message = decode(frames[1:])
            if message.__class__ is not _Event:
                self._handle_other(frames[0], message)
                continue
            event_class = message.event_class
            received[event_class] += 1
            note_sequence(message.host, message.pid, message.seq)
            topic = message.topic or topics[event_class]
            by_key = partition_maps.get(topic)
            if by_key is None:
                by_key = publisher.partition_map(topic)
                if by_key is None:
                    unresolved.setdefault(topic, []).append((frames[0], message))
                    continue
                partition_maps[topic] = by_key
            key = message.key
            partition = by_key.get(key)
            if partition is None:
                partition = publisher.partition_for(topic, key)
            batch = open_batches.get((topic, partition))
            if batch is None:
                batch = open_batches[topic, partition] = publisher.new_batch(
                    topic, partition
                )
            if (
                batch.builder.append(
                    timestamp=now_ms,
                    key=key,
                    value=message.value,
                    headers=message.headers,
                )
                is None
            ):
                full.append(batch)
                batch = open_batches[topic, partition] = publisher.new_batch(
                    topic, partition
                )
                batch.builder.append(
                    timestamp=now_ms,
                    key=key,
                    value=message.value,
                    headers=message.headers,
                )
            batch.counts[event_class] += 1
            if message.wants_ack:
                batch.acks.append((frames[0], message.seq))

        return full, open_batches, unresolved

    async def _route_late(
        self, topic: str, events: list, open_batches: dict[tuple[str, int], OpenBatch]
    ) -> None:
        """Route events naming a topic the producer had no metadata for yet."""
        publisher = self.publisher
        if not await publisher.resolve_topic(topic):
            self._refuse_unknown_topic(topic, events)
            return
        now_ms = int(time.time() * 1000)
        for identity, message in events:
            partition = publisher.partition_for(topic, message.key)
            batch = open_batches.get((topic, partition))
            if batch is None:
                batch = open_batches[topic, partition] = publisher.new_batch(
                    topic, partition
                )
            if not batch.builder.append(
                timestamp=now_ms,
                key=message.key,
                value=message.value,
                headers=message.headers,
            ):
                await publisher.submit(batch)
                batch = open_batches[topic, partition] = publisher.new_batch(
                    topic, partition
                )
                batch.builder.append(
                    timestamp=now_ms,
                    key=message.key,
                    value=message.value,
                    headers=message.headers,
                )
            batch.counts[message.event_class] += 1
            if message.wants_ack:
                batch.acks.append((identity, message.seq))

    def _refuse_unknown_topic(self, topic: str, events: list) -> None:
        reason = f"topic {topic!r} does not exist in Kafka"
        for identity, message in events:
            self.stats.failed[message.event_class] += 1
            if message.wants_ack:
                self.reply(identity, protocol.encode_nack(message.seq, reason))
                self.stats.nacks_sent += 1
        self._warn("unknown_topic", topic=topic, events=len(events))

    def _handle_other(self, identity: bytes, message: object) -> None:
        """Status requests, drop reports and frames that did not decode."""
        if message.__class__ is _Status:
            self.stats.status_requests += 1
            self.reply(identity, protocol.encode_status_reply(self.status_json()))
        elif message.__class__ is _Drops:
            self.stats.count_drops(message)
        else:
            self.stats.bad_frames[message.reason] += 1
            self._warn("bad_frame", reason=message.reason, detail=message.detail)

    def reply(self, identity: bytes, frames: list[bytes]) -> None:
        """Send frames back to one emitter; count it when the emitter is gone."""
        try:
            self.socket.send_multipart([identity, *frames], zmq.NOBLOCK)
        except zmq.ZMQError:
            self.stats.replies_undeliverable += 1

    def status_json(self) -> bytes:
        """The status document as JSON bytes."""
        status = self.stats.status(
            state=self.state,
            socket=str(self.config.socket_path),
            topics=dict(zip(CLASS_NAMES[1:], self.config.topics, strict=True)),
            kafka=self.publisher.status(),
        )

        return json.dumps(status, separators=(",", ":")).encode()

    def _warn(self, event: str, **fields: object) -> None:
        suppressed = self.warnings.allow(event)
        if suppressed is not None:
            self.log.warning(event, similar_suppressed=suppressed, **fields)

    async def _drain(self) -> int:
        """Publish everything received, flush, and say whether all of it made it."""
        self.state = "draining"
        deadline = time.monotonic() + self.config.drain_timeout_s
        self.listener.stop_accepting()
        self.log.info("draining", **self.stats.summary())
        for _ in range(FINAL_SWEEP_CYCLES):
            messages = self._take()
            if not messages:
                break
            await self._cycle(messages)
        remaining_s = max(0.0, deadline - time.monotonic())
        flushed = await self.publisher.flush(remaining_s)
        # TODO: when the drain times out, write the unpublished batches to the
        # disk spool (issue 5) instead of counting them failed.
        await self.publisher.stop(max(1.0, deadline - time.monotonic()))
        self.state = "stopped"
        summary = self.stats.summary()
        unsettled = sum(self.stats.received) - summary["published"] - summary["failed"]
        self.log.info(
            "stopped",
            flushed=flushed,
            unsettled=unsettled,
            **summary,
            emitter_drops=self.stats.drops_total(),
        )

        return 0 if flushed and unsettled == 0 else 1


async def run_broker(config: BrokerConfig) -> int:
    """Run a broker with ``config`` until it is told to stop."""
    return await Broker(config).run()
