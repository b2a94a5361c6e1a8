"""Loss accounting against a real broker and Kafka: each lost event counted once.

Events carry an id ("proc-i") inside their envelope; what is lost is found by
id in Kafka and compared with the broker's zlog.loss reports.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections import Counter

import pytest
import zmq
from kafka_helpers import consume

from zlog import protocol
from zlog.client.emitter import DropReason, Emitter

from .sender import make_event
from .test_reliability import (
    DRAIN_TIMEOUT_S,
    EXIT_SLACK_S,
    ids_of,
    log_lines,
    loss_reports,
    status,
    wait_for,
)

pytestmark = pytest.mark.kafka


def event_frame(proc: int, i: int, seq: int) -> bytes:
    """Event ``i`` of sender ``proc`` (see ``make_event``), numbered ``seq``."""
    event_class, key, headers, value = make_event(proc, i)
    (frame,) = protocol.encode_event(
        event_class,
        value,
        host=b"test",
        pid=proc,
        seq=seq,
        key=key,
        headers=protocol.encode_headers(headers),
    )

    return frame


def summed_counts(reports: list[dict]) -> Counter[str]:
    total: Counter[str] = Counter()
    for report in reports:
        total.update(report["counts"])

    return total


def test_poison_drop_report_leaves_loss_reporting_and_the_drain_whole(
    start_broker, topics, kafka_bootstrap
):
    """A drop report naming two reasons of 40 KB each is refused as a bad frame;
    losses after it are reported, and SIGTERM under load leaves every event
    received in Kafka."""
    broker = start_broker(
        "--loss-report-interval-s", "1", "--drain-timeout-s", str(DRAIN_TIMEOUT_S)
    )
    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.sndhwm = 0  # never drop: every event sent is counted below
    dealer.connect(f"ipc://{broker.socket_path}")
    poison = {"a" * 40_000: 1, "b" * 40_000: 1}
    dealer.send(protocol.encode_drops(poison, host=b"test", pid=4)[0])
    # Then losses of another origin: two drops it reports, one number skipped.
    dealer.send(protocol.encode_drops({"error": 2}, host=b"test", pid=5)[0])
    dealer.send(event_frame(5, 0, seq=1))
    dealer.send(event_frame(5, 2, seq=3))
    reported = wait_for(
        lambda: (
            (s := status(broker.socket_path))["losses_reported"]
            == {"emitter_error": 2, "sequence_gap": 1}
            and s
        ),
        timeout_s=15,
    )
    count = 20_000
    for i in range(count):
        dealer.send(event_frame(6, i, seq=i + 1))
        if i == count // 2:
            # The socket still holds events: the drain must take them in.
            broker.process.send_signal(signal.SIGTERM)
    exit_code = broker.process.wait(timeout=DRAIN_TIMEOUT_S + EXIT_SLACK_S + 20)
    dealer.close(linger=0)
    context.term()
    stopped = log_lines(broker.stderr())[-1]

    # A restarted broker publishes whatever the drain spooled.
    restarted = start_broker()
    records = consume(kafka_bootstrap, topics.all(), stopped["received"], timeout_s=90)
    ids = ids_of(records)

    print(f"\n{stopped}")
    assert reported["bad_frames"] == {"bad_drops": 1}
    assert exit_code == 0
    assert "Traceback" not in broker.stderr()
    assert (stopped["event"], stopped["unsettled"]) == ("stopped", 0)
    assert len(ids) == stopped["received"] > count // 2
    assert summed_counts(loss_reports(records, "test", 5)) == {
        "emitter_error": 2,
        "sequence_gap": 1,
    }
    assert restarted.terminate() == 0


def test_events_lost_to_a_stopped_broker_are_reported_once(
    start_broker, topics, kafka_bootstrap
):
    """A broker stopped with SIGSTOP while an emitter sends: the events the
    emitter drops are the events missing from Kafka, and the broker's zlog.loss
    reports count each of them once, as a drop and never also as a gap."""
    broker = start_broker("--loss-report-interval-s", "1")
    emitter = Emitter(broker.socket_path, queue_events=1000)
    proc, count = 7, 20_000

    def send(i: int) -> bool:
        event_class, key, headers, value = make_event(proc, i)
        return emitter.send(event_class, value, key, protocol.encode_headers(headers))

    assert send(0) and emitter.flush(10)
    os.kill(broker.process.pid, signal.SIGSTOP)
    try:
        results = {i: send(i) for i in range(1, count)}
    finally:
        os.kill(broker.process.pid, signal.SIGCONT)
    # The next event that goes through carries the drop report.
    deadline = time.monotonic() + 15
    i = count
    while not send(i):
        assert time.monotonic() < deadline, "the broker never took events again"
        results[i] = False
        i += 1
        time.sleep(0.05)
    results[i] = True
    assert emitter.flush(10)
    stats = emitter.stats()
    dropped = stats.dropped.get(DropReason.BROKER_UNAVAILABLE, 0)
    # Two report intervals after the last event, any gap would be confirmed.
    time.sleep(2.5)
    state = wait_for(
        lambda: (
            (s := status(broker.socket_path))["sequence"]["pending"] == 0
            and s["kafka"]["batches_in_flight"] == 0
            and sum(s["losses_reported"].values()) >= dropped
            and s
        ),
        timeout_s=30,
    )
    emitter.close()
    assert broker.terminate() == 0
    records = consume(kafka_bootstrap, topics.all(), stats.sent, timeout_s=90)
    in_kafka = {int(i.split("-")[1]) for i in ids_of(records)}
    lost = [i for i in range(len(results) + 1) if i not in in_kafka]
    host = socket.gethostname()[: protocol.MAX_HOST_BYTES]
    reported = summed_counts(loss_reports(records, host, os.getpid()))

    print(f"\nsent {stats.sent}, dropped {dropped}, lost {len(lost)}: {reported}")
    assert dropped > 0, "the stopped broker's queue never filled up"
    assert sorted(i for i, sent in results.items() if not sent) == lost
    assert reported == {"emitter_broker_unavailable": len(lost)}
    assert state["losses_reported"] == {"emitter_broker_unavailable": len(lost)}
    assert state["sequence"]["missing"] == 0
