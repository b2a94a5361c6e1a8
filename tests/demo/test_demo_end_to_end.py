"""``zlog demo`` end to end: a real broker subprocess and the real Kafka."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.kafka


def test_demo_delivers_every_line_exactly_once(kafka_bootstrap: str, topics) -> None:
    """Two passes over the 8,000 lines arrive once each, in their class's topic."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "zlog",
            "demo",
            "--repeat",
            "2",
            "--workers",
            "2",
            "--no-progress",
            "--delete-topics",
            "--bootstrap-servers",
            kafka_bootstrap,
            "--application-topic",
            topics.application,
            "--audit-topic",
            topics.audit,
            "--security-topic",
            topics.security,
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS: 16,000 of 16,000 (file, line, repeat)" in result.stdout
    assert "0 missing, 0 duplicated, 0 unexpected, 0 in the wrong topic" in (
        result.stdout
    )
    for name, lines in [
        ("OpenSSH_2k.log", "4,000"),
        ("Linux_2k.log", "4,000"),
        ("Apache_2k.log", "4,000"),
        ("HDFS_2k.log", "4,000"),
    ]:
        assert any(
            row.split()[:2] == [name, lines] for row in result.stdout.splitlines()
        ), result.stdout
    assert "broker         exit code 0" in result.stdout
