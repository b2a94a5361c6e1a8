"""The demo's verifier: decoding records, judging exactly once, the report."""

from __future__ import annotations

import orjson
import pytest

from zlog.demo.verify import (
    Arrival,
    ReplayFigures,
    arrival_from_record,
    judge,
    percentile,
    render_report,
)

TOPICS = {"application": "t.app", "audit": "t.audit", "security": "t.sec"}


def envelope(event_type: str, **context: object) -> bytes:
    return orjson.dumps(
        {
            "event_type": f"omninode.logging.{event_type}.v1",
            "event_id": "e",
            "payload": {"message": "m", "context": context},
        }
    )


def arrival(topic: str, key, event_class: str = "application") -> Arrival:
    return Arrival(topic, event_class, key, 2.0, 1_000, True)


def test_record_decodes_to_key_class_and_latency() -> None:
    """The key comes from the context and latency from sent_at."""
    value = envelope(
        "security", source_file="OpenSSH_2k.log", line_no=3, repeat=1, sent_at=99.5
    )

    got = arrival_from_record("t.sec", value, 100_000, 1)

    assert got.key == ("OpenSSH_2k.log", 3, 1)
    assert got.event_class == "security"
    assert got.latency_ms == pytest.approx(500.0)
    assert got.log_append_time


def test_record_that_is_not_an_envelope_has_no_key() -> None:
    got = arrival_from_record("t.app", b"not json", 1, 0)

    assert got.key is None
    assert got.event_class == "unknown"
    assert got.latency_ms is None


def test_every_key_once_in_its_topic_passes() -> None:
    expected = {("a", 1, 0): "application", ("b", 1, 0): "security"}
    arrivals = [
        arrival("t.app", ("a", 1, 0)),
        arrival("t.sec", ("b", 1, 0), "security"),
    ]

    verdict = judge(arrivals, expected, TOPICS)

    assert verdict.passed
    assert verdict.arrived_once == 2


@pytest.mark.parametrize(
    ("arrivals", "field", "value"),
    [
        pytest.param([arrival("t.app", ("a", 1, 0))], "missing", [("a", 2, 0)], id="m"),
        pytest.param(
            [arrival("t.app", ("a", 1, 0))] * 2 + [arrival("t.app", ("a", 2, 0))],
            "duplicated",
            [("a", 1, 0)],
            id="dup",
        ),
        pytest.param(
            [arrival("t.app", k) for k in [("a", 1, 0), ("a", 2, 0), ("a", 3, 0)]],
            "unexpected",
            1,
            id="unexpected",
        ),
        pytest.param(
            [arrival("t.app", ("a", 1, 0)), arrival("t.sec", ("a", 2, 0))],
            "wrong_topic",
            1,
            id="wrong-topic",
        ),
    ],
)
def test_any_deviation_fails(arrivals, field: str, value) -> None:
    expected = {("a", 1, 0): "application", ("a", 2, 0): "application"}

    verdict = judge(arrivals, expected, TOPICS)

    assert not verdict.passed
    assert getattr(verdict, field) == value


def test_nearest_rank_percentile() -> None:
    values = [float(v) for v in range(1, 101)]

    assert percentile(values, 0.50) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([7.0], 0.99) == 7.0


def test_report_shows_sources_topics_and_verdict() -> None:
    expected = {
        ("OpenSSH_2k.log", 1, 0): "security",
        ("HDFS_2k.log", 1, 0): "application",
    }
    arrivals = [
        arrival("t.sec", ("OpenSSH_2k.log", 1, 0), "security"),
        arrival("t.app", ("HDFS_2k.log", 1, 0)),
    ]
    figures = ReplayFigures({"OpenSSH_2k.log": 1, "HDFS_2k.log": 1}, 1, 4, 0.5, 0)

    report = render_report(
        figures, arrivals, expected, TOPICS, judge(arrivals, expected, TOPICS)
    )

    assert "OpenSSH_2k.log" in report
    assert "PASS: 2 of 2" in report
    assert "p50 2.0 ms" in report
    assert "t.sec" in report
