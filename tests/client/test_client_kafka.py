"""The client through the real broker into the real Kafka."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import time

import pytest
import structlog
from kafka_helpers import consume

import zlog
from zlog.client import compat
from zlog.endpoint import request_status

pytestmark = pytest.mark.kafka


def log_lines_in_child(count: int) -> int:
    log = structlog.get_logger()
    for i in range(count):
        log.info("child line", i=i)

    return os.getpid()


@pytest.fixture
def client(socket_path, monkeypatch):
    """The process emitter and structlog pointed at this test's broker."""
    monkeypatch.setenv("TENANT_ID", "acme")
    monkeypatch.setenv("ZLOG_SOCKET", str(socket_path))
    zlog.configure(socket_path=str(socket_path))
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            zlog.ZlogProcessor(service_name="shop", drop=True),
        ],
        cache_logger_on_first_use=True,
    )
    compat._global_publisher = None
    yield
    structlog.reset_defaults()
    zlog.close(0)
    zlog.configure()
    compat._global_publisher = None


def test_structlog_audit_and_forked_workers_reach_kafka(
    start_broker, topics, kafka_bootstrap, client
):
    """Lines from the parent and forked children, and an acked audit, land in Kafka."""
    start_broker()
    log = structlog.get_logger()
    log.info("parent line", step=1)
    with multiprocessing.get_context("fork").Pool(2) as pool:
        child_pids = set(pool.map(log_lines_in_child, [5, 5]))
        pool.close()
        pool.join()
    acked = asyncio.run(
        zlog.publish_audit_log(
            action="checkout", actor="bob", resource="cart", outcome="success"
        )
    )
    records = consume(kafka_bootstrap, [topics.application, topics.audit], 12)

    assert acked
    application = [r for r in records if r.topic == topics.application]
    assert len(application) == 11
    instances = {json.loads(r.value)["payload"]["instance_id"] for r in application}
    assert {i.rsplit(":", 1)[1] for i in instances} == {
        str(p) for p in child_pids | {os.getpid()}
    }
    [audit] = [r for r in records if r.topic == topics.audit]
    assert audit.key == b"acme"
    assert dict(audit.headers)["x-tenant"] == b"acme"
    assert json.loads(audit.value)["payload"]["action"] == "checkout"


def test_broker_restart_mid_stream(start_broker, topics, kafka_bootstrap, client):
    """After the broker restarts, the emitter reconnects and events flow again."""
    broker = start_broker()
    log = structlog.get_logger()
    for i in range(50):
        log.info("before", i=i)
    assert zlog.get_emitter().flush(10)
    broker.terminate()
    for i in range(20):
        log.info("while down", i=i)
    start_broker()
    deadline = time.monotonic() + 20
    while not zlog.publish_audit_log_sync(
        action="probe", actor="t", resource="r", outcome="success"
    ):
        assert time.monotonic() < deadline, "the emitter never reconnected"
    for i in range(50):
        log.info("after", i=i)
    assert zlog.get_emitter().flush(10)
    stats = zlog.stats()
    records = consume(kafka_bootstrap, [topics.application], 100)
    messages = [json.loads(r.value)["payload"]["message"] for r in records]

    assert messages.count("before") == 50
    assert messages.count("after") == 50
    lost = 20 - messages.count("while down")
    assert stats.dropped.get("broker_unavailable", 0) >= lost


def test_frame_over_the_brokers_limit_is_dropped_and_the_connection_survives(
    start_broker, topics, kafka_bootstrap, client, socket_path
):
    """An event whose frame the broker would refuse never leaves the client.

    Sent, it would make ZeroMQ drop the connection and the events queued
    behind it; refused as ``too_large``, it is the only event missing, and
    the broker hears of it as a drop, not as a sequence gap.
    """
    limit = 64 * 1024
    start_broker("--max-frame-bytes", str(limit))
    zlog.configure(socket_path=str(socket_path), max_frame_bytes=limit)
    fields = dict(
        service_name="shop",
        instance_id="shop-1",
        level="INFO",
        logger_name="cart",
        code="C",
    )
    send = zlog.publish_application_log_sync
    results = [send(**fields, message="m", context={"n": n}) for n in range(100)]
    big = send(**fields, message="m" * 100_000, context={"n": "big"})
    results += [send(**fields, message="m", context={"n": n}) for n in range(100, 200)]
    acked = zlog.publish_audit_log_sync(
        action="checkout", actor="bob", resource="cart", outcome="success"
    )
    records = consume(kafka_bootstrap, [topics.application, topics.audit], 201)
    status = json.loads(request_status(socket_path, timeout_s=5))

    assert big is False and acked is True and all(results)
    numbers = [
        json.loads(r.value)["payload"]["context"].get("n")
        for r in records
        if r.topic == topics.application
    ]
    assert sorted(n for n in numbers if n is not None) == list(range(200))
    assert zlog.stats().dropped == {"too_large": 1}
    assert status["emitter_drops_total"] == {"too_large": 1}
    assert status["sequence"]["pending"] == status["sequence"]["missing"] == 0
