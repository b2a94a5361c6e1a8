"""``zlog tail`` reads real topics and prints the events that pass its filters."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest
from aiokafka import AIOKafkaProducer

from zlog.tools.tail import Filter, format_line


def application(service: str, level: str, message: str) -> dict:
    return {
        "event_type": "omninode.logging.application.v1",
        "timestamp": "2026-01-02T03:04:05+00:00",
        "tenant_id": "acme",
        "payload": {
            "service_name": service,
            "level": level,
            "logger": "app.views",
            "message": message,
        },
    }


AUDIT = {
    "timestamp": "2026-01-02T03:04:06+00:00",
    "tenant_id": "acme",
    "payload": {
        "action": "login",
        "actor": "bob",
        "resource": "portal",
        "outcome": "success",
    },
}
SECURITY = {
    "timestamp": "2026-01-02T03:04:07+00:00",
    "tenant_id": "acme",
    "payload": {
        "event_type": "access",
        "user_id": "eve",
        "resource": "vault",
        "decision": "deny",
    },
}


async def produce(bootstrap: str, records: list[tuple[str, object]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for topic, value in records:
            data = value if isinstance(value, bytes) else json.dumps(value).encode()
            await producer.send_and_wait(topic, data)
    finally:
        await producer.stop()


def tail(kafka_bootstrap, topics, *args: str) -> subprocess.CompletedProcess:
    env = dict(
        os.environ,
        ZLOG_TOPICS_APPLICATION=topics.application,
        ZLOG_TOPICS_AUDIT=topics.audit,
        ZLOG_TOPICS_SECURITY=topics.security,
    )
    command = [sys.executable, "-m", "zlog", "tail", "--from-beginning"]
    command += ["--bootstrap-servers", kafka_bootstrap, "--timeout-s", "30", *args]

    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)


@pytest.fixture
def filled_topics(kafka_bootstrap, topics):
    """Five application events of two services, one audit, one security."""
    records = [
        (topics.application, application("billing", "INFO", "charge accepted")),
        (topics.application, application("billing", "ERROR", "charge failed")),
        (topics.application, application("search", "WARN", "slow query")),
        (topics.application, application("search", "DEBUG", "cache miss")),
        (topics.application, b"not json at all"),
        (topics.audit, AUDIT),
        (topics.security, SECURITY),
    ]
    asyncio.run(produce(kafka_bootstrap, records))

    return topics


@pytest.mark.kafka
def test_tail_prints_every_class_from_the_beginning(kafka_bootstrap, filled_topics):
    result = tail(kafka_bootstrap, filled_topics, "--max-events", "7")

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 7
    assert any(
        "audit       tenant=acme actor=bob login portal -> success" in x for x in lines
    )
    assert any(
        "security    tenant=acme user=eve access vault -> deny" in x for x in lines
    )
    assert any("not a JSON object" in line for line in lines)


@pytest.mark.kafka
def test_tail_filters_by_service_and_level(kafka_bootstrap, filled_topics):
    result = tail(
        kafka_bootstrap,
        filled_topics,
        "--service",
        "search",
        "--level",
        "warn",
        "--timeout-s",
        "8",
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "2026-01-02T03:04:05+00:00 application WARN  search app.views: slow query"
    ]


@pytest.mark.kafka
def test_tail_filters_by_class_and_prints_envelopes_as_json(
    kafka_bootstrap, filled_topics
):
    result = tail(
        kafka_bootstrap,
        filled_topics,
        "--class",
        "security",
        "--json",
        "--max-events",
        "1",
    )

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == SECURITY


@pytest.mark.parametrize(
    ("kwargs", "kept"),
    [
        pytest.param({}, [True, True, True], id="no-filter"),
        pytest.param({"classes": ["audit"]}, [False, True, False], id="class"),
        pytest.param({"level": "ERROR"}, [False, True, True], id="level-keeps-audit"),
        pytest.param({"services": ["billing"]}, [True, False, False], id="service"),
    ],
)
def test_filter_decides_per_class(kwargs, kept):
    keep = Filter(**kwargs)
    envelopes = [
        ("application", application("billing", "INFO", "x")),
        ("audit", AUDIT),
        ("security", SECURITY),
    ]

    assert [keep.keeps(c, e) for c, e in envelopes] == kept


def test_warning_and_critical_count_as_warn_and_error():
    keep = Filter(level="WARN")

    assert keep.keeps("application", application("s", "warning", "x"))
    assert keep.keeps("application", application("s", "critical", "x"))
    assert not keep.keeps("application", application("s", "info", "x"))


def test_format_line_of_an_application_event():
    line = format_line("application", application("billing", "INFO", "ok"))

    assert line == "2026-01-02T03:04:05+00:00 application INFO  billing app.views: ok"
