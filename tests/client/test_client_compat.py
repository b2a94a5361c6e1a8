"""The compatible publisher API: results, switches, validation, loops, metrics."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import prometheus_client
import pytest

import zlog
from zlog.client import compat

from .conftest import FakeBroker


@pytest.fixture
def fresh_global(emitter):
    """A clean shared publisher for each test."""
    compat._global_publisher = None
    yield
    compat._global_publisher = None


def metric(name: str, **labels) -> float:
    return prometheus_client.REGISTRY.get_sample_value(name, labels) or 0.0


APP = {
    "service_name": "svc",
    "instance_id": "svc-1",
    "level": zlog.LogLevel.INFO,
    "logger_name": "router",
    "message": "done",
    "code": "DONE",
}


def test_application_log_returns_true_once_queued(fake_broker, fresh_global):
    """publish_application_log is True when queued and keeps the old fields."""
    before = metric(
        "logging_events_published_total", event_type="application", status="success"
    )
    assert asyncio.run(zlog.publish_application_log(**APP, context={"n": 1}))
    [event] = fake_broker.wait_for(1)
    body = json.loads(event.value)

    assert body["payload"]["level"] == "INFO"
    assert body["tenant_id"] == "tenant-test"
    after = metric(
        "logging_events_published_total", event_type="application", status="success"
    )
    assert after == before + 1
    assert metric("logging_publisher_started", service_name="omniclaude") == 1


def test_audit_true_only_when_acked(socket_path, fresh_global):
    """Audit returns True on ack and False on nack."""
    call = zlog.publish_audit_log(
        action="login", actor="bob", resource="portal", outcome=zlog.Outcome.SUCCESS
    )
    broker = FakeBroker(socket_path)
    try:
        assert asyncio.run(call) is True
    finally:
        broker.stop()
    broker = FakeBroker(socket_path, reply="nack")
    try:
        refused = asyncio.run(
            zlog.publish_security_log(
                event_type="authz", user_id="u", resource="r", decision="deny"
            )
        )
    finally:
        broker.stop()

    assert refused is False


def test_old_keyword_style_with_tenant_first_still_works(fake_broker, fresh_global):
    """Keyword calls with tenant_id given first work for audit and security."""
    ok = asyncio.run(
        zlog.publish_audit_log(
            tenant_id="t9", action="a", actor="b", resource="c", outcome="failure"
        )
    )

    assert ok
    assert fake_broker.events[0].key == b"t9"


def test_disabled_by_argument_or_environment_is_a_no_op(
    fake_broker, fresh_global, monkeypatch
):
    """enable_events=False or the environment flag make every call return False."""
    publisher = zlog.LoggingEventPublisher(enable_events=False)
    asyncio.run(publisher.start())
    assert not asyncio.run(publisher.publish_application_log(**APP))
    monkeypatch.setenv("KAFKA_ENABLE_LOGGING_EVENTS", "false")
    assert not zlog.publish_application_log_sync(**APP)

    assert fake_broker.events == []


def test_unstarted_publisher_returns_false(fake_broker, emitter):
    """A publisher that was never started publishes nothing."""
    publisher = zlog.LoggingEventPublisher()

    assert not publisher.publish_application_log_sync(**APP)


def test_validation_raises_before_publishing(fake_broker, fresh_global):
    """A non-string partition key is a TypeError, other faults ValueError."""
    with pytest.raises(TypeError):
        zlog.publish_application_log_sync(**(APP | {"service_name": 3}))
    with pytest.raises(ValueError):
        zlog.publish_audit_log_sync(action=" ", actor="a", resource="r", outcome="x")

    assert fake_broker.events == []


def test_long_correlation_id_raises_value_error_before_publishing(
    fake_broker, fresh_global
):
    """A 300 KB correlation id is a ValueError naming it; nothing is sent."""
    cid = "c" * 300_000
    with pytest.raises(ValueError, match="correlation_id"):
        asyncio.run(zlog.publish_application_log(**APP, correlation_id=cid))
    with pytest.raises(ValueError, match="correlation_id"):
        asyncio.run(
            zlog.publish_audit_log(
                action="a", actor="b", resource="r", outcome="x", correlation_id=cid
            )
        )

    assert zlog.publish_application_log_sync(**APP)
    assert len(fake_broker.wait_for(1)) == 1


def test_oversized_envelope_returns_false(fake_broker, fresh_global):
    """An envelope over 1 MiB is not sent; the call returns False."""
    assert not zlog.publish_application_log_sync(**(APP | {"message": "m" * 2**20}))


def test_tenant_fallback_warns_when_nothing_is_set(
    fake_broker, fresh_global, monkeypatch
):
    """With no tenant anywhere, audit uses 'default' and warns."""
    monkeypatch.delenv("TENANT_ID")
    with pytest.warns(UserWarning, match="TENANT_ID"):
        assert zlog.publish_audit_log_sync(
            action="a", actor="b", resource="c", outcome="success"
        )

    assert fake_broker.events[0].key == b"default"


def test_works_from_several_event_loops(fake_broker, fresh_global):
    """Two asyncio.run calls in a row and a thread with its own loop all publish."""

    async def both() -> list[bool]:
        return [
            await zlog.publish_application_log(**APP),
            await zlog.publish_audit_log(
                action="a", actor="b", resource="c", outcome="success"
            ),
        ]

    results = asyncio.run(both()) + asyncio.run(both())
    in_thread: list[bool] = []
    thread = threading.Thread(target=lambda: in_thread.extend(asyncio.run(both())))
    thread.start()
    thread.join(30)

    assert results + in_thread == [True] * 6
    assert len(fake_broker.wait_for(6)) == 6


def test_context_manager_starts_and_stops(fake_broker, emitter):
    """LoggingEventPublisherContext yields a started publisher and stops it."""

    async def run() -> zlog.LoggingEventPublisher:
        async with zlog.LoggingEventPublisherContext() as publisher:
            assert publisher.started
            assert await publisher.publish_audit_log(
                "t1", "login", "bob", "portal", "success"
            )
        return publisher

    publisher = asyncio.run(run())

    assert not publisher.started


def test_global_publisher_is_shared(fake_broker, fresh_global):
    """_get_global_publisher returns one started publisher."""
    first = asyncio.run(compat._get_global_publisher())
    second = asyncio.run(compat._get_global_publisher(enable_events=False))

    assert first is second and first.started


def test_audit_without_broker_times_out_within_bound(socket_path, fresh_global):
    """With no broker, an audit call returns False after its bound."""
    publisher = zlog.LoggingEventPublisher(timeout_s=0.3)
    publisher.start_sync()

    assert not publisher.publish_audit_log_sync("t", "a", "b", "c", "success")
    errors = metric(
        "logging_kafka_errors_total", event_type="audit", error_type="BrokerUnavailable"
    )
    assert errors >= 1


def test_audit_calls_without_broker_do_not_stall(socket_path, fresh_global):
    """With no broker socket, fifty audit calls with the 5 s bound take under 1 s."""
    started = time.monotonic()
    results = [
        zlog.publish_audit_log_sync(
            action="a", actor="b", resource="c", outcome="success"
        )
        for _ in range(50)
    ]

    assert results == [False] * 50
    assert time.monotonic() - started < 1.0
    assert zlog.stats().dropped == {"broker_unavailable": 50}
