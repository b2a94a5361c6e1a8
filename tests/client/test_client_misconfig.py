"""Misconfiguration never raises into a logging call: drops are counted, one warning."""

from __future__ import annotations

import asyncio
import logging
import warnings
from pathlib import Path

import pytest
import structlog

import zlog
from zlog.client import compat
from zlog.client.emitter import Delivery, DropReason
from zlog.client.envelope import EnvelopeBuilder


def too_long_path(socket_dir: Path) -> str:
    """A socket path over the 107 bytes a Unix socket address can hold."""
    return str(socket_dir / ("d" * 120) / "broker.sock")


BAD_SETTINGS = [
    pytest.param(lambda d: {"socket_path": too_long_path(d)}, id="path-too-long"),
    pytest.param(
        lambda d: {"socket_path": str(d / "broker.sock"), "queue_events": -1},
        id="negative-queue",
    ),
    pytest.param(
        lambda d: {"socket_path": str(d / "broker.sock"), "linger_ms": -5},
        id="negative-linger",
    ),
]


@pytest.fixture(params=BAD_SETTINGS)
def misconfigured(request, socket_dir: Path, monkeypatch: pytest.MonkeyPatch):
    """The process emitter configured with settings ZeroMQ refuses."""
    monkeypatch.setenv("TENANT_ID", "tenant-test")
    zlog.configure(**request.param(socket_dir))
    compat._global_publisher = None
    yield
    compat._global_publisher = None
    zlog.close(0)
    zlog.configure()


def audit_fields() -> dict:
    return {"action": "login", "actor": "bob", "resource": "r", "outcome": "success"}


def test_structlog_chain_counts_instead_of_raising(misconfigured):
    """The README's chain logs on; each event is counted as an error drop."""
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            zlog.ZlogProcessor(service_name="billing"),
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.ReturnLoggerFactory(),
    )
    try:
        with pytest.warns(UserWarning, match="cannot send events"):
            log = structlog.get_logger()
            log.info("x")
            log.info("audit", event_class="audit", **audit_fields())
    finally:
        structlog.reset_defaults()

    assert zlog.stats().dropped == {DropReason.ERROR: 2}


def test_handler_counts_instead_of_raising(misconfigured):
    """A logging handler on a misconfigured emitter counts its events as errors."""
    logger = logging.getLogger("test.misconfig.handler")
    logger.propagate = False
    handler = zlog.ZlogHandler()
    logger.addHandler(handler)
    try:
        with pytest.warns(UserWarning):
            logger.warning("x")
            logger.warning("y", extra={"event_class": "audit", **audit_fields()})
    finally:
        logger.removeHandler(handler)

    assert zlog.stats().dropped == {DropReason.ERROR: 2}


def test_emitter_calls_return_failure_instead_of_raising(misconfigured):
    """send, send_and_wait and flush answer False or UNAVAILABLE, and count."""
    built = EnvelopeBuilder().audit(tenant_id="t", context=None, **audit_fields())
    emitter = zlog.get_emitter()
    with pytest.warns(UserWarning):
        assert emitter.send(*built) is False
        assert emitter.send(*built, wants_ack=True) is False
        assert emitter.send_and_wait(*built) is Delivery.UNAVAILABLE
        assert emitter.flush(0.1) is False

    assert emitter.stats().dropped == {DropReason.ERROR: 3}


def test_compat_functions_return_false_instead_of_raising(misconfigured):
    """Every publish function, async and sync, returns False and counts."""
    app = {
        "service_name": "svc",
        "instance_id": "i",
        "level": "INFO",
        "logger_name": "l",
        "message": "m",
        "code": "c",
    }
    security = {"event_type": "e", "user_id": "u", "resource": "r", "decision": "deny"}
    with pytest.warns(UserWarning):
        results = [
            zlog.publish_application_log_sync(**app),
            zlog.publish_audit_log_sync(**audit_fields()),
            zlog.publish_security_log_sync(**security),
            asyncio.run(zlog.publish_application_log(**app)),
            asyncio.run(zlog.publish_audit_log(**audit_fields())),
            asyncio.run(zlog.publish_security_log(**security)),
        ]

    assert results == [False] * 6
    assert zlog.stats().dropped == {DropReason.ERROR: 6}


def test_misconfiguration_warns_once_at_the_callers_line(socket_dir, monkeypatch):
    """The warning is issued once per emitter and names the application's line."""
    monkeypatch.setenv("TENANT_ID", "t")
    zlog.configure(socket_path=too_long_path(socket_dir))
    processor = zlog.ZlogProcessor()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(5):
                processor(None, "info", {"event": "x"})
    finally:
        zlog.close(0)
        zlog.configure()

    assert len(caught) == 1
    assert caught[0].filename == __file__
    assert "File name too long" in str(caught[0].message)


def test_warning_as_error_still_never_raises(socket_dir, monkeypatch):
    """Under ``-W error`` the warning is swallowed rather than raised."""
    monkeypatch.setenv("TENANT_ID", "t")
    zlog.configure(socket_path=too_long_path(socket_dir))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            zlog.ZlogProcessor()(None, "info", {"event": "x"})
        dropped = zlog.stats().dropped
    finally:
        zlog.close(0)
        zlog.configure()

    assert dropped == {DropReason.ERROR: 1}


def test_configure_rejects_unknown_names_at_once():
    """A misspelt setting is a TypeError from configure, not from a log call."""
    with pytest.raises(TypeError):
        zlog.configure(socket="x")
    zlog.configure()
