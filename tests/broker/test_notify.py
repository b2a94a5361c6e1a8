"""systemd notifications from a real broker, caught on a socket the test owns."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from zlog.broker.notify import Notifier

pytestmark = pytest.mark.kafka

UNIT = Path(__file__).parents[2] / "systemd" / "zlog-broker.service"


class NotifySocket:
    """A datagram socket standing in for systemd; records what arrives, when."""

    def __init__(self, sock: socket.socket, env_value: str) -> None:
        self.sock = sock
        self.env_value = env_value
        self.received: list[tuple[float, dict[str, str]]] = []

    def wait_for(self, key: str, timeout_s: float = 60.0) -> dict[str, str]:
        """The first message holding ``key`` (already received or to come)."""
        for _, fields in self.received:
            if key in fields:
                return fields
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            fields = self.receive(deadline - time.monotonic())
            if fields is not None and key in fields:
                return fields
        raise AssertionError(f"no {key} within {timeout_s} s: {self.received}")

    def receive(self, timeout_s: float) -> dict[str, str] | None:
        self.sock.settimeout(max(timeout_s, 0.01))
        try:
            data = self.sock.recv(4096)
        except TimeoutError:
            return None
        fields = dict(line.split("=", 1) for line in data.decode().splitlines())
        self.received.append((time.monotonic(), fields))

        return fields

    def collect(self, duration_s: float) -> None:
        deadline = time.monotonic() + duration_s
        while time.monotonic() < deadline:
            self.receive(deadline - time.monotonic())

    def times_of(self, key: str) -> list[float]:
        return [when for when, fields in self.received if key in fields]


@pytest.fixture(params=["path", "abstract"])
def notify_socket(request, socket_dir):
    """A socket bound at a path, or in the abstract namespace ('@' in the env)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        path = str(socket_dir / "notify")
        sock.bind(path)
        env_value = path
    else:
        name = f"zlog-test-{uuid.uuid4().hex}"
        sock.bind("\0" + name)
        env_value = "@" + name
    yield NotifySocket(sock, env_value)
    sock.close()


def start_notified(start_broker, monkeypatch, notify_socket, **env: str):
    monkeypatch.setenv("NOTIFY_SOCKET", notify_socket.env_value)
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    return start_broker("--metrics-address", "off", wait=False)


def test_ready_arrives_once_the_socket_answers(
    start_broker, monkeypatch, notify_socket
):
    broker = start_notified(start_broker, monkeypatch, notify_socket)

    ready = notify_socket.wait_for("READY")

    assert ready["READY"] == "1"
    assert ready["MAINPID"] == str(broker.process.pid)
    assert ready["STATUS"].startswith("serving; Kafka connected")
    assert broker.socket_path.exists()


def test_watchdog_pings_at_half_the_watchdog_interval(
    start_broker, monkeypatch, notify_socket
):
    start_notified(start_broker, monkeypatch, notify_socket, WATCHDOG_USEC="600000")
    notify_socket.wait_for("READY")

    notify_socket.collect(3.0)

    pings = notify_socket.times_of("WATCHDOG")
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert len(pings) >= 5, notify_socket.received
    # The median, not every gap: a loaded machine may delay one wake-up.
    assert 0.25 <= statistics.median(gaps) <= 0.4, gaps


def test_no_watchdog_pings_when_meant_for_another_process(
    start_broker, monkeypatch, notify_socket
):
    start_notified(
        start_broker,
        monkeypatch,
        notify_socket,
        WATCHDOG_USEC="200000",
        WATCHDOG_PID=str(os.getpid()),
    )
    notify_socket.wait_for("READY")

    notify_socket.collect(1.0)

    assert notify_socket.times_of("WATCHDOG") == []


def test_stopping_arrives_on_sigterm_before_exit(
    start_broker, monkeypatch, notify_socket
):
    broker = start_notified(start_broker, monkeypatch, notify_socket)
    notify_socket.wait_for("READY")

    broker.process.send_signal(signal.SIGTERM)
    stopping = notify_socket.wait_for("STOPPING")

    assert stopping["STATUS"].startswith("draining")
    assert broker.process.wait(timeout=60) == 0


def test_ready_when_kafka_is_away_and_events_are_spooled(
    start_broker, monkeypatch, notify_socket
):
    """Spooling counts as ready: events are safe on disk."""
    monkeypatch.setenv("NOTIFY_SOCKET", notify_socket.env_value)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{probe.getsockname()[1]}"

    start_broker("--metrics-address", "off", bootstrap=closed, wait=False)

    ready = notify_socket.wait_for("READY")
    assert "Kafka unavailable" in ready["STATUS"]


def test_notifier_without_notify_socket_sends_nothing():
    notifier = Notifier.from_environment({"WATCHDOG_USEC": "1000000"})

    assert not notifier.enabled
    assert notifier.watchdog_interval_s is None
    assert notifier.ready("x") is False


def test_notifier_survives_a_vanished_systemd(tmp_path):
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": str(tmp_path / "gone")})

    assert notifier.watchdog() is False
    notifier.close()


@pytest.mark.skipif(
    subprocess.run(["which", "systemd-analyze"], capture_output=True).returncode,
    reason="systemd-analyze is not installed (.ci/run installs it)",
)
def test_systemd_analyze_accepts_the_unit(tmp_path):
    """The unit as shipped, with ExecStart pointed at this checkout's zlog."""
    zlog = Path(sys.executable).with_name("zlog")
    text = UNIT.read_text().replace("/usr/local/bin/zlog", str(zlog))
    unit = tmp_path / UNIT.name
    unit.write_text(text)

    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr
    assert "zlog-broker.service" not in result.stderr, result.stderr
