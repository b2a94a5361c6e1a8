"""Fixtures shared by the whole suite.

Every test gets its own socket path and topic names, so ``pytest -n auto``
never collides. Integration tests need the real Kafka that ``make kafka-up``
starts; when it is absent they fail, never skip.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from zlog.endpoint import request_status as broker_answers

DEFAULT_TEST_BOOTSTRAP = "127.0.0.1:9092"

# A broker answers its first status request within a second here; a loaded CI
# machine running tests in parallel can take much longer.
BROKER_START_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Topics:
    """One test's topic names, one per event class."""

    application: str
    audit: str
    security: str

    def all(self) -> list[str]:
        return [self.application, self.audit, self.security]


@dataclass
class BrokerProcess:
    """A ``zlog broker`` subprocess started by the ``broker`` fixture."""

    process: subprocess.Popen
    socket_path: Path
    topics: Topics
    bootstrap: str
    stderr_path: Path
    args: list[str] = field(default_factory=list)

    def terminate(self, timeout_s: float = 60.0) -> int:
        """Send SIGTERM and wait for the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

        return self.process.wait(timeout=timeout_s)

    def kill(self) -> int:
        """Send SIGKILL and reap."""
        if self.process.poll() is None:
            self.process.kill()

        return self.process.wait(timeout=30)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """Bootstrap servers of the real Kafka; fails the test when it is down."""
    bootstrap = os.environ.get("ZLOG_TEST_BOOTSTRAP", DEFAULT_TEST_BOOTSTRAP)
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except OSError as exc:
        pytest.fail(f"Kafka is not reachable on {bootstrap} ({exc}): run make kafka-up")

    return bootstrap


@pytest.fixture
def topics(request: pytest.FixtureRequest) -> Topics:
    """Unique topic names for this test."""
    tag = f"{request.node.name[:40]}-{uuid.uuid4().hex[:8]}"
    tag = "".join(c if c.isalnum() or c in "._-" else "-" for c in tag)

    return Topics(
        application=f"t.{tag}.application",
        audit=f"t.{tag}.audit",
        security=f"t.{tag}.security",
    )


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A short private directory for sockets (Unix paths are capped at 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="zl-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def socket_path(socket_dir: Path) -> Path:
    """A socket path no other test uses."""
    return socket_dir / "broker.sock"


@pytest.fixture
def start_broker(
    kafka_bootstrap: str, topics: Topics, socket_path: Path, tmp_path: Path
) -> Iterator:
    """Factory: start ``zlog broker`` on this test's socket and topics.

    Extra command-line arguments may be passed. The spool is ``spool.db`` in
    the test's temporary directory unless ``spool_path`` names another, so a
    restarted broker finds what its predecessor spooled. The broker is stopped with
    SIGTERM (then SIGKILL) at teardown if the test left it running.
    """
    started: list[BrokerProcess] = []

    def start(
        *extra: str,
        bootstrap: str | None = None,
        wait: bool = True,
        spool_path: Path | None = None,
    ):
        servers = bootstrap or kafka_bootstrap
        spool = spool_path or tmp_path / "spool.db"
        args = [
            sys.executable,
            "-m",
            "zlog",
            "broker",
            "--socket",
            str(socket_path),
            "--bootstrap-servers",
            servers,
            "--application-topic",
            topics.application,
            "--audit-topic",
            topics.audit,
            "--security-topic",
            topics.security,
            "--spool-path",
            str(spool),
            *extra,
        ]
        stderr_path = tmp_path / f"broker-{len(started)}.stderr"
        with open(stderr_path, "wb") as stderr:
            process = subprocess.Popen(args, stderr=stderr, stdout=stderr)
        broker = BrokerProcess(process, socket_path, topics, servers, stderr_path, args)
        started.append(broker)
        if wait:
            wait_for_broker(broker)

        return broker

    yield start
    for broker in started:
        if broker.process.poll() is None:
            try:
                broker.terminate(timeout_s=30)
            except subprocess.TimeoutExpired:
                broker.kill()


def wait_for_broker(broker: BrokerProcess) -> None:
    """Block until the broker answers a status request; fail if it exits."""
    deadline = time.monotonic() + BROKER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if broker.process.poll() is not None:
            pytest.fail(
                f"broker exited with {broker.process.returncode}:\n{broker.stderr()}"
            )
        if broker.socket_path.exists() and broker_answers(broker.socket_path):
            return
        time.sleep(0.1)
    pytest.fail(f"broker did not answer within {BROKER_START_TIMEOUT_S} s")
