"""The broker's log: JSON lines only, library messages included and throttled."""

from __future__ import annotations

import json
import logging
import socket
import time

from structlog.testing import capture_logs

from zlog.broker.logs import JsonLogHandler, RateLimiter


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then closed)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def library_logger(handler: logging.Handler) -> logging.Logger:
    logger = logging.getLogger(f"aiokafka.test-{time.monotonic_ns()}")
    logger.propagate = False
    logger.addHandler(handler)

    return logger


def test_library_record_becomes_a_structured_warning():
    """A stdlib record turns into one warning with its logger and text."""
    logger = library_logger(JsonLogHandler())

    with capture_logs() as logs:
        logger.error("Unable connect to %r: %s", "127.0.0.1:1", "refused")

    (entry,) = logs
    assert entry["log_level"] == "warning"
    assert entry["event"] == "kafka_client"
    assert entry["logger"] == logger.name
    assert entry["library_level"] == "ERROR"
    assert entry["message"] == "Unable connect to '127.0.0.1:1': refused"


def test_repeated_library_messages_are_rate_limited():
    """The same message template passes once per interval, then counts as held."""
    logger = library_logger(JsonLogHandler(RateLimiter(interval_s=3600)))

    with capture_logs() as logs:
        for attempt in range(5):
            logger.error("Unable connect to %s", attempt)
        logger.warning("another message")

    assert [entry["message"] for entry in logs] == [
        "Unable connect to 0",
        "another message",
    ]


def test_library_complaints_about_one_topic_are_left_to_the_broker():
    """aiokafka's per-topic metadata errors are dropped: the broker reports
    such a topic itself, with the reason, so it is named once, not twice.
    """
    logger = library_logger(JsonLogHandler())

    with capture_logs() as logs:
        logger.error("Topic %s not found in cluster metadata", "t.missing")
        logger.error("Topic %s is not authorized for this client", "t.hidden")
        logger.error("Unable to update metadata from %s", [1])

    assert [entry["message"] for entry in logs] == [
        "Unable to update metadata from [1]"
    ]


def test_library_debug_and_info_are_not_logged():
    """Only warnings and errors of the library reach the broker's log."""
    handler = JsonLogHandler()
    logger = library_logger(handler)
    logger.setLevel(logging.DEBUG)

    with capture_logs() as logs:
        logger.info("connected")
        logger.debug("sending request")

    assert logs == []


def test_broker_stderr_holds_json_lines_only_while_kafka_is_away(start_broker):
    """aiokafka's complaints about an unreachable Kafka come out as JSON too."""
    broker = start_broker(bootstrap=f"127.0.0.1:{closed_port()}")
    time.sleep(3)
    assert broker.terminate() == 0

    lines = [line for line in broker.stderr().splitlines() if line.strip()]
    for line in lines:
        assert isinstance(json.loads(line), dict), line
    assert any(json.loads(line)["event"] == "kafka_client" for line in lines)
