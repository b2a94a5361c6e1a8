"""Fixtures of the broker tests: sender processes that never outlive a test."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

SENDER = str(Path(__file__).with_name("sender.py"))


@pytest.fixture
def start_senders() -> Iterator:
    """Factory: start ``sender.py`` processes; each is killed at teardown.

    ``start_senders(socket_path, procs, count, *flags)`` returns the
    processes. A ``--forever`` sender only stops when killed, so teardown
    kills every one still running, by its pid, whether the test passed or not.
    """
    started: list[subprocess.Popen] = []

    def start(socket_path: Path, procs: int, count: int, *flags: str) -> list:
        senders = []
        for proc in range(procs):
            command = [sys.executable, SENDER, str(socket_path), str(proc), str(count)]
            senders.append(subprocess.Popen([*command, *flags]))
            started.append(senders[-1])

        return senders

    yield start
    for sender in started:
        if sender.poll() is None:
            sender.kill()
        sender.wait(timeout=30)
