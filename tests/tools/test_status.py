"""``zlog status`` against real brokers: healthy, degraded, absent."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from zlog.tools import status as status_tool
from zlog.tools.status import EXIT_DEGRADED, EXIT_HEALTHY, EXIT_NO_BROKER

SENDER = str(Path(__file__).parents[1] / "broker" / "sender.py")


def zlog_status(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "zlog", "status", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.kafka
def test_healthy_broker_prints_a_summary_and_exits_0(start_broker):
    broker = start_broker("--metrics-address", "off")
    sender = [sys.executable, SENDER, str(broker.socket_path), "0", "30"]
    assert subprocess.run(sender, timeout=60).returncode == 0
    time.sleep(1.0)

    result = zlog_status("--socket", str(broker.socket_path))

    assert result.returncode == EXIT_HEALTHY, result.stderr
    lines = dict(line.split(None, 1) for line in result.stdout.splitlines())
    assert f"pid {broker.process.pid}" in lines["broker"]
    assert "up since" in lines["broker"]
    assert lines["kafka"].startswith("connected")
    assert lines["totals"].startswith("30 received, 30 published")
    assert lines["spool"].startswith("0 events")
    assert lines["loss"].startswith("0 dropped by emitters, 0 missing")
    assert lines["health"] == "healthy"
    assert lines["emitters"].endswith("1 origins (host, pid) seen")
    # A broker younger than its first rate sample says so instead of "0/s".
    assert "events/s in" in lines["rates"] or "not measured yet" in lines["rates"]


@pytest.mark.kafka
def test_json_is_the_whole_status_document(start_broker):
    broker = start_broker("--metrics-address", "off")

    result = zlog_status("--socket", str(broker.socket_path), "--json")

    status = json.loads(result.stdout)
    assert status["pid"] == broker.process.pid
    assert status["kafka"]["state"] == "connected"
    assert {"rates", "started_at", "spool", "totals"} <= status.keys()


@pytest.mark.kafka
def test_spooling_broker_is_degraded_and_exits_1(start_broker):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{probe.getsockname()[1]}"
    broker = start_broker("--metrics-address", "off", bootstrap=closed)

    result = zlog_status("--socket", str(broker.socket_path))

    assert result.returncode == EXIT_DEGRADED
    assert "Kafka is unavailable" in result.stdout
    assert "events are going to the spool" in result.stdout


def test_no_broker_exits_2_and_says_where_it_looked(socket_path):
    result = zlog_status("--socket", str(socket_path), "--timeout-s", "0.5")

    assert result.returncode == EXIT_NO_BROKER
    assert str(socket_path) in result.stderr


def test_a_socket_nobody_answers_on_exits_2(socket_path):
    """A stale socket file left by a killed broker is not a broker."""
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(socket_path))
    stale.close()

    result = zlog_status("--socket", str(socket_path), "--timeout-s", "0.5")

    assert result.returncode == EXIT_NO_BROKER


def wait_for_connections(socket_path: Path, accept, timeout_s: float = 20.0) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = zlog_status("--socket", str(socket_path), "--json")
        connections = json.loads(result.stdout)["connections"]
        if accept(connections):
            return connections
        time.sleep(0.3)
    raise AssertionError(f"connections stayed at {connections}")


@pytest.mark.kafka
def test_open_emitter_connections_are_counted(start_broker):
    """Connections come and go with the emitters; the status probe is one too."""
    import zmq

    broker = start_broker("--metrics-address", "off")
    context = zmq.Context()
    dealers = [context.socket(zmq.DEALER) for _ in range(3)]
    try:
        for dealer in dealers:
            dealer.connect(f"ipc://{broker.socket_path}")

        assert wait_for_connections(broker.socket_path, lambda n: n >= 3) <= 4
    finally:
        for dealer in dealers:
            dealer.close(linger=0)
        context.term()

    assert wait_for_connections(broker.socket_path, lambda n: n <= 1) >= 0


@pytest.mark.parametrize(
    ("rates", "expected"),
    [
        pytest.param({}, "rates     not measured yet", id="before-first-sample"),
        pytest.param(
            {
                "received_per_s": 1500.4,
                "published_per_s": 1499.6,
                "spooled_per_s": 0.0,
                "interval_s": 5.0,
            },
            "rates     1,500 events/s in, 1,500/s to Kafka, 0/s to the spool "
            "(over the last 5 s)",
            id="sampled",
        ),
    ],
)
def test_rates_line_says_when_nothing_was_measured_yet(rates, expected):
    """Before the first sample the summary says so rather than showing zeros."""
    assert status_tool._rates_line(rates).startswith(expected)
