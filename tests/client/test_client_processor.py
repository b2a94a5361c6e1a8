"""The structlog processor and the logging handler in real logging setups."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os

import pytest
import structlog

import zlog
from zlog.protocol import EventClass

from .conftest import FakeBroker


def payload(event) -> dict:
    return json.loads(event.value)["payload"]


@pytest.fixture
def structlog_chain(emitter):
    """Configure structlog with the zlog processor before a JSON renderer."""
    output: list[str] = []

    def capture(_logger, _name, event_dict):
        output.append(event_dict)
        return ""

    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.format_exc_info,
            zlog.ZlogProcessor(
                service_name="billing", logger_rules={"sec": "security"}
            ),
            capture,
        ],
        logger_factory=structlog.ReturnLoggerFactory(),
        cache_logger_on_first_use=True,
    )
    yield output
    structlog.reset_defaults()


def test_application_mapping_follows_the_contract(fake_broker, structlog_chain):
    """Message, level, logger, code and remaining keys land where documented."""
    log = structlog.get_logger().bind(logger="app.payments", request_id="r-1")
    log.warning("charge failed", code="E42", amount=12, password="hunter2")
    [event] = fake_broker.wait_for(1)
    body = payload(event)

    assert event.event_class is EventClass.APPLICATION
    assert event.key == b"billing"
    assert body["message"] == "charge failed"
    assert body["level"] == "WARN"
    assert body["logger"] == "app.payments"
    assert body["code"] == "E42"
    assert body["service_name"] == "billing"
    assert body["instance_id"].endswith(f":{os.getpid()}")
    assert body["context"] == {
        "request_id": "r-1",
        "amount": 12,
        "password": "[REDACTED]",
    }


def test_processor_returns_the_event_dict_unchanged(fake_broker, structlog_chain):
    """Later processors see the event dict exactly as without zlog."""
    structlog.get_logger().info("hello", user="bob")

    [seen] = structlog_chain
    assert seen["event"] == "hello" and seen["user"] == "bob"
    assert "event_class" not in seen


def test_exceptions_are_rendered_into_context(fake_broker, structlog_chain):
    """format_exc_info's traceback reaches the context as ``exception``."""
    try:
        raise KeyError("missing")
    except KeyError:
        structlog.get_logger().exception("lookup failed")
    [event] = fake_broker.wait_for(1)
    body = payload(event)

    assert body["level"] == "ERROR"
    assert "KeyError: 'missing'" in body["context"]["exception"]


def test_explicit_class_key_routes_audit(fake_broker, structlog_chain):
    """``event_class="audit"`` makes an audit event keyed by tenant."""
    structlog.get_logger().info(
        "user login",
        event_class="audit",
        action="login",
        actor="bob",
        resource="portal",
        outcome="success",
        tenant_id="acme",
        ip="10.0.0.1",
    )
    [event] = fake_broker.wait_for(1)
    body = payload(event)

    assert event.event_class is EventClass.AUDIT
    assert event.key == b"acme"
    assert (body["action"], body["actor"], body["outcome"]) == (
        "login",
        "bob",
        "success",
    )
    assert body["context"] == {"event": "user login", "ip": "10.0.0.1"}


def test_logger_rules_route_security(fake_broker, structlog_chain):
    """A logger-name rule classifies events of ``sec.*`` as security."""
    structlog.get_logger().bind(logger="sec.authz").info(
        "denied", event_type="authz", user_id="u1", resource="doc", decision="deny"
    )
    [event] = fake_broker.wait_for(1)

    assert event.event_class is EventClass.SECURITY
    assert payload(event)["decision"] == "deny"


def test_invalid_event_is_dropped_and_counted_never_raised(
    fake_broker, structlog_chain
):
    """An audit event without an action is counted as invalid, not raised."""
    structlog.get_logger().info("oops", event_class="audit")

    assert zlog.stats().dropped == {"invalid": 1}
    assert len(structlog_chain) == 1


def test_long_correlation_id_is_dropped_as_invalid_never_raised(
    fake_broker, structlog_chain
):
    """A line with a 300 KB correlation id is counted invalid; the next one goes."""
    log = structlog.get_logger()
    log.info("huge id", correlation_id="c" * 300_000)
    log.info("next line")
    [event] = fake_broker.wait_for(1)

    assert payload(event)["message"] == "next line"
    assert zlog.stats().dropped == {"invalid": 1}
    assert len(structlog_chain) == 2


def test_drop_mode_raises_drop_event(fake_broker, emitter):
    """With drop=True the event goes to zlog and nowhere else."""
    processor = zlog.ZlogProcessor(drop=True)
    with pytest.raises(structlog.DropEvent):
        processor(None, "info", {"event": "x"})

    assert len(fake_broker.wait_for(1)) == 1


def log_from_child() -> None:
    structlog.get_logger().info("from child")


def test_cached_logger_works_across_fork(fake_broker, structlog_chain):
    """A logger cached before fork sends from the child's own emitter."""
    log = structlog.get_logger()
    log.info("before fork")
    child = multiprocessing.get_context("fork").Process(
        target=log.info, args=("child",)
    )
    child.start()
    child.join(20)
    events = fake_broker.wait_for(2)

    assert child.exitcode == 0
    assert {e.pid for e in events} == {os.getpid(), child.pid}
    child_event = next(e for e in events if e.pid == child.pid)
    assert payload(child_event)["instance_id"].endswith(f":{child.pid}")


def test_structlog_stdlib_integration_and_dict_tracebacks(fake_broker, emitter):
    """With structlog.stdlib and dict_tracebacks, the stdlib logger name is used."""
    structlog.configure(
        processors=[
            structlog.stdlib.add_log_level,
            structlog.processors.dict_tracebacks,
            zlog.ZlogProcessor(service_name="svc"),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
    )
    try:
        try:
            int("not a number")
        except ValueError:
            structlog.stdlib.get_logger("shop.cart").exception("broken")
    finally:
        structlog.reset_defaults()
    [event] = fake_broker.wait_for(1)
    body = payload(event)

    assert body["logger"] == "shop.cart"
    assert body["context"]["exception"][0]["exc_type"] == "ValueError"


def test_processor_never_raises_on_odd_values(fake_broker, emitter):
    """Values that cannot be serialized or even repr'd do not break the call."""

    class Bad:
        def __repr__(self):
            raise RuntimeError

    processor = zlog.ZlogProcessor()
    event = {"event": Bad(), "k": Bad(), 5: "int key", "s": "\ud800"}

    assert processor(None, "info", event) is event
    assert len(fake_broker.wait_for(1)) == 1


@pytest.fixture
def std_logger(emitter):
    logger = logging.getLogger(f"test.handler.{os.getpid()}")
    handler = zlog.ZlogHandler(service_name="svc", logger_rules={"audit": "audit"})
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger
    logger.removeHandler(handler)


def test_handler_maps_level_message_args_and_extra(fake_broker, std_logger):
    """Level, logger name, formatted message and extra= fields reach the envelope."""
    std_logger.warning("paid %s of %d", "bill", 3, extra={"order": 7, "token": "x"})
    [event] = fake_broker.wait_for(1)
    body = payload(event)

    assert body["message"] == "paid bill of 3"
    assert body["level"] == "WARN"
    assert body["logger"] == std_logger.name
    assert body["context"] == {"order": 7, "token": "[REDACTED]"}


def test_handler_renders_exc_info(fake_broker, std_logger):
    """A logged exception is rendered into the context."""
    try:
        raise ValueError("bad")
    except ValueError:
        std_logger.exception("failed")
    [event] = fake_broker.wait_for(1)

    assert "ValueError: bad" in payload(event)["context"]["exception"]


def test_handler_classifies_by_extra(fake_broker, std_logger):
    """``extra={"event_class": "audit", ...}`` sends an audit event."""
    std_logger.info(
        "login",
        extra={
            "event_class": "audit",
            "action": "login",
            "actor": "a",
            "tenant_id": "t",
        },
    )
    [event] = fake_broker.wait_for(1)

    assert event.event_class is EventClass.AUDIT


def test_handler_survives_bad_format_args(fake_broker, std_logger):
    """A message whose args do not fit still goes out, without raising."""
    record = std_logger.makeRecord(
        std_logger.name, logging.INFO, __file__, 1, "%d items", ("x",), None
    )
    std_logger.handlers[0].handle(record)

    assert payload(fake_broker.wait_for(1)[0])["message"] == "%d items"


def test_missing_tenant_warns_at_construction(monkeypatch):
    """Without tenant_id or TENANT_ID, building the processor warns once."""
    monkeypatch.delenv("TENANT_ID", raising=False)
    with pytest.warns(UserWarning, match="TENANT_ID"):
        zlog.ZlogProcessor()


def test_unknown_default_class_warns():
    """A misspelt class name is a warning pointing at the caller."""
    with pytest.warns(UserWarning, match="adit"):
        zlog.ZlogProcessor(tenant_id="t", default_class="adit")


def test_processor_without_broker_never_blocks_long(socket_path, monkeypatch):
    """With no broker, logging stays fast and the drops are counted."""
    monkeypatch.setenv("TENANT_ID", "t")
    zlog.configure(socket_path=str(socket_path), connect_grace_ms=0)
    try:
        processor = zlog.ZlogProcessor()
        for i in range(50):
            processor(None, "info", {"event": str(i)})
        assert zlog.stats().dropped == {"broker_unavailable": 50}
    finally:
        zlog.close(0)
        zlog.configure()


__all__ = ["FakeBroker"]
