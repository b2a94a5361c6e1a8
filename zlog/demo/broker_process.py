"""The broker subprocess the demo starts for itself, and the topics it writes.

The demo runs ``zlog broker`` as a child in its own session, so a Ctrl-C in
the terminal reaches the demo alone; the demo then stops the broker with
SIGTERM, which makes it drain what it received into Kafka before it exits.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from zlog.endpoint import request_status
from zlog.errors import BrokerUnavailable

__all__ = [
    "BrokerProcess",
    "Topics",
    "create_topics",
    "delete_topics",
]

# A broker answers its first status request within a second on an idle
# machine; Kafka's first metadata round trip on a busy one takes longer.
DEFAULT_START_TIMEOUT_S = 60.0

# SIGTERM drains; the broker bounds its own drain well below this.
DEFAULT_STOP_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Topics:
    """The demo's topic name for each event class."""

    application: str
    audit: str
    security: str

    def by_class(self) -> dict[str, str]:
        return {
            "application": self.application,
            "audit": self.audit,
            "security": self.security,
        }


class BrokerProcess:
    """A ``zlog broker`` child on a private socket, its output in a file."""

    def __init__(
        self,
        socket_path: Path,
        bootstrap_servers: str,
        topics: Topics,
        log_path: Path,
    ) -> None:
        self.socket_path = socket_path
        self.log_path = log_path
        self.args = [
            sys.executable,
            "-m",
            "zlog",
            "broker",
            "--socket",
            str(socket_path),
            "--bootstrap-servers",
            bootstrap_servers,
            "--application-topic",
            topics.application,
            "--audit-topic",
            topics.audit,
            "--security-topic",
            topics.security,
        ]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = DEFAULT_START_TIMEOUT_S) -> None:
        """Start the broker and wait until it answers; raise if it cannot."""
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                self.args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BrokerUnavailable(
                    f"zlog broker exited with {self.process.returncode} on start; "
                    f"its log is {self.log_path}"
                )
            if (
                self.socket_path.exists()
                and request_status(self.socket_path) is not None
            ):
                return
            time.sleep(0.1)
        raise BrokerUnavailable(
            f"zlog broker did not answer on {self.socket_path} within "
            f"{timeout_s:.0f} s; its log is {self.log_path}"
        )

    def stop(self, timeout_s: float = DEFAULT_STOP_TIMEOUT_S) -> int | None:
        """SIGTERM, wait for the drain, SIGKILL past ``timeout_s``; exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def log_tail(self, lines: int = 20) -> str:
        """The last lines the broker wrote, for an error message."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""

        return "\n".join(text.splitlines()[-lines:])


async def create_topics(
    bootstrap_servers: str, names: list[str], log_append_time: bool = True
) -> list[str]:
    """Create the topics of ``names`` that do not exist yet; return those created.

    With ``log_append_time`` the record timestamp is set by Kafka when it
    appends the record, which is what the demo's latency figure measures to.
    """
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [name for name in names if name not in existing]
        configs = {"message.timestamp.type": "LogAppendTime"} if log_append_time else {}
        if missing:
            await admin.create_topics(
                [NewTopic(name, 1, 1, topic_configs=configs) for name in missing]
            )
    finally:
        await admin.close()

    return missing


async def delete_topics(bootstrap_servers: str, names: list[str]) -> None:
    """Delete ``names`` from Kafka."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        await admin.delete_topics(names)
    finally:
        await admin.close()
