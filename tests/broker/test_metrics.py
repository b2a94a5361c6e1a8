"""The Prometheus endpoint of a real broker, scraped after real traffic."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import broker_answers
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.kafka

SENDER = str(Path(__file__).with_name("sender.py"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def scrape(address: str) -> dict[tuple[str, tuple], float]:
    """Every sample as (name, sorted labels) -> value."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value

    return samples


def published(socket_path: Path) -> int:
    return json.loads(broker_answers(socket_path, 10))["totals"]["published"]


def test_scrape_after_events_shows_counts_by_class_and_batch_histograms(
    start_broker,
):
    address = f"127.0.0.1:{free_port()}"
    broker = start_broker("--metrics-address", address)
    sender = [sys.executable, SENDER, str(broker.socket_path), "0", "300"]
    assert subprocess.run(sender, timeout=60).returncode == 0
    deadline = time.monotonic() + 60
    while published(broker.socket_path) < 300 and time.monotonic() < deadline:
        time.sleep(0.1)

    samples = scrape(address)

    for class_name in ("application", "audit", "security"):
        labels = (("class", class_name),)
        assert samples["zlog_broker_events_received_total", labels] == 100
        assert samples["zlog_broker_events_published_total", labels] == 100
        assert samples["zlog_broker_events_spooled_total", labels] == 0
    batches = samples["zlog_broker_kafka_batch_events_count", ()]
    assert 1 <= batches <= 300
    assert samples["zlog_broker_kafka_batch_events_sum", ()] == 300
    assert samples["zlog_broker_kafka_send_latency_seconds_count", ()] == batches
    assert samples["zlog_broker_kafka_up", ()] == 1
    assert samples["zlog_broker_spooling", ()] == 0
    assert samples["zlog_broker_origins", ()] == 1
    assert samples["zlog_broker_sequence_missing", ()] == 0


def test_spooled_events_show_in_spool_metrics_when_kafka_is_away(start_broker):
    address = f"127.0.0.1:{free_port()}"
    closed = f"127.0.0.1:{free_port()}"
    broker = start_broker("--metrics-address", address, bootstrap=closed)
    sender = [sys.executable, SENDER, str(broker.socket_path), "0", "90"]
    assert subprocess.run(sender, timeout=60).returncode == 0
    deadline = time.monotonic() + 60
    samples = scrape(address)
    while samples["zlog_broker_spool_events", ()] < 90 and time.monotonic() < deadline:
        time.sleep(0.2)
        samples = scrape(address)

    assert samples["zlog_broker_spool_events", ()] == 90
    assert samples["zlog_broker_spool_bytes", ()] > 0
    assert samples["zlog_broker_spooling", ()] == 1
    assert samples["zlog_broker_kafka_up", ()] == 0
    assert samples["zlog_broker_events_spooled_total", (("class", "audit"),)] == 30


def test_metrics_off_opens_no_port_and_busy_port_only_warns(start_broker):
    """A taken metrics address is a warning: the socket is still served."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        broker = start_broker("--metrics-address", address)

        assert broker_answers(broker.socket_path, 10) is not None
        assert '"event": "metrics_unavailable"' in broker.stderr()


def test_unknown_path_is_404(start_broker):
    address = f"127.0.0.1:{free_port()}"
    start_broker("--metrics-address", address)

    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(f"http://{address}/other", timeout=10)

    assert raised.value.code == 404
    raised.value.close()
