"""Failure tests against real processes: Kafka away, broker killed, spool full.

Every event carries an id ("proc-i") inside its envelope; each test counts
what reached Kafka by those ids. Each test bounds its own waits and stops
every process it started.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest
import zmq
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import MessageSizeTooLargeError
from conftest import broker_answers
from kafka_helpers import consume, private_kafka_port

from zlog import protocol
from zlog.client.emitter import Delivery, Emitter
from zlog.protocol import EventClass

from .sender import make_event

KAFKA_SCRIPT = str(Path(__file__).parents[2] / "scripts" / "kafka")

pytestmark = pytest.mark.kafka

# The broker's resident memory with 5,000 events spooled: the interpreter,
# aiokafka and ZeroMQ take about 60 MB; the budget leaves room for one cycle.
RSS_BUDGET_BYTES = 150 * 1024 * 1024

# SIGTERM tests drain within this bound; the broker's exit after the drain
# (closing the spool, the producer, the interpreter) takes up to a few seconds
# more on a loaded two-core machine.
DRAIN_TIMEOUT_S = 5

# scripts/kafka puts a node's controller listener this far above its port.
CONTROLLER_PORT_OFFSET = 100
EXIT_SLACK_S = 5


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then closed)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def status(socket_path: Path) -> dict:
    body = broker_answers(socket_path, timeout_s=10)
    assert body is not None, "the broker did not answer a status request"

    return json.loads(body)


def wait_for(predicate, timeout_s: float, interval_s: float = 0.2):
    """Poll ``predicate`` until it returns something true; fail after the bound."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    pytest.fail(f"condition not met within {timeout_s} s")


def ids_of(records) -> Counter[str]:
    """Event ids in Kafka records, loss reports (no id) left out."""
    ids: Counter[str] = Counter()
    for record in records:
        document = json.loads(record.value)
        if "id" in document:
            ids[document["id"]] += 1

    return ids


def log_lines(stderr: str) -> list[dict]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


class AckingSender:
    """A raw emitter in this process: every event asks for an ack, replies kept."""

    def __init__(self, socket_path: Path, proc: int) -> None:
        self.proc = proc
        self.context = zmq.Context()
        self.dealer = self.context.socket(zmq.DEALER)
        self.dealer.sndhwm = 0
        self.dealer.rcvhwm = 0
        self.dealer.connect(f"ipc://{socket_path}")
        self.sent = 0
        self.acked: set[int] = set()
        self.nacked: dict[int, str] = {}

    def send(self, count: int, event_class: EventClass | None = None) -> None:
        for _ in range(count):
            i = self.sent
            default_class, key, headers, value = make_event(self.proc, i)
            self.dealer.send_multipart(
                protocol.encode_event(
                    event_class or default_class,
                    value,
                    host=b"test",
                    pid=self.proc,
                    seq=i + 1,
                    key=key,
                    headers=protocol.encode_headers(headers),
                    wants_ack=True,
                )
            )
            self.sent += 1
            if self.sent % 100 == 0:
                # Replies queue in the socket like events: read them as an
                # emitter would, or the broker's reply queue overflows.
                self.collect(0)
        self.collect(0)

    def collect(self, timeout_s: float) -> None:
        """Read the replies that arrive within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            wait_ms = max(0, int((deadline - time.monotonic()) * 1000))
            if not self.dealer.poll(wait_ms):
                return
            reply = protocol.decode_reply(self.dealer.recv_multipart())
            if reply.kind is protocol.Kind.ACK:
                self.acked.add(reply.seq - 1)
            else:
                self.nacked[reply.seq - 1] = reply.body.decode()

    def settle(self, timeout_s: float) -> None:
        """Read replies until every event sent got one; fail after the bound."""
        deadline = time.monotonic() + timeout_s
        while len(self.acked) + len(self.nacked) < self.sent:
            if time.monotonic() > deadline:
                answered = len(self.acked) + len(self.nacked)
                pytest.fail(f"{answered} of {self.sent} events answered")
            self.collect(0.1)

    def close(self) -> None:
        self.dealer.close(linger=0)
        self.context.term()


def test_kafka_unreachable_from_start_spools_then_publishes_exactly_once(
    start_broker, topics, kafka_bootstrap, tmp_path
):
    """5,000 events with Kafka away are spooled fast, kept at exit, replayed once."""
    count = 5000
    broker = start_broker(
        "--drain-timeout-s", "5", bootstrap=f"127.0.0.1:{closed_port()}"
    )
    sender = AckingSender(broker.socket_path, proc=1)
    started = time.monotonic()

    sender.send(count)
    send_s = time.monotonic() - started
    spooled = wait_for(
        lambda: (s := status(broker.socket_path))["spool"]["events"] >= count and s,
        timeout_s=10,
    )
    spooled_s = time.monotonic() - started
    sender.collect(5)
    rss_bytes = psutil.Process(broker.process.pid).memory_info().rss
    stop_started = time.monotonic()
    exit_code = broker.terminate(timeout_s=30)
    stop_s = time.monotonic() - stop_started
    sender.close()

    print(
        f"\nsent 5,000 in {send_s:.3f} s, spooled in {spooled_s:.2f} s, "
        f"RSS {rss_bytes / 2**20:.0f} MiB, SIGTERM exit in {stop_s:.2f} s"
    )
    assert spooled["spool"]["events"] == count
    assert spooled["kafka"]["state"] == "unavailable"
    assert len(sender.acked) == count, "spooled events are acked as stored"
    assert rss_bytes < RSS_BUDGET_BYTES
    assert exit_code == 0
    assert stop_s < 5 + 5

    restarted = start_broker()
    records = consume(kafka_bootstrap, topics.all(), count, timeout_s=60)
    ids = ids_of(records)

    assert len(ids) == count
    assert sum(ids.values()) == count, "each event exactly once"
    wait_for(lambda: status(restarted.socket_path)["spool"]["events"] == 0, 10)
    assert restarted.terminate() == 0


def loss_reports(records, host: str, pid: int) -> list[dict]:
    """The context of every zlog.loss event in ``records`` about one origin."""
    reports = []
    for record in records:
        payload = json.loads(record.value).get("payload", {})
        context = payload.get("context", {})
        if payload.get("message") == "zlog.loss" and context["origin"] == {
            "host": host,
            "pid": pid,
        }:
            reports.append(context)

    return reports


def test_sigkill_under_load_loses_exactly_what_the_next_broker_reports(
    start_broker, topics, kafka_bootstrap
):
    """SIGKILL under load, restart on the same spool: every acked event is in
    Kafka, and the unacked events lost are the ones the next broker reports.

    The next broker reads the killed one's hand-off ledger and reports, as
    zlog.loss events, the numbers the killed broker never read (a sequence
    gap, revealed by the emitter's next numbers) and the events it had handed
    to Kafka that Kafka never confirmed (unconfirmed_at_crash, with their
    numbers). Each unconfirmed event may be in Kafka or lost, and only Kafka
    knows which: so the lost events outside them must equal the reported gap
    exactly, and the lost ones inside them are reported by their numbers.
    """
    interval = ("--loss-report-interval-s", "1")
    broker = start_broker(*interval)
    sender = AckingSender(broker.socket_path, proc=2)
    for _ in range(20):
        sender.send(500)
        sender.collect(0.05)
    sender.send(500)
    broker.kill()
    sender.collect(0.5)
    sent_before_restart = sender.sent

    restarted = start_broker(*interval)
    # The emitter goes on: what its socket still held reaches the new broker,
    # and its next numbers reveal what the killed broker never read.
    sender.send(100)
    after_restart = set(range(sent_before_restart, sender.sent))
    wait_for(lambda: sender.collect(0.2) or after_restart <= sender.acked, 30)
    # Settled: the gap is confirmed, the first reports (one interval after
    # the start) are made, and Kafka acknowledged them.
    state = wait_for(
        lambda: (
            (s := status(restarted.socket_path))["sequence"]["pending"] == 0
            and s["kafka"]["batches_in_flight"] == 0
            and s["uptime_s"] > 2.5
            and s
        ),
        timeout_s=30,
    )
    sender.close()
    records = consume(kafka_bootstrap, topics.all(), len(sender.acked), timeout_s=60)
    in_kafka = {int(i.split("-")[1]) for i in ids_of(records)}
    reports = loss_reports(records, "test", 2)
    gap = sum(r["counts"].get("sequence_gap", 0) for r in reports)
    unconfirmed_count = sum(r["counts"].get("unconfirmed_at_crash", 0) for r in reports)
    unconfirmed = {
        seq - 1  # event i carries sequence number i + 1
        for report in reports
        for first, last in report.get("unconfirmed_seqs", [])
        for seq in range(first, last + 1)
    }
    lost = set(range(sender.sent)) - in_kafka

    print(
        f"\nsent {sender.sent}, acked {len(sender.acked)}, in Kafka {len(in_kafka)}, "
        f"lost {len(lost)}; reported: gap {gap}, unconfirmed {len(unconfirmed)} "
        f"({len(lost & unconfirmed)} of them lost)"
    )
    assert sender.acked <= in_kafka
    assert len(lost - unconfirmed) == gap, "lost outside the unconfirmed = gap"
    assert unconfirmed_count == len(unconfirmed)
    assert state["losses_reported"] == {
        reason: count
        for reason, count in (
            ("sequence_gap", gap),
            ("unconfirmed_at_crash", unconfirmed_count),
        )
        if count
    }
    assert restarted.terminate() == 0


@pytest.mark.parametrize(
    "stop",
    [pytest.param("terminate", id="sigterm"), pytest.param("kill", id="idle-sigkill")],
)
def test_a_broker_that_settled_everything_leaves_nothing_to_report(
    start_broker, topics, kafka_bootstrap, stop
):
    """Stopped by SIGTERM, or killed once idle, a broker leaves no unconfirmed
    event and no gap in its ledger: the next one reports no loss. That holds
    for a batch Kafka refused as too large and then took in pieces too (the
    topic's limit lowered after the broker read it)."""
    small_topic = f"{topics.application}.small"
    create_topic(kafka_bootstrap, small_topic)
    interval = ("--loss-report-interval-s", "1")
    broker = start_broker(*interval)
    sender = AckingSender(broker.socket_path, proc=3)
    sender.send(1000)
    send_to_topic(broker.socket_path, small_topic, [b'{"id":"first"}'])
    lower_topic_limit(kafka_bootstrap, small_topic, 2048)
    small = [b'{"id":"small-%d"}' % i for i in range(200)]
    values = [*small[:100], too_large(), *small[100:]]
    replies = send_to_topic(
        broker.socket_path, small_topic, values, together=True, first_seq=2
    )
    sender.settle(30)
    split = status(broker.socket_path)["sent_again"]
    # Idle for a moment: the ledger forgets the settled events.
    time.sleep(1)
    getattr(broker, stop)()

    restarted = start_broker(*interval)
    sender.send(100)
    sender.settle(30)
    state = wait_for(
        lambda: (s := status(restarted.socket_path))["uptime_s"] > 2.5 and s, 30
    )
    sender.close()

    kinds = Counter(kind for kind, _ in replies.values())
    assert kinds == {protocol.Kind.ACK: 200, protocol.Kind.NACK: 1}
    assert split > 0, "the refused batch was sent again in pieces"
    assert len(sender.acked) == 1100
    assert state["losses_reported"] == {}
    assert state["sequence"]["missing"] == state["sequence"]["pending"] == 0
    assert restarted.terminate() == 0


def test_spool_full_applies_the_policy_and_counts(start_broker, topics, tmp_path):
    """A small spool keeps audit events, evicts application ones, counts each drop."""
    broker = start_broker(
        "--spool-max-bytes",
        str(400_000),
        "--loss-report-interval-s",
        "1",
        bootstrap=f"127.0.0.1:{closed_port()}",
    )
    sender = AckingSender(broker.socket_path, proc=3)

    # Each step waits for the broker's answers, so the application events
    # are stored before the last audit events need their room: arriving in
    # one cycle with them, they would be refused rather than stored and
    # evicted.
    sender.send(300, EventClass.AUDIT)
    sender.settle(30)
    sender.send(1500, EventClass.APPLICATION)
    sender.settle(30)
    sender.send(600, EventClass.AUDIT)
    sender.settle(30)
    state = status(broker.socket_path)
    sender.close()

    spool = state["spool"]
    evicted = spool["drops"].get("application:spool_evicted", 0)
    refused = sum(n for k, n in spool["drops"].items() if k.endswith("refused"))
    audit_refused = spool["drops"].get("audit:spool_refused", 0)
    print(f"\nspool {spool['events']} events, evicted {evicted}, refused {refused}")
    assert broker.process.poll() is None, "the broker stays up"
    assert spool["size_bytes"] <= 400_000
    assert evicted > 0
    assert state["spooled"]["audit"] == 900 - audit_refused
    assert len(sender.acked) + len(sender.nacked) == sender.sent
    # The broker's own zlog.loss events compete for the same room.
    generated = state["generated"]
    assert refused - generated <= len(sender.nacked) <= refused
    assert all(reason == "spool full" for reason in sender.nacked.values())
    assert spool["events"] + evicted + refused == sender.sent + generated
    wait_for(
        lambda: status(broker.socket_path)["losses_reported"].get("spool_evicted"),
        timeout_s=10,
    )
    assert broker.terminate() == 0


def test_sigterm_under_load_with_kafka_away_loses_nothing(
    start_broker, start_senders, topics, kafka_bootstrap
):
    """SIGTERM while 4 senders flood a broker that has no Kafka: all of it is kept."""
    broker = start_broker(
        "--drain-timeout-s",
        str(DRAIN_TIMEOUT_S),
        bootstrap=f"127.0.0.1:{closed_port()}",
    )
    senders = start_senders(broker.socket_path, 4, 0, "--forever")
    time.sleep(2.0)

    stop_started = time.monotonic()
    exit_code = broker.terminate(timeout_s=60)
    stop_s = time.monotonic() - stop_started
    for sender in senders:
        sender.kill()
    stopped = log_lines(broker.stderr())[-1]

    print(f"\nSIGTERM exit in {stop_s:.2f} s, {stopped}")
    assert exit_code == 0
    assert stopped["event"] == "stopped"
    assert stopped["received"] == stopped["spooled"] > 0
    # The drain time, plus the interpreter's own exit on a busy machine.
    assert stop_s < DRAIN_TIMEOUT_S + EXIT_SLACK_S

    restarted = start_broker()
    records = consume(kafka_bootstrap, topics.all(), stopped["received"], timeout_s=90)
    ids = ids_of(records)
    assert len(ids) == stopped["received"]
    assert sum(ids.values()) == len(ids)
    assert restarted.terminate() == 0


def garbage() -> list[list[bytes]]:
    """One message of each kind of bad input a local process can send."""
    good = protocol.encode_event(EventClass.AUDIT, b"{}", host=b"g", pid=1, seq=1)
    (frame,) = good

    return [
        [b"junk"],
        [b"\x09" + frame[1:]],
        [frame[:1] + b"\x63" + frame[2:]],
        [frame, *[b""] * 50],
        [*good, b"extra"],
        [frame[: protocol.HEAD.size] + os.urandom(20_000)],
        [b""],
    ]


def test_garbage_is_dead_lettered_while_good_traffic_flows(
    start_broker, start_senders, topics, kafka_bootstrap, tmp_path
):
    """A process flooding bad frames: each is counted, kept with its reason up
    to the bound, and another process's acked events all reach Kafka meanwhile.
    """
    broker = start_broker()
    report = tmp_path / "good.json"
    paced = ("--paced", "500", "6", "--report", str(report))
    (good,) = start_senders(broker.socket_path, 1, 0, *paced)
    kinds = garbage()
    expected_reasons = {protocol.decode(frames).reason for frames in kinds}
    context = zmq.Context()
    flooder = context.socket(zmq.DEALER)
    flooder.connect(f"ipc://{broker.socket_path}")
    flooded = 0
    flood_until = time.monotonic() + 5
    while time.monotonic() < flood_until:
        for frames in kinds:
            flooder.send_multipart(frames)
        flooded += len(kinds)
    # The broker answers on a connection in order: once this reply is here,
    # every bad message before it was taken.
    flooder.send_multipart(protocol.encode_status_request(os.getpid()))
    answered = flooder.poll(60_000)
    flooder.close(linger=0)
    context.term()

    assert good.wait(timeout=120) == 0
    sent = json.loads(report.read_text())
    records = consume(kafka_bootstrap, topics.all(), sent["sent"], timeout_s=60)
    ids = ids_of(records)
    state = status(broker.socket_path)
    dead = log_lines(Path(state["dead_letter_path"]).read_text())
    kept_bytes = [
        sum(len(base64.b64decode(f["base64"])) for f in line["frames"]) for line in dead
    ]

    print(
        f"\ngood: {sent['sent']} sent, {len(sent['acked'])} acked; garbage: "
        f"{flooded} sent, {state['bad_frames_kept']} kept, "
        f"{state['bad_frames_not_kept']} only counted, {state['bad_frames']}"
    )
    assert answered, "the broker did not answer the flooding connection"
    assert sent["sent"] > 0
    assert sorted(sent["acked"]) == list(range(sent["sent"]))
    assert set(ids) == {f"0-{i}" for i in range(sent["sent"])}
    assert sum(state["bad_frames"].values()) == flooded
    assert set(state["bad_frames"]) == expected_reasons
    assert state["bad_frames_kept"] + state["bad_frames_not_kept"] == flooded
    assert len(dead) == state["bad_frames_kept"] > 0
    assert {line["reason"] for line in dead} == expected_reasons
    assert all(line["kind"] == "bad_frame" and line["detail"] for line in dead)
    assert max(kept_bytes) <= 4096
    assert broker.terminate() == 0


def create_topic(bootstrap: str, topic: str, **configs: str) -> None:
    """Create a one-partition topic with the given topic configs."""

    async def create() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topic, 1, 1, topic_configs=configs)])
        finally:
            await admin.close()

    asyncio.run(create())


def lower_topic_limit(bootstrap: str, topic: str, limit_bytes: int) -> None:
    """Set a topic's max.message.bytes, as an operator would while a broker
    runs with the limit it read before; return once Kafka applies it.

    Kafka applies a change a moment after it answers: a probe twice the
    limit (JSON without an id, so the tests' counts leave it out) is sent
    until Kafka refuses it.
    """

    async def alter() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            configs = {"max.message.bytes": str(limit_bytes)}
            resource = ConfigResource(ConfigResourceType.TOPIC, topic, configs)
            (response,) = await admin.alter_configs([resource])
            assert [entry[0] for entry in response.resources] == [0]
        finally:
            await admin.close()
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        probe = b'{"probe":"%s"}' % base64.b64encode(os.urandom(limit_bytes * 2))
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    await producer.send_and_wait(topic, probe)
                except MessageSizeTooLargeError:
                    return
                await asyncio.sleep(0.1)
            pytest.fail(f"Kafka did not apply max.message.bytes to {topic!r}")
        finally:
            await producer.stop()

    asyncio.run(alter())


def topic_event(topic: str, value: bytes, seq: int) -> list[bytes]:
    """Frames of an acked event naming ``topic``, from origin test:99."""
    return protocol.encode_event(
        EventClass.TOPIC,
        value,
        host=b"test",
        pid=99,
        seq=seq,
        topic=topic.encode(),
        wants_ack=True,
    )


def send_to_topic(
    socket_path: Path,
    topic: str,
    values: list[bytes],
    together: bool = False,
    first_seq: int = 1,
) -> dict:
    """Send acked events naming ``topic``, each after the last one's reply.

    One at a time, so each is a batch of its own; ``together`` sends them all
    before reading a reply, so they share a batch. They are numbered from
    ``first_seq``. Returns seq -> (kind, body).
    """
    replies = {}
    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.connect(f"ipc://{socket_path}")
    if together:
        for seq, value in enumerate(values, start=first_seq):
            dealer.send_multipart(topic_event(topic, value, seq))
    for seq, value in enumerate(values, start=first_seq):
        if not together:
            dealer.send_multipart(topic_event(topic, value, seq))
        if dealer.poll(10_000):
            reply = protocol.decode_reply(dealer.recv_multipart())
            replies[reply.seq] = (reply.kind, reply.body.decode())
    dealer.close(linger=0)
    context.term()

    return replies


def too_large() -> bytes:
    """An envelope over 2 KiB whatever the compression: random bytes, base64."""
    return b'{"id":"big","pad":"%s"}' % base64.b64encode(os.urandom(6000))


def test_record_too_large_is_nacked_dead_lettered_and_not_retried(
    start_broker, topics, kafka_bootstrap
):
    """An event over its topic's max.message.bytes: one log line naming the
    topic and reason, counted, nacked, dead-lettered; other events go on.
    """
    small_topic = f"{topics.application}.small"
    create_topic(kafka_bootstrap, small_topic, **{"max.message.bytes": "2048"})
    broker = start_broker()
    sender = AckingSender(broker.socket_path, proc=5)

    sender.send(200)
    replies = send_to_topic(broker.socket_path, small_topic, [too_large()])
    sender.send(200)
    sender.settle(30)
    sender.close()
    state = status(broker.socket_path)
    records = consume(kafka_bootstrap, [*topics.all(), small_topic], 400)
    ids = ids_of(records)
    rejected = [
        line for line in log_lines(broker.stderr()) if line["event"] == "kafka_rejected"
    ]
    dead = log_lines(Path(state["dead_letter_path"]).read_text())

    print(f"\nnack: {replies[1]}, log: {rejected}, counts: {state['dead_lettered']}")
    assert replies[1][0] is protocol.Kind.NACK
    assert "MessageSizeTooLarge" in replies[1][1]
    assert len(sender.acked) == sender.sent == 400
    assert len(rejected) == 1
    assert rejected[0]["topic"] == small_topic
    assert "MessageSizeTooLarge" in rejected[0]["reason"]
    assert state["dead_lettered"] == {"MessageSizeTooLargeError": 1}
    assert state["failed"]["topic"] == 1
    assert [(d["kind"], d["topic"]) for d in dead] == [("event", small_topic)]
    assert json.loads(dead[0]["value"])["id"] == "big"
    assert "big" not in ids
    assert len(ids) == 400 and sum(ids.values()) == 400
    assert state["kafka"]["state"] == "connected"
    assert broker.terminate() == 0


# Refusals in one partition: the first on a partition Kafka has nothing of
# this producer yet, the others after events it wrote.
TOO_LARGE_ROUNDS = 10


def test_partition_goes_on_after_a_batch_refused_as_too_large(
    start_broker, topics, kafka_bootstrap
):
    """After each refused event, the next event of the partition is published.

    A batch Kafka refused must give its record numbers back to the producer:
    if it did not, every later batch of the partition would be refused as
    out of order once Kafka has written one of its events. The topic's limit
    is lowered after the broker read it, so Kafka refuses the first large
    event itself; the broker then reads the limit again, and may refuse the
    later ones before sending.
    """
    small_topic = f"{topics.application}.small"
    create_topic(kafka_bootstrap, small_topic)
    broker = start_broker()
    send_to_topic(broker.socket_path, small_topic, [b'{"id":"first"}'])
    lower_topic_limit(kafka_bootstrap, small_topic, 2048)
    values = []
    for round_ in range(TOO_LARGE_ROUNDS):
        values += [too_large(), b'{"id":"ok-%d"}' % round_]

    replies = send_to_topic(broker.socket_path, small_topic, values, first_seq=2)
    records = consume(kafka_bootstrap, [small_topic], TOO_LARGE_ROUNDS + 1)
    state = status(broker.socket_path)

    sent = range(2, len(values) + 2)
    kinds = [replies.get(seq, (None,))[0] for seq in sent]
    assert kinds == [protocol.Kind.NACK, protocol.Kind.ACK] * TOO_LARGE_ROUNDS
    refusals = [replies[seq][1] for seq in sent[::2]]
    assert all("MessageSizeTooLarge" in reason for reason in refusals)
    assert "before sending" not in refusals[0], "Kafka refused the first itself"
    expected = Counter(f"ok-{r}" for r in range(TOO_LARGE_ROUNDS))
    assert ids_of(records) == expected + Counter(["first"])
    assert state["dead_lettered"] == {"MessageSizeTooLargeError": TOO_LARGE_ROUNDS}
    assert broker.terminate() == 0


@pytest.fixture
def private_kafka(tmp_path):
    """A single-node Kafka of this test's own on a free port; stopped at the end."""
    port = private_kafka_port(CONTROLLER_PORT_OFFSET)
    command = [sys.executable, KAFKA_SCRIPT]
    subprocess.run([*command, "start", "--port", str(port)], check=True, timeout=180)
    try:
        yield port
    finally:
        subprocess.run([*command, "stop", "--port", str(port)], timeout=120)


def test_kafka_stopped_for_30_s_under_load_loses_nothing(
    start_broker, topics, private_kafka
):
    """Kafka goes away for 30 s under steady load and comes back: all arrives."""
    bootstrap = f"127.0.0.1:{private_kafka}"
    command = [sys.executable, KAFKA_SCRIPT]
    broker = start_broker("--send-timeout-s", "2", bootstrap=bootstrap)
    sender = AckingSender(broker.socket_path, proc=4)
    rate_per_s, step_s = 500, 0.1

    spool_sizes: list[int] = []

    def load(duration_s: float, watch: bool = False, until_spooled: bool = False):
        """Send at the rate; when watching, note the spool's size every second."""
        end = time.monotonic() + duration_s
        next_look_s = 0.0
        while time.monotonic() < end:
            sender.send(int(rate_per_s * step_s))
            sender.collect(step_s)
            if watch and time.monotonic() >= next_look_s:
                spool_sizes.append(status(broker.socket_path)["spool"]["events"])
                next_look_s = time.monotonic() + 1
                if until_spooled and spool_sizes[-1] > 0:
                    return

    load(5)
    subprocess.run(
        [*command, "stop", "--port", str(private_kafka)], check=True, timeout=120
    )
    load(30, watch=True)
    if max(spool_sizes) == 0:
        # A loaded machine may be slow to notice the outage: keep the load on
        # until the spool is seen in use, within a generous bound.
        load(60, watch=True, until_spooled=True)
    subprocess.run(
        [*command, "start", "--port", str(private_kafka)], check=True, timeout=180
    )
    load(5)
    wait_for(lambda: status(broker.socket_path)["spool"]["events"] == 0, timeout_s=120)
    sender.collect(2)
    records = consume(bootstrap, topics.all(), sender.sent, timeout_s=120)
    ids = ids_of(records)
    duplicates = sum(ids.values()) - len(ids)
    sender.close()

    print(
        f"\nsent {sender.sent}, spooled during outage up to {max(spool_sizes)}, "
        f"in Kafka {len(ids)} distinct, duplicates {duplicates}"
    )
    assert max(spool_sizes) > 0
    assert len(ids) == sender.sent
    assert duplicates <= sender.sent * 0.001
    assert len(sender.acked) == sender.sent
    assert broker.terminate() == 0


def test_acked_events_are_settled_within_the_emitters_wait_when_kafka_stops(
    start_broker, topics, private_kafka, socket_path
):
    """An idle broker whose Kafka stops acks audit events from its spool in time.

    With acks=all the producer never gives up on a batch it has sent, so the
    first events after the stop used to wait for Kafka's return while each
    emitter's 5 s wait ran out. Now a batch unanswered after
    ``ack_spool_after_s`` is spooled and acked; when Kafka returns and takes
    that batch after all, the replay removes its events instead of sending
    them a second time.
    """
    bootstrap = f"127.0.0.1:{private_kafka}"
    command = [sys.executable, KAFKA_SCRIPT]
    broker = start_broker(bootstrap=bootstrap)
    emitter = Emitter(socket_path)
    names = ["up"] + [f"down-{n}" for n in range(5)]

    def send(name: str) -> tuple[Delivery, float]:
        """The delivery, within the emitter's default wait, and its seconds."""
        started = time.monotonic()
        delivery = emitter.send_and_wait(
            EventClass.AUDIT, b'{"id":"%s"}' % name.encode(), b"tenant"
        )

        return delivery, round(time.monotonic() - started, 2)

    try:
        first = send(names[0])
        subprocess.run(
            [*command, "stop", "--port", str(private_kafka)], check=True, timeout=120
        )
        during = [send(name) for name in names[1:]]
        subprocess.run(
            [*command, "start", "--port", str(private_kafka)], check=True, timeout=180
        )
        wait_for(
            lambda: status(broker.socket_path)["spool"]["events"] == 0, timeout_s=120
        )
        records = consume(bootstrap, [topics.audit], len(names), timeout_s=60)
        state = status(broker.socket_path)
    finally:
        emitter.close(0)

    print(f"\noutage: {during}, spooled {state['spooled']}")
    assert first[0] is Delivery.ACKED
    assert [delivery for delivery, _ in during] == [Delivery.ACKED] * 5
    assert ids_of(records) == Counter(names)
    assert broker.terminate() == 0
