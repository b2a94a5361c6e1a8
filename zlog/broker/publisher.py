"""The broker's Kafka side: one producer, batches built by topic-partition.

The receive loop appends envelopes to open batches (``BatchBuilder``) keyed by
topic and partition, then submits them all with ``send_batch``: one future per
batch instead of one per event, measured about six times faster than
``send()`` per event (docs/broker.md). The partition is chosen here the way
the producer would choose it (its partitioner, Kafka's murmur2 of the key), so
keyed events land where any other Kafka client would put them.

When a batch's future resolves, every event in it is counted published and
every sender that asked is acked through ``reply``. A batch Kafka does not
take goes to one of two handlers the broker gives: ``spill`` when the cause
may pass (Kafka unreachable, slower than ``send_timeout_s``, a retriable
error), so the batch is spooled, and ``reject`` when it will not (record too
large, authorization, unknown topic), so the batch is dead-lettered.

Batches are bounded by each topic's ``max.message.bytes``, read from Kafka
(``zlog.broker.limits``), so an event too large for its topic even alone
is refused before it is sent, and Kafka is not asked to take a batch it
would refuse. Kafka's refusals remain the fallback where the limit read is
not the one Kafka applies.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NotControllerError,
    OutOfOrderSequenceNumber,
    RecordListTooLargeError,
    TopicAuthorizationFailedError,
    UnknownTopicOrPartitionError,
)

from zlog import protocol
from zlog.broker.config import BrokerConfig
from zlog.broker.idempotence import SequenceRewind
from zlog.broker.limits import TopicLimits, read_broker_default, read_limits
from zlog.broker.logs import RateLimiter, get_logger
from zlog.broker.stats import Stats
from zlog.errors import ConfigError

__all__ = ["Answer", "OpenBatch", "Publisher", "not_written", "split_too_large"]

# Kafka's error codes for a topic that exists already, that it does not
# have, and that it will not show or take from this client.
_TOPIC_ALREADY_EXISTS = 36
_UNKNOWN_TOPIC = UnknownTopicOrPartitionError.errno
_TOPIC_NOT_AUTHORIZED = TopicAuthorizationFailedError.errno

# A topic an event named but Kafka does not know is not looked up again for
# this long, so a misconfigured emitter cannot stall the loop every cycle.
UNKNOWN_TOPIC_RETRY_S = 30.0

# How long one metadata lookup for an unknown topic may hold the loop, and
# how often a lookup at start asks again.
TOPIC_LOOKUP_TIMEOUT_S = 2.0
TOPIC_LOOKUP_INTERVAL_S = 0.2

# Topic limits (max.message.bytes) are read again this often, and at most
# this often when Kafka refused a batch the limit read let through.
LIMITS_REFRESH_S = 300.0
LIMITS_MIN_REFRESH_S = 10.0

# Partition counts can grow; the key -> partition cache is rebuilt this often.
PARTITION_CACHE_TTL_S = 60.0

# How long a failed start waits before trying Kafka again, at most.
MAX_RECONNECT_DELAY_S = 10.0

# Kafka's refusals of a batch larger than the topic or a log segment takes.
TOO_LARGE = (MessageSizeTooLargeError, RecordListTooLargeError)

# A batch refused as out of order is sent again this many times at most: the
# rewind sets the numbers right within one or two, so more means they are
# out of step for another reason (Kafka restarted with batches in flight):
# the batch is spooled and the producer replaced (``_out_of_step``).
MAX_OUT_OF_ORDER_RESENDS = 3

Reply = Callable[[bytes, list[bytes]], None]


@dataclass(slots=True, eq=False)
class OpenBatch:
    """One Kafka batch being filled, with what to do when Kafka answers."""

    builder: object
    topic: str
    partition: int
    counts: list[int] = field(default_factory=lambda: [0, 0, 0, 0])
    # The events in the batch, kept so a failed batch can be spooled.
    events: list[protocol.Event] = field(default_factory=list)
    # (ROUTER identity, event) of each event whose sender wants an ack.
    acks: list[tuple[bytes, protocol.Event]] = field(default_factory=list)
    # Replayed from the spool: settled by the replay, never spilled again.
    replay: bool = False
    # Spooled while still in flight (held, or at drain): Kafka's answer no
    # longer acks it, and a later success at drain is a duplicate.
    abandoned: bool = False
    # Spools the batch if Kafka has not answered by ack_spool_after_s; only
    # on batches whose senders wait for an ack.
    overdue: asyncio.TimerHandle | None = None
    # Spooled as overdue while the producer keeps it: the replay leaves its
    # events alone until Kafka answers it.
    held: bool = False
    # time.monotonic() when handed to the producer, for the latency metric.
    sent_at_s: float = 0.0
    # Shared with the pieces it is split into when Kafka refuses it.
    answer: Answer | None = None
    # Times its events were sent again after an out-of-order refusal.
    resends: int = 0

    def add(self, identity: bytes | None, event: protocol.Event, now_ms: int) -> bool:
        """Append an event; False when the batch is full. Kept lean."""
        if (
            self.builder.append(
                timestamp=now_ms,
                key=event.key,
                value=event.value,
                headers=event.headers,
            )
            is None
        ):
            return False
        self.count(identity, event)

        return True

    def count(self, identity: bytes | None, event: protocol.Event) -> None:
        """Note an event as part of the batch, for counts, acks and spooling."""
        self.counts[event.event_class] += 1
        self.events.append(event)
        if event.wants_ack:
            self.acks.append((identity, event))


@dataclass(slots=True)
class Answer:
    """What became of one submitted batch and of every piece split from it.

    ``future`` resolves once each piece is published, refused for good or
    handed back (spooled, or left for the replay to retry), with the events
    published or refused for good: a replay removes those from the spool.
    """

    future: asyncio.Future
    waiting: int = 1
    final: list[protocol.Event] = field(default_factory=list)

    def piece_done(self, events: list[protocol.Event], for_good: bool) -> None:
        """Note one piece's fate; the last one resolves the future."""
        if for_good:
            self.final += events
        self.waiting -= 1
        if self.waiting == 0:
            self.future.set_result(self.final)


Handler = Callable[[OpenBatch, str], None]


def is_retriable(exc: BaseException) -> bool:
    """Whether a failed send may succeed later, so its batch is spooled."""
    if isinstance(exc, TimeoutError | KafkaTimeoutError | asyncio.CancelledError):
        return True
    if isinstance(exc, OutOfOrderSequenceNumber):
        # The producer's fault, not the events': a new producer takes them.
        return True

    return bool(getattr(exc, "retriable", False))


def not_written(exc: BaseException) -> bool:
    """Whether Kafka answered that it did not write a batch sent to it.

    A refusal (too large, not authorized, out of order) says so. A timeout,
    a lost connection or a leader change leaves it unknown: Kafka may have
    written the batch. Its record numbers must then stay taken; given back,
    the partition's next batch of the same size would carry the same
    numbers, and Kafka would answer it as a duplicate of the written one,
    acknowledged and never stored. Should Kafka not have written it, the
    hole makes the next batches fail out of order, and the producer is
    replaced (``Publisher._out_of_step``).
    """
    if isinstance(exc, OutOfOrderSequenceNumber):
        return True

    return not is_retriable(exc)


def describe(exc: BaseException) -> str:
    """A failure as one short reason: the error's class name and message."""
    return f"{type(exc).__name__}: {exc}".strip(": ")


class Publisher:
    """Owns the only Kafka producer and the batches in flight to it."""

    def __init__(
        self,
        config: BrokerConfig,
        stats: Stats,
        reply: Reply,
        *,
        spill: Handler,
        reject: Handler,
    ) -> None:
        self.config = config
        self.stats = stats
        self.reply = reply
        self.spill = spill
        self.reject = reject
        self.log = get_logger()
        self.warnings = RateLimiter()
        self.kafka_state = "starting"
        self.last_error: str | None = None
        # Made in start(): aiokafka binds its producer to the running loop.
        self.producer: AIOKafkaProducer | None = None
        # topic -> key -> partition; None maps to this cycle's sticky partition.
        self._partitions: dict[str, dict[bytes | None, int]] = {}
        self._partitions_built = time.monotonic()
        # topic -> (monotonic s when to look it up again, why it was refused)
        self._unknown_topics: dict[str, tuple[float, str]] = {}
        self._in_flight: dict[asyncio.Future, OpenBatch] = {}
        # Pieces of refused batches not yet handed to the producer, and the
        # tasks handing them over.
        self._unsent: dict[OpenBatch, None] = {}
        self._resending: set[asyncio.Task] = set()
        self._rewind: SequenceRewind | None = None
        # Producers retired out of step, while they finish (``_out_of_step``).
        self._retiring: set[asyncio.Task] = set()
        # Origins (host, pid, seq) of the events of held batches not answered
        # yet, and of those Kafka then took, which the replay only removes.
        self._held: set[tuple[str, int, int]] = set()
        self._held_futures: set[asyncio.Future] = set()
        self._taken: set[tuple[str, int, int]] = set()
        self.limits = TopicLimits(config.max_batch_bytes, config.compression_type)
        self._limits_stale = asyncio.Event()
        self._refresher: asyncio.Task | None = None
        # Called with (events, seconds to Kafka's ack) per acknowledged batch.
        self.on_batch_acked: Callable[[int, float], None] | None = None

    async def start(self) -> None:
        """Create the topics if allowed, check them, connect, learn their partitions."""
        config = self.config
        await self._prepare_topics()
        producer = AIOKafkaProducer(
            **config.kafka_client_options(),
            acks="all" if config.acks == "all" else int(config.acks),
            # Idempotence needs acks=all; with acks=1 retries may duplicate.
            enable_idempotence=config.acks == "all",
            compression_type=config.compression_type,
            linger_ms=config.linger_ms,
            max_batch_size=config.max_batch_bytes,
            # A batch not yet sent within the bound expires in the producer
            # and is spooled: the producer never sends it later. A batch sent
            # is retried until Kafka answers (idempotence); _expire bounds
            # the wait of acked ones.
            request_timeout_ms=int(config.send_timeout_s * 1000),
            client_id="zlog-broker",
        )
        try:
            await producer.start()
            for topic in self.config.topics:
                await asyncio.wait_for(
                    producer.partitions_for(topic), config.send_timeout_s
                )
        except BaseException:
            await _stop_quietly(producer, config.send_timeout_s)
            raise
        self.producer = producer
        self._rewind = SequenceRewind(producer)
        self.kafka_state = "connected"
        self._refresher = asyncio.create_task(self._refresh_limits())

    @property
    def connected(self) -> bool:
        """Whether a producer is running (Kafka may still be failing)."""
        return self.producer is not None

    async def _prepare_topics(self) -> None:
        """Create the topics if allowed, then check Kafka shows them to us.

        A topic Kafka lacks or refuses to this client is a ConfigError naming
        the topic and the fix: the operator must act, waiting will not help.
        """
        admin = AIOKafkaAdminClient(
            **self.config.kafka_client_options(), client_id="zlog-broker"
        )
        await admin.start()
        try:
            if self.config.create_topics:
                await self._ensure_topics(admin)
            codes = await self._describe_topics(admin)
            for topic, code in codes.items():
                self._check_topic(topic, code)
            await self._learn_limits(admin, list(self.config.topics))
        finally:
            await admin.close()

    async def _describe_topics(self, admin: AIOKafkaAdminClient) -> dict[str, int]:
        """Kafka's error code for each topic, 0 when it is there.

        A Kafka that creates topics on a metadata request answers "unknown"
        the first time, so an unknown topic is asked for again for a moment.
        """
        deadline = time.monotonic() + TOPIC_LOOKUP_TIMEOUT_S
        while True:
            described = await admin.describe_topics(list(self.config.topics))
            codes = {entry["topic"]: entry["error_code"] for entry in described}
            if _UNKNOWN_TOPIC not in codes.values() or time.monotonic() > deadline:
                return codes
            await asyncio.sleep(TOPIC_LOOKUP_INTERVAL_S)

    async def _ensure_topics(self, admin: AIOKafkaAdminClient) -> None:
        new_topics = [
            NewTopic(topic, self.config.topic_partitions, self.config.topic_replication)
            for topic in self.config.topics
        ]
        response = await _create_topics(admin, new_topics)
        for topic, code, message in _topic_errors(response):
            # Not allowed to create: the topic may exist all the same, which
            # the check after this tells.
            if code not in (0, _TOPIC_ALREADY_EXISTS, _TOPIC_NOT_AUTHORIZED):
                raise ConfigError(
                    f"cannot create topic {topic!r} (Kafka error {code}: "
                    f"{message}); create it yourself or pass --no-create-topics"
                )

    def _check_topic(self, topic: str, code: int) -> None:
        if code == _UNKNOWN_TOPIC and self.config.create_topics:
            # Created, or found existing, but not shown yet: a busy Kafka
            # spreads new metadata slowly. Waiting helps, so not a ConfigError.
            raise UnknownTopicOrPartitionError(
                f"topic {topic!r} was created but Kafka does not show it after "
                f"{TOPIC_LOOKUP_TIMEOUT_S:g} s; will try again"
            )
        if code == _UNKNOWN_TOPIC:
            raise ConfigError(
                f"topic {topic!r} does not exist in Kafka and the broker does not "
                f"create topics; create it or pass --create-topics"
            )
        if code == _TOPIC_NOT_AUTHORIZED:
            raise ConfigError(
                f"Kafka refuses topic {topic!r} to {self.principal()} (topic "
                f"authorization failed): grant it WRITE and DESCRIBE on the topic, "
                f"and CREATE if the broker should create it"
            )

    async def _learn_limits(
        self, admin: AIOKafkaAdminClient, topics: list[str]
    ) -> None:
        """Read the topics' ``max.message.bytes``; unknown where Kafka will not say.

        A limit known before is kept when it cannot be read again.
        """
        try:
            read = await asyncio.wait_for(
                read_limits(admin, topics), TOPIC_LOOKUP_TIMEOUT_S
            )
            reason = "Kafka did not describe the topic"
        except (KafkaError, TimeoutError, OSError) as exc:
            read, reason = dict.fromkeys(topics), describe(exc)
        unknown = [t for t, limit in read.items() if limit is None]
        if unknown and self.limits.broker_default_bytes is None:
            with contextlib.suppress(KafkaError, TimeoutError, OSError):
                self.limits.broker_default_bytes = await asyncio.wait_for(
                    read_broker_default(admin), TOPIC_LOOKUP_TIMEOUT_S
                )
        for topic, limit in read.items():
            if limit is not None or not self.limits.known(topic):
                self.limits.learn(topic, limit)
        if unknown:
            self._limits_unknown(unknown, reason)

    async def _look_up_limits(self, topics: list[str]) -> None:
        """Read the topics' limits with an admin client of their own."""
        admin = AIOKafkaAdminClient(
            **self.config.kafka_client_options(), client_id="zlog-broker"
        )
        try:
            await asyncio.wait_for(admin.start(), TOPIC_LOOKUP_TIMEOUT_S)
            await self._learn_limits(admin, topics)
        except (KafkaError, TimeoutError, OSError) as exc:
            new = [topic for topic in topics if not self.limits.known(topic)]
            for topic in new:
                self.limits.learn(topic, None)
            if new:
                self._limits_unknown(new, describe(exc))
        finally:
            with contextlib.suppress(KafkaError, TimeoutError, OSError):
                await asyncio.wait_for(admin.close(), TOPIC_LOOKUP_TIMEOUT_S)

    def _limits_unknown(self, topics: list[str], reason: str) -> None:
        suppressed = self.warnings.allow("topic_limit_unknown")
        if suppressed is not None:
            self.log.warning(
                "topic_limit_unknown",
                topics=topics,
                reason=reason,
                hint="events too large for these topics are found by Kafka's "
                "refusal: grant the broker DESCRIBE_CONFIGS on them",
                similar_suppressed=suppressed,
            )

    async def _refresh_limits(self) -> None:
        """Read the limits again now and then, and soon after a refusal."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._limits_stale.wait(), LIMITS_REFRESH_S)
            self._limits_stale.clear()
            await self._look_up_limits(self.limits.topics)
            await asyncio.sleep(LIMITS_MIN_REFRESH_S)

    def principal(self) -> str:
        """Who the broker is to Kafka, as an ACL names it."""
        if self.config.sasl_username:
            return f"User:{self.config.sasl_username}"

        return "the broker's Kafka principal"

    def partition_map(self, topic: str) -> dict[bytes | None, int] | None:
        """The key -> partition cache of a topic Kafka knows, else None."""
        by_key = self._partitions.get(topic)
        if by_key is not None:
            return by_key
        if not self.limits.known(topic):
            return None
        partitions = self.producer.client.cluster.partitions_for_topic(topic)
        if not partitions:
            return None
        by_key = {None: random.choice(sorted(partitions))}
        self._partitions[topic] = by_key

        return by_key

    def partition_for(self, topic: str, key: bytes | None) -> int:
        """Where ``key`` goes in ``topic``: the producer's partitioner decides."""
        by_key = self._partitions[topic]
        partitions = sorted(self.producer.client.cluster.partitions_for_topic(topic))
        available = self.producer.client.cluster.available_partitions_for_topic(topic)
        partition = self.producer._partitioner(key, partitions, list(available))
        by_key[key] = partition

        return partition

    def new_batch(self, topic: str, partition: int) -> OpenBatch:
        """An empty batch for one topic-partition."""
        return OpenBatch(self.limits.new_builder(topic), topic, partition)

    async def resolve_topic(self, topic: str) -> bool:
        """Fetch metadata for a topic an event named; False when Kafka lacks it.

        ``refusal`` then says why: Kafka does not have the topic, or will not
        show it to this client.
        """
        looked_up = self._unknown_topics.get(topic)
        if looked_up is not None and time.monotonic() < looked_up[0]:
            return False
        try:
            await asyncio.wait_for(
                self.producer.partitions_for(topic), TOPIC_LOOKUP_TIMEOUT_S
            )
        except TopicAuthorizationFailedError:
            self._remember_refusal(
                topic,
                f"TopicAuthorizationFailedError: Kafka refuses topic {topic!r} "
                f"to {self.principal()}",
            )
            return False
        except (KafkaError, TimeoutError):
            self._remember_refusal(topic, _missing(topic))
            return False
        self._unknown_topics.pop(topic, None)
        if not self.limits.known(topic):
            await self._look_up_limits([topic])

        return self.partition_map(topic) is not None

    def refusal(self, topic: str) -> str:
        """Why the last lookup of ``topic`` failed, as a dead-letter reason."""
        looked_up = self._unknown_topics.get(topic)

        return looked_up[1] if looked_up is not None else _missing(topic)

    def _remember_refusal(self, topic: str, reason: str) -> None:
        retry_at = time.monotonic() + UNKNOWN_TOPIC_RETRY_S
        self._unknown_topics[topic] = (retry_at, reason)

    def end_cycle(self) -> None:
        """Move keyless events to another partition and age the partition cache."""
        now = time.monotonic()
        if now - self._partitions_built > PARTITION_CACHE_TTL_S:
            self._partitions.clear()
            self._partitions_built = now
            return
        if self.producer is None:
            return
        for topic, by_key in self._partitions.items():
            partitions = self.producer.client.cluster.partitions_for_topic(topic)
            if partitions:
                by_key[None] = random.choice(sorted(partitions))

    async def submit(
        self, batch: OpenBatch, timeout_s: float | None = None
    ) -> asyncio.Future:
        """Hand one batch to the producer; return the future of its ``Answer``.

        Waits while the partition's previous batch is queued, at most
        ``timeout_s`` (``send_timeout_s`` when None); past that the batch
        fails as retriable. The answer resolves at once when it failed here.
        A batch with senders waiting for an ack is spooled, in this wait or
        in flight, once ``ack_spool_after_s`` has passed (``_expire``).
        """
        loop = asyncio.get_running_loop()
        if batch.answer is None:
            batch.answer = Answer(loop.create_future())
        batch.sent_at_s = time.monotonic()
        if timeout_s is None:
            timeout_s = self.config.send_timeout_s
        refusal = self.limits.batch_refusal(batch.topic, batch.builder, batch.events)
        if refusal is None and self.producer is None:
            refusal = KafkaConnectionError("the producer was retired; a new one starts")
        if refusal is not None:
            self._unsent.pop(batch, None)
            self._give_up(batch, refusal)
            return batch.answer.future
        awaited = bool(batch.acks) and not batch.replay
        if awaited:
            timeout_s = min(timeout_s, self.config.ack_spool_after_s)
        # aiokafka queues the batch and returns its future with no await in
        # between: a timeout or a cancellation lands before the batch is
        # queued (it is spooled here) or after the future is returned (it is
        # returned all the same), never between, so none is lost or doubled.
        try:
            future = await asyncio.wait_for(
                self.producer.send_batch(
                    batch.builder, batch.topic, partition=batch.partition
                ),
                timeout_s,
            )
        except (KafkaError, TimeoutError) as exc:
            self._unsent.pop(batch, None)
            self._give_up(batch, exc)
            return batch.answer.future
        # No await from here to the callback: the batch is either unsent or
        # in flight whenever the drain looks, never neither.
        self._unsent.pop(batch, None)
        if not batch.abandoned:
            self._in_flight[future] = batch
            if awaited:
                due_s = batch.sent_at_s + self.config.ack_spool_after_s
                delay_s = max(0.0, due_s - time.monotonic())
                batch.overdue = loop.call_later(delay_s, self._expire, future)
        # The numbers are put right in the producer that sent the batch,
        # which may be retired by the time Kafka answers.
        rewind = self._rewind
        future.add_done_callback(lambda done: self._settle(batch, done, rewind))

        return batch.answer.future

    def _settle(
        self, batch: OpenBatch, future: asyncio.Future, rewind: SequenceRewind
    ) -> None:
        self._in_flight.pop(future, None)
        if batch.overdue is not None:
            batch.overdue.cancel()
        cancelled = future.cancelled()
        exc = future.exception() if not cancelled else KafkaError()
        # The record numbers follow Kafka's answer even for an abandoned
        # batch: the producer goes on sending the partition's next ones.
        if exc is None:
            rewind.written(batch.topic, batch.partition)
        elif not cancelled and not_written(exc):
            rewind.failed(batch.topic, batch.partition, batch.builder)
        if batch.held:
            self._held_futures.discard(future)
            origins = [(e.host, e.pid, e.seq) for e in batch.events]
            self._held.difference_update(origins)
            if exc is None:
                self._taken.update(origins)
            return
        if batch.abandoned:
            # Spooled at drain: Kafka taking it now makes a duplicate.
            if exc is None:
                self.stats.duplicates_possible += sum(batch.counts)
            return
        if exc is None:
            self._publish(batch)
            return
        if isinstance(exc, TOO_LARGE):
            # The limit read may be out of date: read it again soon.
            self._limits_stale.set()
        if not self._send_again(batch, exc):
            self._give_up(batch, exc)

    def _expire(self, future: asyncio.Future) -> None:
        """Spool a batch with waiting senders that Kafka has not answered in time.

        With acks=all the producer never gives up on a batch it has sent, and
        it keeps this one: the batch is *held*. Until Kafka answers it, the
        replay leaves its spooled events alone; if Kafka took it, the replay
        removes them instead of sending them twice (``replay_state``).
        """
        batch = self._in_flight.pop(future, None)
        if batch is None or batch.abandoned:
            return
        bound_s = self.config.ack_spool_after_s
        late = KafkaTimeoutError(f"Kafka did not acknowledge it within {bound_s:g} s")
        self._held.update((e.host, e.pid, e.seq) for e in batch.events)
        self._held_futures.add(future)
        self._give_up(batch, late)
        batch.abandoned = batch.held = True

    def replay_state(self, event: protocol.Event) -> bool | None:
        """For a spooled event: True when Kafka has it already (remove it),
        False when its held batch is unanswered (wait), None to replay it."""
        if not self._held and not self._taken:
            return None
        origin = (event.host, event.pid, event.seq)
        if origin in self._taken:
            self._taken.discard(origin)
            return True

        return False if origin in self._held else None

    def forget_taken(self) -> int:
        """Forget the events Kafka took while spooled; return how many.

        Called when the spool is empty (none of them is left to remove) and
        at drain (those left are in the spool and in Kafka: duplicates).
        """
        count = len(self._taken)
        self._taken.clear()

        return count

    def _publish(self, batch: OpenBatch) -> None:
        """Count an acknowledged batch and ack its events."""
        if self.kafka_state != "connected":
            self.kafka_state = "connected"
            self.log.info("kafka_recovered")
        stats = self.stats
        counts = stats.replayed if batch.replay else stats.published
        for index, count in enumerate(batch.counts):
            counts[index] += count
        if self.on_batch_acked is not None:
            events = sum(batch.counts)
            self.on_batch_acked(events, time.monotonic() - batch.sent_at_s)
        reply = self.reply
        for identity, event in batch.acks:
            if identity is not None:
                reply(identity, protocol.encode_ack(event.seq))
                stats.acks_sent += 1
        batch.answer.piece_done(batch.events, for_good=True)

    def _send_again(self, batch: OpenBatch, exc: BaseException) -> bool:
        """Send a refused batch's events again when the refusal was not theirs.

        Too large: in pieces (``split_too_large``), each refused again only
        for itself. Out of order: as they are, the numbers being rewound.
        """
        events = batch.events
        if isinstance(exc, TOO_LARGE) and len(events) > 1:
            self._resend(batch, split_too_large(events), batch.resends)
        elif (
            isinstance(exc, OutOfOrderSequenceNumber)
            and batch.resends < MAX_OUT_OF_ORDER_RESENDS
        ):
            self._resend(batch, [events], batch.resends + 1)
        else:
            return False
        self.stats.sent_again += len(events)

        return True

    def _resend(
        self, batch: OpenBatch, parts: list[list[protocol.Event]], resends: int
    ) -> None:
        """Submit ``parts`` of a refused batch as new batches, in order."""
        identities = {id(event): identity for identity, event in batch.acks}
        now_ms = int(time.time() * 1000)
        pieces = []
        for events in parts:
            piece = self._piece(batch, resends)
            for event in events:
                identity = identities.get(id(event))
                if not piece.add(identity, event, now_ms):
                    # A part of a sent batch fits one; should it not, two.
                    pieces.append(piece)
                    piece = self._piece(batch, resends)
                    piece.add(identity, event, now_ms)
            pieces.append(piece)
        batch.answer.waiting += len(pieces) - 1
        for piece in pieces:
            self._unsent[piece] = None
        task = asyncio.ensure_future(self._submit_pieces(pieces))
        self._resending.add(task)
        task.add_done_callback(self._resending.discard)

    def _piece(self, batch: OpenBatch, resends: int) -> OpenBatch:
        piece = self.new_batch(batch.topic, batch.partition)
        piece.replay = batch.replay
        piece.answer = batch.answer
        piece.resends = resends

        return piece

    async def _submit_pieces(self, pieces: list[OpenBatch]) -> None:
        for piece in pieces:
            if not piece.abandoned:
                await self.submit(piece)

    def _give_up(self, batch: OpenBatch, exc: BaseException) -> None:
        """Send a failed batch to the spool or the dead letters, by its cause."""
        if batch.abandoned:
            return
        reason = describe(exc)
        self.last_error = reason
        if is_retriable(exc):
            self.kafka_state = "failing"
            self._warn("kafka_unavailable", batch, reason)
            if not batch.replay:
                self.spill(batch, reason)
            batch.answer.piece_done(batch.events, for_good=False)
            if isinstance(exc, OutOfOrderSequenceNumber):
                self._out_of_step(reason)
            return
        self._warn("kafka_rejected", batch, reason)
        self.reject(batch, reason)
        batch.answer.piece_done(batch.events, for_good=True)

    def _out_of_step(self, reason: str) -> None:
        """Retire a producer whose record numbers Kafka refuses for good.

        The usual cause is a Kafka restart with batches in flight: a batch
        that timed out keeps its numbers (``not_written``), and if Kafka had
        not written it, every later batch of its partition is refused out of
        order. A new producer gets a new producer id and starts from 0. The
        refused batch is in the spool already; ``connected`` is False until
        the replay loop starts the new producer, and the old one finishes
        its batches in flight meanwhile. A batch Kafka wrote but never
        answered is then in Kafka twice (at least once).
        """
        producer = self.producer
        if producer is None:
            return
        self.producer = None
        self.stats.producers_replaced += 1
        if self._refresher is not None:
            self._refresher.cancel()
            self._refresher = None
        self.kafka_state = "failing"
        self.log.warning(
            "producer_replaced",
            reason=reason,
            hint="its refused batches are spooled and sent again by a new "
            "producer; Kafka may hold some events twice",
        )
        unanswered = [*self._in_flight, *self._held_futures]
        task = asyncio.ensure_future(self._retire(producer, unanswered))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _retire(
        self, producer: AIOKafkaProducer, unanswered: list[asyncio.Future]
    ) -> None:
        """Stop a retired producer; fail what it left unanswered.

        Its batches settle as it stops: sent again through the spool when
        refused, published when Kafka took them. A batch it never answered
        (the stop ran out of time, or its sender ended first) would hold its
        events in the spool for good (``replay_state``), so it fails as
        retriable instead.
        """
        timeout_s = self.config.send_timeout_s
        if not await _stop_quietly(producer, timeout_s):
            self.log.warning("kafka_stop_timed_out", timeout_s=timeout_s)
        retired = KafkaConnectionError("the producer was retired unanswered")
        for future in unanswered:
            if not future.done():
                future.set_exception(retired)

    def _warn(self, event: str, batch: OpenBatch, reason: str) -> None:
        suppressed = self.warnings.allow(f"{event}:{batch.topic}")
        if suppressed is not None:
            self.log.warning(
                event,
                topic=batch.topic,
                partition=batch.partition,
                events=sum(batch.counts),
                reason=reason,
                similar_suppressed=suppressed,
            )

    def abandon_in_flight(self) -> list[OpenBatch]:
        """Give up waiting for the batches in flight; return them to spool.

        Used when the drain runs out of time. Kafka may still take some of
        them; those are counted as possible duplicates, not published.
        Pieces of refused batches not yet sent are returned with them.
        """
        batches = [
            b for b in (*self._in_flight.values(), *self._unsent) if not b.replay
        ]
        for batch in batches:
            batch.abandoned = True
        self._in_flight.clear()
        self._unsent.clear()
        for task in self._resending:
            task.cancel()

        return batches

    def pending(self) -> int:
        """Batches handed to the producer, or about to be, not answered yet."""
        return len(self._in_flight) + len(self._unsent)

    async def flush(self, timeout_s: float) -> bool:
        """Wait until Kafka answered every batch; False when time ran out.

        The waits share the one bound, so the flush never takes longer.
        Pieces of a batch refused meanwhile are waited for too.
        """
        deadline = time.monotonic() + timeout_s
        try:
            if self.producer is not None:
                await asyncio.wait_for(self.producer.flush(), timeout_s)
        except TimeoutError:
            return False
        while self._in_flight or self._resending:
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0:
                return False
            await asyncio.wait(
                [*self._in_flight, *self._resending],
                timeout=remaining_s,
                return_when=asyncio.FIRST_COMPLETED,
            )

        return True

    async def stop(self, timeout_s: float) -> None:
        """Close the producer; gives up after ``timeout_s`` when Kafka is gone."""
        deadline = time.monotonic() + timeout_s
        if self._refresher is not None:
            self._refresher.cancel()
        if self._retiring:
            await asyncio.wait(self._retiring, timeout=timeout_s)
        if self.producer is None:
            return
        timeout_s = max(0.1, deadline - time.monotonic())
        if not await _stop_quietly(self.producer, timeout_s):
            self.log.warning("kafka_stop_timed_out", timeout_s=timeout_s)

    def status(self) -> dict:
        """Kafka's part of the status document."""
        return {
            "state": self.kafka_state if self.connected else "unavailable",
            "bootstrap_servers": self.config.bootstrap_servers,
            "compression": self.config.compression_type,
            "batches_in_flight": self.pending(),
            "last_error": self.last_error,
            "max_message_bytes": self.limits.status(),
        }


def _missing(topic: str) -> str:
    return (
        f"UnknownTopicOrPartitionError: topic {topic!r} does not exist in Kafka "
        f"(no metadata within {TOPIC_LOOKUP_TIMEOUT_S:g} s)"
    )


def split_too_large(events: list[protocol.Event]) -> list[list[protocol.Event]]:
    """The pieces a batch Kafka refused as too large is sent again in.

    The largest event goes on its own when it is most of the batch, the
    likely cause, with the events before and after it around it; otherwise
    (the events are too many together) the batch is halved. Either way the
    order holds, and every piece is smaller than the batch.
    """
    sizes = [len(event.value) for event in events]
    largest = max(range(len(events)), key=sizes.__getitem__)
    if sizes[largest] * 2 > sum(sizes):
        parts = [events[:largest], [events[largest]], events[largest + 1 :]]
        return [part for part in parts if part]
    half = len(events) // 2

    return [events[:half], events[half:]]


async def _create_topics(admin: AIOKafkaAdminClient, new_topics: list[NewTopic]):
    """``admin.create_topics``, asked again while Kafka names no controller.

    For a moment after a KRaft start or a controller election the metadata
    names no controller, and aiokafka's admin client (0.14) then fails with
    an AttributeError on the missing node id instead of a Kafka error. That
    is a Kafka not ready yet: it becomes NotControllerError, which the
    daemon treats as Kafka unavailable (spool, try again).
    """
    deadline = time.monotonic() + TOPIC_LOOKUP_TIMEOUT_S
    while True:
        try:
            return await admin.create_topics(new_topics)
        except AttributeError as exc:
            if "nodeId" not in str(exc):
                raise
        if time.monotonic() > deadline:
            raise NotControllerError(
                f"Kafka named no controller within {TOPIC_LOOKUP_TIMEOUT_S:g} s, "
                "so topics cannot be created yet"
            )
        await asyncio.sleep(TOPIC_LOOKUP_INTERVAL_S)


def _topic_errors(response: object) -> list[tuple[str, int, str]]:
    """(topic, error code, message) for each topic of a CreateTopics response."""
    errors = []
    for entry in response.topic_errors:
        topic, code = entry[0], entry[1]
        message = entry[2] if len(entry) > 2 else ""
        errors.append((topic, code, message or ""))

    return errors


async def _stop_quietly(producer: AIOKafkaProducer, timeout_s: float) -> bool:
    """Stop a producer within ``timeout_s``; False when it did not finish."""
    try:
        await asyncio.wait_for(producer.stop(), timeout_s)
    except TimeoutError:
        return False
    except KafkaError:
        pass

    return True
