"""The broker daemon: how it works.

Lifecycle. The broker checks its socket path, takes the lock beside it
(refusing to start when another broker holds it or answers on the socket),
opens its spool (a damaged file is set aside with a warning, and the broker
starts anyway), makes sure its three topics exist and starts its one Kafka
producer, then serves until SIGTERM or SIGINT, drains (below) and exits 0.
Kafka unreachable at start is not fatal: the broker serves into the spool
and keeps trying to connect.

Receive loop. One asyncio task waits until the ROUTER is readable, takes up
to ``recv_batch`` messages (or ``recv_max_bytes`` of envelopes) without
blocking, and decodes each with ``protocol.decode``. An event is routed by its
class (or its explicit topic) and partition key to an open Kafka batch for
that topic-partition; its envelope bytes go to Kafka untouched, never parsed.
At the end of the cycle every open batch is handed to the producer with
``send_batch``. Status requests are answered in the same pass, drop reports
and bad frames are counted.

Spooling. A batch the producer could not send within ``send_timeout_s``, a
batch with senders waiting for an ack that Kafka has not acknowledged within
``ack_spool_after_s`` (the emitters wait 5 s), or one that fails with a
retriable error, is written to the spool, and from then on every
new cycle goes to the spool too (one append per cycle, in a worker thread),
behind what is there: the loop keeps draining the socket whatever Kafka
does, and memory stays bounded by one cycle. A replay task publishes the
spool oldest first once Kafka answers (peek, send, remove), and when the
spool is empty new cycles go straight to Kafka again. Batches in flight at
the moment Kafka failed are spooled as they fail, so they may land behind a
few newer events: order holds except at that boundary. With acks=all the
producer keeps a batch it has sent until Kafka answers, so an acked batch
spooled as overdue is *held*: the replay leaves its events alone until Kafka
answers it, and removes them unsent if Kafka took it.

Refusals that will not pass (record too large, authorization, a topic Kafka
does not have) are written to the dead-letter file beside the spool, with
the reason, counted, and logged at most once a minute per topic. Batches
are bounded by their topic's ``max.message.bytes``, read from Kafka, and an
event over it even alone is refused before it is sent, and never spooled:
acked there, it could only be dead-lettered at replay. A batch Kafka
refuses as too large all the same is sent again in smaller pieces, so only
events too large on their own are refused. Messages that do not decode are
counted by reason and kept there too, clipped, at most
``BAD_FRAMES_PER_WRITE`` per write and one write at a time, so a flood of
garbage costs the good traffic one list append per bad message.

Acknowledgments. An event whose sender asked for one is acked when Kafka
acknowledged the batch holding it (acks=all, so every in-sync replica has
it) or when the spool committed it to disk, and nacked with the reason when
it was refused (spool full, dead-lettered). Nothing is acked when it is
merely received.

Loss. Sequence gaps, emitter drop reports and spool evictions and refusals
are counted per origin and published as ``zlog.loss`` application events
every ``loss_report_interval_s`` when there are any, and at drain. A gap
counts only once it has stayed open a whole interval, because one origin's
threads send on separate connections and their numbers arrive out of order.
A report that cannot be made is logged and counted, never raised: loss
reporting goes on, and the drain is not held up by it.
Before any event is handed to Kafka or the spool, the broker records it in
its hand-off ledger (``zlog.broker.handoff``), with each origin's highest
number, so that after a SIGKILL the next broker reports what this one lost:
the numbers it never read, as gaps, and the events Kafka had not confirmed,
as ``unconfirmed_at_crash``.

Shutdown. On SIGTERM or SIGINT the loop stops reading, the socket file is
removed so new emitters cannot connect, messages already queued in the socket
are taken one last time, and every batch is published, all within
``drain_timeout_s``. Batches Kafka has not acknowledged by then are spooled,
so the exit code is 0 whenever everything received is in Kafka or on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import zmq
from aiokafka.errors import KafkaError

from zlog import protocol
from zlog.broker.config import BrokerConfig
from zlog.broker.deadletter import BadFrame, DeadLetters, clip_frames
from zlog.broker.handoff import HandoffError, HandoffLedger, Unit
from zlog.broker.limits import RECORD_OVERHEAD_BYTES, record_bytes
from zlog.broker.listener import Listener
from zlog.broker.logs import RateLimiter, get_logger
from zlog.broker.loss import loss_events
from zlog.broker.operations import Operations
from zlog.broker.publisher import (
    MAX_RECONNECT_DELAY_S,
    Answer,
    OpenBatch,
    Publisher,
    describe,
)
from zlog.broker.routing import Routes
from zlog.broker.spool import DropPolicy, Spool, SpoolError
from zlog.broker.stats import CLASS_NAMES, Stats, spool_status
from zlog.errors import ConfigError

__all__ = ["Broker", "run_broker"]

# On shutdown, messages already queued in the socket are taken in at most this
# many cycles; an emitter that keeps sending cannot hold the drain forever.
FINAL_SWEEP_CYCLES = 64

# Of the drain time, the final sweep takes at most half, and the flush to
# Kafka leaves this share for spooling the batches Kafka did not acknowledge.
DRAIN_SPILL_SHARE = 0.2

# One replay step reads this much of the spool: about 4 ms of peek per 1,000
# records (docs/spool.md), and several Kafka batches' worth.
REPLAY_RECORDS = 4000
REPLAY_BYTES = 4 << 20

# A replay step waits this long at most for Kafka's answers. With acks=all
# the producer is idempotent and retries a batch sent to a known leader until
# Kafka answers; only a partition without a leader fails its batch after
# send_timeout_s (aiokafka 0.14, sender and accumulator).
REPLAY_WAIT_LIMIT_S = 120.0

# An idle receive loop looks at the socket this often even without a wakeup.
IDLE_RECHECK_S = 0.5

# Bad frames kept by one dead-letter write; while a write is under way, more
# are only counted. About 1.4 MiB of lines at most, a few ms in the disk
# thread, which the spool's writes share.
BAD_FRAMES_PER_WRITE = 256

_Event = protocol.Event
_Drops = protocol.DropReport
_Status = protocol.StatusRequest
_Pair = tuple[bytes | None, protocol.Event]


class Broker:
    """One running broker: the socket, the receive loop, the publisher, the spool."""

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
        self.publisher = Publisher(
            config,
            self.stats,
            self.reply,
            spill=self._spill_batch,
            reject=self._reject_batch,
        )
        self.routes = Routes(*config.topics)
        self.dead_letters = DeadLetters(
            config.dead_letter_path, config.dead_letter_max_bytes
        )
        self.handoff = HandoffLedger(config.ledger_path)
        self._handoff_open = False
        # Batches of a recorded unit not yet settled, by id(batch) before they
        # are submitted and by id(batch.answer) after: (batch or answer, unit).
        self._unit_of: dict[int, tuple[OpenBatch | Answer, Unit]] = {}
        self.ops = Operations(self)
        self.socket: zmq.Socket | None = None
        self.spool: Spool | None = None
        self.spool_status: dict = {}
        self.state = "starting"
        # True while the spool holds events: new ones go behind them.
        self.spooling = False
        self._appending = 0
        self._writes: set[asyncio.Future] = set()
        # Bad frames waiting for the end of the cycle, and the write of the
        # previous ones while it is under way.
        self._bad: list[BadFrame] = []
        self._bad_write: asyncio.Future | None = None
        self._tasks: list[asyncio.Task] = []
        self._own_seq = 0
        # Set at drain: when the final sweep must end (monotonic s).
        self._sweep_until: float | None = None
        self._stopping = False
        self._stop_requested = asyncio.Event()
        self._readable = asyncio.Event()
        self._spool_ready = asyncio.Event()
        # One thread for the spool and the dead-letter file, so writes keep
        # their order and never block the event loop.
        self._disk = ThreadPoolExecutor(1, thread_name_prefix="zlog-spool")

    async def run(self) -> int:
        """Serve until a signal, then drain; return the process exit code."""
        self.log.info("started", socket=str(self.config.socket_path))
        self.socket = self.listener.bind()
        self.log.info("bound", socket=str(self.config.socket_path))
        try:
            await self._open_spool()
            await self._connect()
            self._watch_signals()
            self.state = "serving"
            self.log.info("serving", spooling=self.spooling)
            await self.ops.start()
            # What start-up built lives as long as the process: kept out of
            # the collector's scans, which then cover only what cycles create.
            gc.freeze()
            self._tasks = [
                asyncio.create_task(self._replay_loop(), name="replay"),
                asyncio.create_task(self._loss_loop(), name="loss_report"),
            ]
            for task in self._tasks:
                task.add_done_callback(self._task_ended)
            await self._receive_loop()
            return await self._drain()
        finally:
            for task in self._tasks:
                task.cancel()
            self._unwatch()
            await self.ops.close()
            self.listener.close()
            await self._on_disk(self.handoff.close)
            if self.spool is not None:
                await self._on_disk(self.spool.close)
            self._disk.shutdown(wait=True)

    async def _open_spool(self) -> None:
        config = self.config
        self.spool = await self._on_disk(
            Spool.open,
            config.spool_path,
            config.spool_max_bytes,
            DropPolicy(config.spool_drop_policy),
        )
        if self.spool.recovery is not None:
            self.log.warning("spool_recovered", message=self.spool.recovery.message)
        self.spool_status = spool_status(self.spool.stats())
        if self.spool.count:
            self.spooling = True
            self.log.info(
                "spool_replay_pending",
                path=str(config.spool_path),
                events=self.spool.count,
            )
        await self._open_handoff()

    async def _open_handoff(self) -> None:
        """Take up what a killed predecessor left: its origins, its unconfirmed."""
        path = str(self.config.ledger_path)
        try:
            restored = await self._on_disk(self.handoff.open)
        except HandoffError as exc:
            self.log.warning(
                "ledger_unavailable",
                reason=str(exc),
                hint="losses at a crash of this broker will not be counted",
            )
            return
        self._handoff_open = True
        if restored.damaged is not None:
            self.log.warning("ledger_replaced", path=path, reason=restored.damaged)
        self.stats.sequences.restore(restored.origins)
        for (host, pid), ranges in restored.unconfirmed.items():
            self.stats.losses.add_unconfirmed(host, pid, ranges)
        if restored.unconfirmed:
            self.log.warning(
                "unconfirmed_at_crash",
                path=path,
                origins=len(restored.unconfirmed),
                events=sum(
                    last - first + 1
                    for ranges in restored.unconfirmed.values()
                    for first, last in ranges
                ),
                hint="a previous broker died before Kafka confirmed these",
            )

    async def _connect(self) -> bool:
        """Start the producer; when Kafka is unreachable, spool and say so."""
        try:
            await self.publisher.start()
        except ConfigError as exc:
            # A topic Kafka lacks or refuses: fatal at start, where the
            # operator sees it; later the spool keeps what arrives meanwhile.
            if self.state == "starting":
                raise
            self._warn(
                "kafka_refused",
                reason=str(exc),
                hint="events are spooled until this is fixed",
            )
            return False
        except (KafkaError, TimeoutError, OSError) as exc:
            self.spooling = True
            self.publisher.last_error = describe(exc)
            self._warn(
                "kafka_unavailable",
                bootstrap_servers=self.config.bootstrap_servers,
                reason=describe(exc),
                hint="events are spooled until Kafka answers",
            )
            return False
        self.log.info(
            "kafka_connected",
            bootstrap_servers=self.config.bootstrap_servers,
            topics=list(self.config.topics),
            compression=self.config.compression_type,
        )

        return True

    def stop(self) -> None:
        """Ask the receive loop to stop reading and drain."""
        self._stopping = True
        self._stop_requested.set()
        self._readable.set()
        self._spool_ready.set()

    def _watch_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stop)

    def _unwatch(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)

    async def _receive_loop(self) -> None:
        sock = self.socket
        while not self._stopping:
            # The ZeroMQ descriptor is edge-triggered: clear, then re-check the
            # socket's own flag, so an edge between the two is never lost.
            if not sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                self._readable.clear()
                if not sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                    if self.handoff.dirty:
                        self._record()
                    await self._wait_readable()
                continue
            await self._cycle(self._take())

    async def _wait_readable(self) -> None:
        """Sleep until the socket may hold messages.

        The descriptor is watched only during this wait: it stays readable
        until libzmq next looks at its queue, so a reader left in place while
        the loop waits on Kafka would wake the event loop for nothing, without
        end (measured: 200,000 empty wakeups in 5 s at 10,000 events/s).

        Every send on the socket also drains its command queue, which can take
        the descriptor's edge for a message that arrived meanwhile; ``reply``
        sets the event for that reason. The timer is a backstop: an edge lost
        some other way costs at most ``IDLE_RECHECK_S``, never a stall.
        """
        loop = asyncio.get_running_loop()
        fd = self.socket.getsockopt(zmq.FD)
        loop.add_reader(fd, self._readable.set)
        recheck = loop.call_later(IDLE_RECHECK_S, self._readable.set)
        try:
            await self._readable.wait()
        finally:
            recheck.cancel()
            loop.remove_reader(fd)

    def _take(self) -> list[list[bytes]]:
        """Messages waiting in the socket, up to the cycle's caps.

        Kept lean. A valid message is the identity and one frame, so the
        frame's own ``more`` flag is the only check for extra frames: asking
        the socket for ``RCVMORE`` after each frame, as ``recv_multipart``
        does, cost more than receiving the frame (1.6 µs against 0.5).
        ZeroMQ delivers a message whole: once its identity is in, so are its
        frames.
        """
        recv = self.socket.recv
        messages: list[list[bytes]] = []
        append = messages.append
        cap = self.config.recv_batch
        max_bytes = self.config.recv_max_bytes
        size = 0
        try:
            while size < max_bytes and len(messages) < cap:
                identity = recv(zmq.NOBLOCK)
                frame = recv(zmq.NOBLOCK, copy=False)
                frames = [identity, frame.bytes]
                while frame.more:
                    frame = recv(zmq.NOBLOCK, copy=False)
                    frames.append(frame.bytes)
                append(frames)
                size += len(frames[1])
        except zmq.Again:
            pass

        return messages

    async def _cycle(self, messages: list[list[bytes]]) -> None:
        """Decode one cycle's messages and send its events on."""
        pairs = self._decode(messages)
        if self._bad:
            self._keep_bad_frames()
        await self._dispatch(pairs)

    def _decode(self, messages: list[list[bytes]]) -> list[_Pair]:
        """The per-event path: decode and count. Kept lean."""
        decode = protocol.decode
        decode_frame = protocol.decode_frame
        received = self.stats.received
        note_sequence = self.stats.note_sequence
        pairs: list[_Pair] = []
        append = pairs.append
        for frames in messages:
            if len(frames) == 2:
                message = decode_frame(frames[1])
            else:
                message = decode(frames[1:])
            if message.__class__ is not _Event:
                self._handle_other(frames, message)
                continue
            received[message.event_class] += 1
            note_sequence(message.host, message.pid, message.seq)
            append((frames[0], message))

        return pairs

    async def _dispatch(self, pairs: list[_Pair]) -> None:
        """Send events to Kafka in batches, or behind the spool while it is used."""
        if not pairs:
            return
        # The ledger names these events before any of them is handed on, so
        # a broker killed from here on leaves them for the next one to report.
        unit = self.handoff.unit(pairs)
        recorded = self._record()
        if self._to_spool:
            pairs = self._refuse_too_large(pairs, unit)
            # The spool's append queues behind the record in the disk thread.
            if pairs:
                await self._store(pairs, unit)
            return
        full, open_batches, unresolved = self._route(pairs)
        if recorded is not None:
            await recorded
        for topic, events in unresolved.items():
            await self._route_late(topic, events, open_batches, full, unit)
        batches = [*full, *open_batches.values()]
        for batch in batches:
            self._unit_of[id(batch)] = (batch, unit)
        for batch in batches:
            await self._submit(batch)
        self.publisher.end_cycle()

    @property
    def _to_spool(self) -> bool:
        """Whether events go to the spool: it is in use, or no producer runs
        (one was retired out of step and the replay loop starts the next)."""
        return self.spooling or not self.publisher.connected

    async def _submit(self, batch: OpenBatch) -> None:
        # Once a batch of this cycle failed, the rest follow it into the spool
        # rather than overtake it in Kafka.
        if self._to_spool:
            self._spill_batch(batch, "spooling")
            return
        timeout_s = None
        if self._sweep_until is not None:
            # Draining: a partition Kafka is slow to take must not hold the
            # sweep past its share of the drain time.
            timeout_s = max(0.1, self._sweep_until - time.monotonic())
        answered = await self.publisher.submit(batch, timeout_s)
        # From here the unit follows the batch's answer, which the pieces a
        # refused batch is split into share.
        entry = self._unit_of.pop(id(batch), None)
        if entry is not None:
            self._unit_of[id(batch.answer)] = (batch.answer, entry[1])
            answered.add_done_callback(lambda _: self._answered(batch.answer))

    def _answered(self, answer: Answer) -> None:
        """Every piece of a batch is settled: its events published or refused
        for good count now; those handed back were counted by the spool."""
        entry = self._unit_of.pop(id(answer), None)
        if entry is not None:
            self.handoff.settle(entry[1], len(answer.final))

    def _batch_done(self, batch: OpenBatch) -> None:
        """A batch never submitted was refused for good: its events settled."""
        entry = self._unit_of.pop(id(batch), None)
        if entry is not None:
            self.handoff.settle(entry[1], len(batch.events))

    def _unit_for(self, batch: OpenBatch) -> Unit | None:
        """The unit of a batch being spooled, whether submitted or not."""
        entry = self._unit_of.pop(id(batch), None)
        if entry is None and batch.answer is not None:
            entry = self._unit_of.get(id(batch.answer))

        return entry[1] if entry is not None else None

    def _record(self) -> asyncio.Future | None:
        """Queue a ledger write of what changed; None when nothing did."""
        origins = self.stats.sequences.take_changed()
        change = self.handoff.take_change(origins)
        if change is None or not self._handoff_open:
            return None
        loop = asyncio.get_running_loop()
        write = loop.run_in_executor(self._disk, self._write_handoff, change)
        write.add_done_callback(self._handoff_written)

        return write

    def _write_handoff(self, change: object) -> HandoffError | None:
        try:
            self.handoff.write(change)
        except HandoffError as exc:
            return exc

        return None

    def _handoff_written(self, write: asyncio.Future) -> None:
        if not write.cancelled() and write.result() is not None:
            self._warn(
                "ledger_write_failed",
                reason=str(write.result()),
                hint="losses at a crash of this broker may be miscounted",
            )

    def _route(self, pairs: list[_Pair]) -> tuple:
        """Append each event to the open batch of its topic-partition. Kept lean."""
        publisher = self.publisher
        topics = self.routes.by_class
        partition_maps: dict[str, dict] = {}
        open_batches: dict[tuple[str, int], OpenBatch] = {}
        full: list[OpenBatch] = []
        unresolved: dict[str, list] = {}
        now_ms = int(time.time() * 1000)
        for identity, message in pairs:
            topic = message.topic or topics[message.event_class]
            by_key = partition_maps.get(topic)
            if by_key is None:
                by_key = publisher.partition_map(topic)
                if by_key is None:
                    unresolved.setdefault(topic, []).append((identity, message))
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
            if not batch.add(identity, message, now_ms):
                full.append(batch)
                batch = open_batches[topic, partition] = publisher.new_batch(
                    topic, partition
                )
                batch.add(identity, message, now_ms)

        return full, open_batches, unresolved

    async def _route_late(
        self,
        topic: str,
        pairs: list[_Pair],
        open_batches: dict[tuple[str, int], OpenBatch],
        full: list[OpenBatch],
        unit: Unit,
    ) -> None:
        """Route events naming a topic the producer had no metadata for yet."""
        publisher = self.publisher
        resolved = publisher.connected and await publisher.resolve_topic(topic)
        if not publisher.connected:
            # The producer was retired meanwhile (out of step): spool them.
            self._store(pairs, unit)
            return
        if not resolved:
            self._refuse_unknown_topic(topic, pairs, unit=unit)
            return
        now_ms = int(time.time() * 1000)
        for identity, message in pairs:
            partition = publisher.partition_for(topic, message.key)
            batch = open_batches.get((topic, partition))
            if batch is None:
                batch = open_batches[topic, partition] = publisher.new_batch(
                    topic, partition
                )
            if not batch.add(identity, message, now_ms):
                full.append(batch)
                batch = open_batches[topic, partition] = publisher.new_batch(
                    topic, partition
                )
                batch.add(identity, message, now_ms)

    def _refuse_unknown_topic(
        self,
        topic: str,
        pairs: list[_Pair],
        replay: bool = False,
        unit: Unit | None = None,
    ) -> None:
        """Dead-letter events for a topic Kafka lacks or refuses (spool: Kafka away)."""
        batch = OpenBatch(None, topic, -1, replay=replay)
        for identity, message in pairs:
            batch.count(identity, message)
        if unit is not None:
            self._unit_of[id(batch)] = (batch, unit)
        if self.publisher.kafka_state != "connected":
            self._spill_batch(batch, "topic metadata unavailable")
            return
        reason = self.publisher.refusal(topic)
        self._warn(
            "kafka_rejected", per=topic, topic=topic, events=len(pairs), reason=reason
        )
        self._reject_batch(batch, reason)
        self._batch_done(batch)

    def _handle_other(self, frames: list[bytes], message: object) -> None:
        """Status requests, drop reports and frames that did not decode."""
        if message.__class__ is _Status:
            self.stats.status_requests += 1
            self.reply(frames[0], protocol.encode_status_reply(self.status_json()))
        elif message.__class__ is _Drops:
            self.stats.count_drops(message)
        else:
            self.stats.bad_frames[message.reason] += 1
            self._warn("bad_frame", reason=message.reason, detail=message.detail)
            if self._bad_write is None and len(self._bad) < BAD_FRAMES_PER_WRITE:
                self._bad.append(
                    BadFrame(
                        message.reason,
                        message.detail,
                        frames[0],
                        len(frames) - 1,
                        clip_frames(frames[1:]),
                    )
                )
            else:
                self.stats.bad_frames_not_kept += 1

    def _keep_bad_frames(self) -> None:
        """Write this cycle's bad frames to the dead-letter file, off the loop."""
        bad, self._bad = self._bad, []
        loop = asyncio.get_running_loop()
        write = loop.run_in_executor(
            self._disk, self.dead_letters.write_bad_frames, bad
        )
        self._bad_write = write
        self._writes.add(write)
        write.add_done_callback(lambda done: self._bad_frames_written(done, len(bad)))

    def _bad_frames_written(self, write: asyncio.Future, count: int) -> None:
        self._bad_write = None
        kept = self._dead_letters_kept(write, count, "bad frames")
        self.stats.bad_frames_kept += kept
        self.stats.bad_frames_not_kept += count - kept

    def _dead_letters_kept(self, write: asyncio.Future, count: int, what: str) -> int:
        """How many of ``count`` lines a dead-letter write kept; warns if not all."""
        self._writes.discard(write)
        if write.cancelled():
            return 0
        if write.exception() is not None:
            self._warn(
                "dead_letter_failed",
                path=str(self.config.dead_letter_path),
                reason=describe(write.exception()),
            )
            return 0
        kept = write.result()
        if kept < count:
            self._warn(
                "dead_letter_full",
                per=what,
                path=str(self.config.dead_letter_path),
                max_bytes=self.dead_letters.max_bytes,
                hint=f"{what} are only counted until the file is moved away",
            )

        return kept

    def reply(self, identity: bytes | None, frames: list[bytes]) -> None:
        """Send frames back to one emitter; count it when the emitter is gone."""
        if identity is None:
            return
        try:
            self.socket.send_multipart([identity, *frames], zmq.NOBLOCK)
        except zmq.ZMQError:
            self.stats.replies_undeliverable += 1
        # The send may have consumed the edge of a message now waiting.
        self._readable.set()

    async def _on_disk(self, function, *args):
        """Run a spool or dead-letter call in the disk thread."""
        loop = asyncio.get_running_loop()

        return await loop.run_in_executor(self._disk, function, *args)

    def _store(self, pairs: list[_Pair], unit: Unit | None = None) -> asyncio.Future:
        """Append events to the spool behind everything queued before them.

        The write is handed to the disk thread at once, so calls keep their
        order; the returned future settles acks and counts when it is done.
        """
        if not self.spooling:
            self.spooling = True
            self.log.warning("spooling", path=str(self.config.spool_path))
        self._spool_ready.set()
        events = [event for _, event in pairs]
        loop = asyncio.get_running_loop()
        write = loop.run_in_executor(self._disk, self._append_and_stat, events)
        self._appending += 1
        done = asyncio.ensure_future(self._settle_store(write, pairs, unit))
        self._writes.add(done)
        done.add_done_callback(self._writes.discard)

        return done

    def _append_and_stat(self, events: list[protocol.Event]) -> tuple:
        result = self.spool.append(events)

        return result, self.spool.stats()

    async def _settle_store(
        self, write: asyncio.Future, pairs: list[_Pair], unit: Unit | None
    ) -> None:
        try:
            await self._count_store(write, pairs)
        finally:
            if unit is not None:
                self.handoff.settle(unit, len(pairs))

    async def _count_store(self, write: asyncio.Future, pairs: list[_Pair]) -> None:
        stats = self.stats
        try:
            result, spool_stats = await write
        except SpoolError as exc:
            self._fail(pairs, f"spool write failed: {exc}", "spool_error")
            self._warn("spool_write_failed", reason=str(exc), events=len(pairs))
            return
        finally:
            self._appending -= 1
        self.spool_status = spool_status(spool_stats)
        refused = {id(event) for event in result.refused}
        stored = [(i, e) for i, e in pairs if id(e) not in refused]
        for identity, event in stored:
            stats.spooled[event.event_class] += 1
            if event.wants_ack and identity is not None:
                self.reply(identity, protocol.encode_ack(event.seq))
                stats.acks_sent += 1
        if refused:
            self._fail(
                [(i, e) for i, e in pairs if id(e) in refused],
                "spool full",
                "spool_refused",
            )
            self._warn("spool_full", refused=len(refused), path=str(self.spool.path))
        for (_, host, pid), count in result.evicted.items():
            stats.losses.add(host, pid, "spool_evicted", count)

    def _fail(self, pairs: list[_Pair], reason: str, loss_reason: str) -> None:
        """Count events that are lost for good and refuse their acks."""
        stats = self.stats
        for identity, event in pairs:
            stats.failed[event.event_class] += 1
            stats.losses.add(event.host, event.pid, loss_reason, 1)
            if event.wants_ack and identity is not None:
                self.reply(identity, protocol.encode_nack(event.seq, reason))
                stats.nacks_sent += 1

    def _spill_batch(self, batch: OpenBatch, reason: str) -> None:
        """A batch Kafka may take later: keep it in the spool."""
        identities = {id(event): identity for identity, event in batch.acks}
        pairs = [(identities.get(id(e)), e) for e in batch.events]
        unit = self._unit_for(batch)
        pairs = self._refuse_too_large(pairs, unit)
        if pairs:
            self._store(pairs, unit)

    def _refuse_too_large(self, pairs: list[_Pair], unit: Unit | None) -> list[_Pair]:
        """Dead-letter and nack the events too large for their topic even
        alone; return the others.

        Such an event must not be spooled: the spool would ack it, and the
        replay could only dead-letter it.
        """
        if not self.publisher.limits.refusing:
            return pairs
        kept, refused = self._sort_too_large(pairs)
        for topic, (batch, reason) in refused.items():
            self._warn(
                "kafka_rejected",
                per=topic,
                topic=topic,
                events=len(batch.events),
                reason=reason,
            )
            self._reject_batch(batch, reason)
        if unit is not None and len(kept) < len(pairs):
            self.handoff.settle(unit, len(pairs) - len(kept))

        return kept

    def _sort_too_large(self, pairs: list[_Pair]) -> tuple[list[_Pair], dict]:
        """The events that may fit, and a batch per topic of those that do not.

        Kept lean: an event whose record fits its topic's batch bound costs
        one size and one comparison.
        """
        limits = self.publisher.limits
        bounds = limits.refusing
        topics = self.routes.by_class
        kept: list[_Pair] = []
        append = kept.append
        refused: dict[str, tuple[OpenBatch, str]] = {}
        for pair in pairs:
            event = pair[1]
            topic = event.topic or topics[event.event_class]
            bound = bounds.get(topic)
            if bound is None or record_bytes(event) + RECORD_OVERHEAD_BYTES <= bound:
                append(pair)
                continue
            exc = limits.event_refusal(topic, event)
            if exc is None:
                append(pair)
                continue
            if topic not in refused:
                refused[topic] = (OpenBatch(None, topic, -1), describe(exc))
            refused[topic][0].count(pair[0], event)

        return kept, refused

    def _reject_batch(self, batch: OpenBatch, reason: str) -> None:
        """A batch Kafka will never take: count it, nack it, dead-letter it.

        A replayed batch was settled when it was spooled (counted, acked):
        it is only counted dead-lettered now.
        """
        stats = self.stats
        label = reason.split(":", 1)[0]
        stats.dead_lettered[label] += len(batch.events)
        if not batch.replay:
            for event in batch.events:
                stats.failed[event.event_class] += 1
        for identity, event in batch.acks:
            if identity is not None:
                self.reply(identity, protocol.encode_nack(event.seq, reason))
                stats.nacks_sent += 1
        loop = asyncio.get_running_loop()
        write = loop.run_in_executor(
            self._disk, self.dead_letters.write, batch.topic, reason, batch.events
        )
        self._writes.add(write)
        write.add_done_callback(
            lambda done: self._dead_letters_written(done, len(batch.events))
        )

    def _dead_letters_written(self, write: asyncio.Future, count: int) -> None:
        kept = self._dead_letters_kept(write, count, "refused events")
        self.stats.dead_lettered_not_kept += count - kept

    async def _replay_loop(self) -> None:
        """Connect when needed, and publish the spool whenever it holds events."""
        delay_s = 1.0
        while not self._stopping:
            if not self.spooling:
                self._spool_ready.clear()
                await self._spool_ready.wait()
                continue
            if not self.publisher.connected and not await self._connect():
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, MAX_RECONNECT_DELAY_S)
                continue
            progress = await self._replay_step()
            if progress is None:
                # Empty: appends in the disk thread are still spooling events.
                if self._appending == 0 and self.spool.count == 0:
                    self.spooling = False
                    self.publisher.forget_taken()
                    self.log.info("spool_drained", replayed=sum(self.stats.replayed))
                else:
                    await asyncio.sleep(0.01)
            elif progress:
                delay_s = 1.0
            elif not self.publisher.connected:
                # The producer was retired out of step: Kafka answers, so
                # start the next one now rather than after the backoff.
                delay_s = 1.0
            else:
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, MAX_RECONNECT_DELAY_S)

    async def _replay_step(self) -> bool | None:
        """Publish the oldest spooled events; None when there were none.

        Returns whether every event of the step was settled for good; those
        Kafka took or refused for good (dead-lettered) are removed from the
        spool, the rest are tried again.
        """
        records = await self._on_disk(self.spool.peek, REPLAY_RECORDS, REPLAY_BYTES)
        if not records:
            return None
        pairs, taken_ids = self._replayable(records)
        full, open_batches, unresolved = self._route(pairs)
        answers = []
        for batch in (*full, *open_batches.values()):
            batch.replay = True
            answers.append(await self.publisher.submit(batch))
        if answers:
            # Kafka may still take a batch the producer is retrying; giving
            # up before it would replay those events twice.
            await asyncio.wait(answers, timeout=REPLAY_WAIT_LIMIT_S)
        by_event = {id(record.event): record.id for record in records}
        done_ids = [
            by_event[id(event)]
            for answer in answers
            if answer.done()
            for event in answer.result()
        ]
        done_ids += taken_ids
        done_ids += await self._replay_unresolved(unresolved, records)
        all_done = len(done_ids) == len(records)
        if all_done:
            removed = self.spool.remove_through
            await self._on_disk(removed, records[-1].id)
        elif done_ids:
            await self._on_disk(self.spool.remove, done_ids)
        self.spool_status = spool_status(await self._on_disk(self.spool.stats))

        return all_done

    def _replayable(self, records: list) -> tuple[list[_Pair], list[int]]:
        """The records to send, and the ids of those Kafka took already.

        An event spooled while its batch was still in the producer (held) is
        not sent until Kafka answers that batch, and not at all if it took it.
        """
        pairs, taken_ids = [], []
        replay_state = self.publisher.replay_state
        for record in records:
            state = replay_state(record.event)
            if state is None:
                pairs.append((None, record.event))
            elif state:
                taken_ids.append(record.id)
                self.stats.replayed[record.event.event_class] += 1

        return pairs, taken_ids

    async def _replay_unresolved(self, unresolved: dict, records: list) -> list[int]:
        """Spooled events for a topic Kafka lacks: dead-letter them if Kafka is up."""
        ids = []
        by_event = {id(record.event): record.id for record in records}
        for topic, pairs in unresolved.items():
            if await self.publisher.resolve_topic(topic):
                continue  # known now: the next step routes them
            if self.publisher.kafka_state != "connected":
                continue
            self._refuse_unknown_topic(topic, pairs, replay=True)
            ids += [by_event[id(event)] for _, event in pairs]

        return ids

    async def _loss_loop(self) -> None:
        # Sleeps on the stop event, so a stopping broker never waits out the
        # interval; the drain publishes the last report itself.
        interval_s = self.config.loss_report_interval_s
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_requested.wait(), interval_s)
            if not self._stopping:
                await self._report_losses(gap_age_s=interval_s)

    async def _report_losses(self, gap_age_s: float) -> None:
        """Publish what is known lost since the last report, if anything.

        A sequence gap counts as lost once it has stayed open ``gap_age_s``:
        until then its numbers may still arrive on another connection.

        Never raises: a report that fails is logged (once a minute) and its
        events counted in ``losses_not_reported``, and the next report is
        made as usual, so no report, however odd, ends loss reporting or
        stops the drain.
        """
        self.stats.confirm_gaps(gap_age_s)
        taken = self.stats.losses.take()
        if not taken:
            return
        total = sum(sum(counts.values()) for counts in taken.values())
        self._warn("events_lost", origins=len(taken), total=total)
        try:
            ranges = self.stats.losses.take_ranges()
            events = loss_events(taken, self._own_seq, ranges)
            # The previous broker's unconfirmed events are in this report now.
            self.handoff.release_restored()
            self._own_seq += len(events)
            self.stats.generated += len(events)
            await self._dispatch([(None, event) for event in events])
            self.stats.losses.mark_reported(taken)
        except Exception as exc:
            self.stats.losses_not_reported += total
            self._warn(
                "loss_report_failed",
                reason=f"{exc.__class__.__name__}: {exc}",
                events=total,
                hint="these losses are counted in the status document only",
            )

    def status_json(self) -> bytes:
        """The status document as JSON bytes."""
        status = self.stats.status(
            state=self.state,
            socket=str(self.config.socket_path),
            topics=dict(zip(CLASS_NAMES[1:], self.config.topics, strict=True)),
            kafka=self.publisher.status(),
            spool={
                "path": str(self.config.spool_path),
                "spooling": self.spooling,
                **self.spool_status,
            },
            dead_letter_path=str(self.config.dead_letter_path),
        )

        return json.dumps(status, separators=(",", ":")).encode()

    def _warn(self, event: str, per: str = "", **fields: object) -> None:
        """Log a warning at most once a minute per event (and ``per`` value)."""
        suppressed = self.warnings.allow(f"{event}:{per}")
        if suppressed is not None:
            self.log.warning(event, similar_suppressed=suppressed, **fields)

    async def _drain(self) -> int:
        """Publish or spool everything received, then say whether all of it is safe."""
        self.state = "draining"
        self.ops.stopping()
        deadline = time.monotonic() + self.config.drain_timeout_s
        self.listener.stop_accepting()
        self.log.info("draining", **self.stats.summary())
        # Half the drain time at most goes to taking in what is still queued,
        # so flushing to Kafka or the spool keeps the other half.
        self._sweep_until = time.monotonic() + self.config.drain_timeout_s / 2
        for _ in range(FINAL_SWEEP_CYCLES):
            messages = self._take()
            if not messages:
                break
            await self._cycle(messages)
            if time.monotonic() > self._sweep_until:
                break
        # What is still missing now will not arrive at this broker.
        await self._report_losses(gap_age_s=0.0)
        await self._stop_tasks(deadline)
        flushed = True
        if self.publisher.connected:
            # The flush leaves a share of the drain for spooling what Kafka
            # did not acknowledge in time.
            spill_reserve_s = self.config.drain_timeout_s * DRAIN_SPILL_SHARE
            flush_s = max(0.0, deadline - time.monotonic() - spill_reserve_s)
            flushed = await self.publisher.flush(flush_s)
            for batch in self.publisher.abandon_in_flight():
                self._spill_batch(batch, "drain timed out")
            # Held events Kafka took that the replay has not yet removed stay
            # in the spool: the next broker sends them again.
            self.stats.duplicates_possible += self.publisher.forget_taken()
        # A spool write in the disk thread cannot be interrupted: its events
        # are safe only once it commits. Each write holds at most one cycle or
        # the batches that were in flight, so this wait is short.
        while self._writes:
            await asyncio.wait(list(self._writes))
        # Every settled unit leaves the ledger; only what Kafka never
        # answered and the spool did not take stays for the next broker.
        recorded = self._record()
        if recorded is not None:
            await recorded
        # Everything is published or spooled by now: a producer that does not
        # stop in the time left is abandoned, never waited for.
        await self.publisher.stop(max(0.1, deadline - time.monotonic()))
        self.state = "stopped"
        summary = self.stats.summary()
        unsettled = sum(self.stats.received) + self.stats.generated
        unsettled -= self.stats.settled()
        self.log.info(
            "stopped",
            flushed=flushed,
            unsettled=unsettled,
            **summary,
            spool_events=self.spool.count,
            emitter_drops=self.stats.drops_total(),
        )

        return 0 if unsettled == 0 else 1

    async def _stop_tasks(self, deadline: float) -> None:
        """Let a replay step in progress finish within the drain, then stop.

        Never raises: a task that failed was logged when it ended, and the
        drain goes on to flush and spool whatever became of it.
        """
        self._spool_ready.set()
        remaining_s = max(0.1, deadline - time.monotonic())
        await asyncio.wait(self._tasks, timeout=remaining_s / 2)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _task_ended(self, task: asyncio.Task) -> None:
        """Log a background task that ended by an exception: nobody awaits it."""
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        self.log.error(
            "task_failed",
            task=task.get_name(),
            reason=f"{exc.__class__.__name__}: {exc}",
            hint="the broker goes on without it until it is restarted",
        )


async def run_broker(config: BrokerConfig) -> int:
    """Run a broker with ``config`` until it is told to stop."""
    return await Broker(config).run()
