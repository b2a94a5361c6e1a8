"""The broker against the real Kafka: delivery, acks, shutdown and its socket."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import zmq
from conftest import broker_answers
from kafka_helpers import consume

from zlog import protocol
from zlog.protocol import EventClass

from .sender import make_event

pytestmark = pytest.mark.kafka


def topic_of(topics, event_class: EventClass) -> str:
    return {
        EventClass.APPLICATION: topics.application,
        EventClass.AUDIT: topics.audit,
        EventClass.SECURITY: topics.security,
    }[event_class]


def status(socket_path: Path) -> dict:
    body = broker_answers(socket_path, timeout_s=10)
    assert body is not None, "the broker did not answer a status request"

    return json.loads(body)


def log_lines(stderr: str) -> list[dict]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def event_id(value: bytes) -> str | None:
    """The sender's id inside an envelope; None for the broker's zlog.loss."""
    return json.loads(value).get("id")


def test_eight_processes_of_ten_thousand_events_arrive_exactly_once(
    start_broker, start_senders, topics, kafka_bootstrap
):
    """80,000 events from 8 processes land once each, in the right topic, intact."""
    procs, count = 8, 10_000
    broker = start_broker()
    started = time.perf_counter()

    senders = start_senders(broker.socket_path, procs, count, "--ack-last")
    assert [sender.wait(timeout=120) for sender in senders] == [0] * procs
    acked_s = time.perf_counter() - started
    records = consume(kafka_bootstrap, topics.all(), procs * count)

    print(f"\n8 x 10,000 events acked in {acked_s:.2f} s")
    ids = Counter(event_id(record.value) for record in records)
    assert len(records) == procs * count
    assert len(ids) == procs * count
    for record in records:
        proc, i = map(int, event_id(record.value).split("-"))
        event_class, key, headers, value = make_event(proc, i)
        assert record.topic == topic_of(topics, event_class)
        assert record.key == key
        assert list(record.headers) == headers
        assert record.value == value
    assert status(broker.socket_path)["totals"]["published"] == procs * count


def test_sigterm_under_load_loses_nothing_received(
    start_broker, start_senders, topics, kafka_bootstrap
):
    """Everything the broker received before SIGTERM reaches Kafka, none twice.

    What Kafka had not acknowledged within the drain time is spooled at exit
    and published by the next broker on the same spool.
    """
    broker = start_broker()
    senders = start_senders(broker.socket_path, 4, 0, "--forever")
    time.sleep(2.0)

    assert broker.terminate(timeout_s=60) == 0
    for sender in senders:
        sender.kill()
    stopped = log_lines(broker.stderr())[-1]
    restarted = start_broker()
    records = consume(kafka_bootstrap, topics.all(), stopped["received"])
    ids = Counter(event_id(record.value) for record in records)

    print(f"\n{stopped}")
    assert stopped["event"] == "stopped"
    assert stopped["received"] > 0
    assert stopped["failed"] == 0
    assert stopped["published"] + stopped["spooled"] == stopped["received"]
    assert len(ids) == stopped["received"]
    # Only a batch spooled at drain that Kafka took after all can come twice.
    assert sum(ids.values()) - len(ids) <= stopped["spooled"]
    assert restarted.terminate() == 0


def test_acked_event_is_in_kafka_when_the_ack_arrives(
    start_broker, topics, kafka_bootstrap
):
    """An ack means Kafka has the event: a consumer started after it finds it."""
    broker = start_broker()
    context = zmq.Context.instance()
    dealer = context.socket(zmq.DEALER)
    dealer.connect(f"ipc://{broker.socket_path}")
    frames = protocol.encode_event(
        EventClass.AUDIT, b'{"id":"acked"}', host=b"h", pid=1, seq=1, wants_ack=True
    )

    dealer.send_multipart(frames)
    assert dealer.poll(30_000), "no ack within 30 s"
    reply = protocol.decode_reply(dealer.recv_multipart())
    dealer.close(linger=0)
    records = consume(kafka_bootstrap, [topics.audit], 1, timeout_s=10)

    assert (reply.kind, reply.seq) == (protocol.Kind.ACK, 1)
    assert [record.value for record in records] == [b'{"id":"acked"}']


def test_bad_frames_are_counted_and_good_traffic_continues(
    start_broker, topics, kafka_bootstrap
):
    """Malformed messages are counted by reason; valid ones around them publish."""
    broker = start_broker()
    context = zmq.Context.instance()
    dealer = context.socket(zmq.DEALER)
    dealer.connect(f"ipc://{broker.socket_path}")
    good = protocol.encode_event(
        EventClass.APPLICATION, b'{"id":"good"}', host=b"h", pid=1, seq=1
    )
    bad_version = [b"\x09" + good[0][1:]]
    extra_frame = [*good, b"{}"]

    for frames in ([b"junk"], good, bad_version, extra_frame, good):
        dealer.send_multipart(frames)
    dealer.close(linger=-1)
    records = consume(kafka_bootstrap, [topics.application], 2, timeout_s=20)

    assert len(records) == 2
    bad_frames = status(broker.socket_path)["bad_frames"]
    assert bad_frames == {"bad_head": 1, "bad_version": 1, "bad_frame_count": 1}


def test_second_broker_on_a_live_socket_is_refused(start_broker):
    """A second broker exits non-zero, names the socket, and the first keeps serving."""
    first = start_broker()

    second = start_broker(wait=False)
    exit_code = second.process.wait(timeout=60)

    assert exit_code != 0
    assert "already serves" in second.stderr()
    assert str(first.socket_path) in second.stderr()
    assert first.process.poll() is None
    assert broker_answers(first.socket_path, timeout_s=10) is not None


def test_stale_socket_of_a_killed_broker_is_replaced(start_broker):
    """After SIGKILL leaves the socket file behind, a new broker takes the path."""
    first = start_broker()
    first.kill()
    assert first.socket_path.exists()

    second = start_broker()

    assert broker_answers(second.socket_path, timeout_s=10) is not None


def test_stale_socket_file_without_a_lock_is_replaced(start_broker, socket_path):
    """A socket file nobody answers on is removed and bound again."""
    leftover = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    leftover.bind(str(socket_path))
    leftover.close()

    broker = start_broker()

    assert broker_answers(broker.socket_path, timeout_s=10) is not None


def test_socket_file_gets_the_configured_mode(start_broker):
    """The socket is created 0660 by default: group members may connect."""
    broker = start_broker()

    assert stat.S_IMODE(os.stat(broker.socket_path).st_mode) == 0o660


def test_over_long_socket_path_is_refused_with_the_reason(tmp_path):
    """A path past the Unix limit is refused, naming the path, its length, the limit."""
    long_path = tmp_path / ("d" * 120) / "broker.sock"

    result = subprocess.run(
        [sys.executable, "-m", "zlog", "broker", "--socket", str(long_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode != 0
    assert str(long_path) in result.stderr
    assert f"{len(os.fsencode(long_path))} bytes" in result.stderr
    assert "107" in result.stderr
