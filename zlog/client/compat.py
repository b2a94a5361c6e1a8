"""The publisher API services already call, now routed through the broker.

Same names, parameters and ``bool`` results as the per-process Kafka
publisher zlog replaces, so callers change an import and nothing else:

- ``publish_application_log`` returns True once the event is queued for the
  broker (it never waits for Kafka);
- ``publish_audit_log`` and ``publish_security_log`` return True only when
  the broker acknowledged the event (it is in Kafka or in the broker's disk
  spool), waiting at most ``PUBLISH_TIMEOUT_S``;
- ``False`` when publishing is disabled (``enable_events=False`` or
  ``KAFKA_ENABLE_LOGGING_EVENTS=false``), the publisher is not started, the
  envelope is over 1 MiB, the broker refused or did not answer in time;
- ``TypeError`` / ``ValueError`` for invalid fields, before anything is sent.

``bootstrap_servers`` is accepted and kept for compatibility; the broker owns
the Kafka connection. Nothing here is bound to an event loop: the async
functions work from any loop, one after another or at once, and the waits
for acknowledgments run in the loop's default executor. Every function has a
plain synchronous twin (``*_sync``) for code without a loop.
"""

from __future__ import annotations

import asyncio
import enum
import os
import threading
import time
import warnings
from collections.abc import Mapping
from typing import Any

from zlog.client import emitter as _emitter_module
from zlog.client.emitter import Delivery
from zlog.client.envelope import Built, EnvelopeBuilder, EnvelopeTooLarge

__all__ = [
    "PUBLISH_TIMEOUT_S",
    "Decision",
    "LogLevel",
    "LoggingEventPublisher",
    "LoggingEventPublisherContext",
    "Outcome",
    "publish_application_log",
    "publish_application_log_sync",
    "publish_audit_log",
    "publish_audit_log_sync",
    "publish_security_log",
    "publish_security_log_sync",
]

# The old publisher's bound around each send_and_wait.
PUBLISH_TIMEOUT_S = 5.0

# The label the old publisher's "started" gauge carried.
DEFAULT_SERVICE_LABEL = "omniclaude"

_FALSE_WORDS = frozenset({"0", "false", "no", "off", "disabled"})


class LogLevel(enum.StrEnum):
    """Application log levels as the envelope writes them."""

    DEBUG = "DEBUG"
    INFO = "INFO"
    WARN = "WARN"
    ERROR = "ERROR"


class Outcome(enum.StrEnum):
    """The outcome of an audited action."""

    SUCCESS = "success"
    FAILURE = "failure"


class Decision(enum.StrEnum):
    """An authorization decision."""

    ALLOW = "allow"
    DENY = "deny"


class _Metrics:
    """The old publisher's Prometheus metrics, under their old names."""

    def __init__(self) -> None:
        import prometheus_client as prom

        self.published = _metric(
            prom.Counter,
            "logging_events_published_total",
            "Logging events published",
            ["event_type", "status"],
        )
        self.latency = _metric(
            prom.Histogram,
            "logging_publish_latency_seconds",
            "Logging event publish latency",
            ["event_type"],
            buckets=[0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0],
        )
        self.started = _metric(
            prom.Gauge,
            "logging_publisher_started",
            "Logging publisher started state",
            ["service_name"],
        )
        self.errors = _metric(
            prom.Counter,
            "logging_kafka_errors_total",
            "Logging publish errors",
            ["event_type", "error_type"],
        )

    def record(self, event_type: str, started: float, error_type: str | None) -> None:
        self.latency.labels(event_type=event_type).observe(time.monotonic() - started)
        status = "success" if error_type is None else "error"
        self.published.labels(event_type=event_type, status=status).inc()
        if error_type is not None:
            self.errors.labels(event_type=event_type, error_type=error_type).inc()


def _metric(kind, name: str, documentation: str, labels: list[str], **kwargs):
    try:
        return kind(name, documentation, labels, **kwargs)
    except ValueError:
        # Already registered (the old module is loaded too): count privately
        # rather than fail the caller.
        return kind(name, documentation, labels, registry=None, **kwargs)


_metrics: _Metrics | None = None
_metrics_lock = threading.Lock()


def _get_metrics() -> _Metrics:
    global _metrics
    if _metrics is None:
        with _metrics_lock:
            if _metrics is None:
                _metrics = _Metrics()

    return _metrics


# What each delivery outcome is called in logging_kafka_errors_total.
_ERROR_TYPES = {
    Delivery.NACKED: "BrokerRefused",
    Delivery.TIMED_OUT: "TimeoutError",
    Delivery.UNAVAILABLE: "BrokerUnavailable",
    Delivery.TOO_LARGE: "PayloadTooLarge",
    Delivery.CLOSED: "PublisherClosed",
}


def events_enabled(enable_events: bool | None) -> bool:
    """The argument if given, else ``$KAFKA_ENABLE_LOGGING_EVENTS`` (default on)."""
    if enable_events is not None:
        return bool(enable_events)
    flag = os.environ.get("KAFKA_ENABLE_LOGGING_EVENTS", "true")

    return flag.strip().lower() not in _FALSE_WORDS


def _tenant(tenant_id: str | None, *, warn: bool) -> Any:
    if tenant_id is not None:
        return tenant_id
    from_env = os.environ.get("TENANT_ID")
    if from_env:
        return from_env
    if warn:
        warnings.warn(
            "tenant_id not given and TENANT_ID not set; using 'default'",
            stacklevel=4,
        )

    return "default"


def _value(member: Any) -> Any:
    return member.value if isinstance(member, enum.Enum) else member


class LoggingEventPublisher:
    """Publishes application, audit and security events through the broker.

    Args:
        bootstrap_servers: accepted for compatibility (default
            ``$KAFKA_BOOTSTRAP_SERVERS``); the broker owns the Kafka connection.
        enable_events: publish at all (default ``$KAFKA_ENABLE_LOGGING_EVENTS``,
            on when unset).
        namespace: the envelopes' ``namespace``.
        source: the envelopes' ``source``.
        timeout_s: the longest an audit or security call waits for its ack.
        service_label: the ``service_name`` label of the started gauge.
    """

    def __init__(
        self,
        bootstrap_servers: str | None = None,
        enable_events: bool | None = None,
        *,
        namespace: str | None = None,
        source: str | None = None,
        timeout_s: float = PUBLISH_TIMEOUT_S,
        service_label: str = DEFAULT_SERVICE_LABEL,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers or os.environ.get(
            "KAFKA_BOOTSTRAP_SERVERS"
        )
        self.enable_events = events_enabled(enable_events)
        self.timeout_s = timeout_s
        self.service_label = service_label
        self._builder = EnvelopeBuilder(namespace=namespace, source=source)
        self._started = False

    @property
    def started(self) -> bool:
        return self._started

    async def start(self) -> None:
        """Start publishing (a no-op when disabled)."""
        self.start_sync()

    def start_sync(self) -> None:
        """``start`` for code without an event loop."""
        if self._started or not self.enable_events:
            return
        self._started = True
        _get_metrics().started.labels(service_name=self.service_label).set(1)

    async def stop(self) -> None:
        """Stop publishing; later calls return False."""
        self.stop_sync()

    def stop_sync(self) -> None:
        """``stop`` for code without an event loop."""
        if not self._started:
            return
        self._started = False
        _get_metrics().started.labels(service_name=self.service_label).set(0)

    async def publish_application_log(
        self,
        service_name: str,
        instance_id: str,
        level: LogLevel | str,
        logger_name: str,
        message: str,
        code: str,
        context: Mapping[str, Any] | None = None,
        correlation_id: str | None = None,
        tenant_id: str | None = None,
    ) -> bool:
        """Queue an application event for the broker; True once queued."""
        return self.publish_application_log_sync(
            service_name,
            instance_id,
            level,
            logger_name,
            message,
            code,
            context,
            correlation_id,
            tenant_id,
        )

    def publish_application_log_sync(
        self,
        service_name: str,
        instance_id: str,
        level: LogLevel | str,
        logger_name: str,
        message: str,
        code: str,
        context: Mapping[str, Any] | None = None,
        correlation_id: str | None = None,
        tenant_id: str | None = None,
    ) -> bool:
        """``publish_application_log`` for code without an event loop."""
        build = self._builder.application
        started = time.monotonic()
        built = self._build(
            "application",
            started,
            build,
            service_name=service_name,
            instance_id=instance_id,
            level=_value(level),
            logger=logger_name,
            message=message,
            code=code,
            context=context,
            tenant_id=_tenant(tenant_id, warn=False),
            correlation_id=correlation_id,
        )
        if built is None:
            return False
        queued = _emitter_module.get_emitter().send(*built)
        error = None if queued else _ERROR_TYPES[Delivery.UNAVAILABLE]
        _get_metrics().record("application", started, error)

        return queued

    async def publish_audit_log(
        self,
        tenant_id: str | None = None,
        action: str | None = None,
        actor: str | None = None,
        resource: str | None = None,
        outcome: Outcome | str | None = None,
        correlation_id: str | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> bool:
        """Publish an audit event; True only once the broker acknowledged it."""
        built, started = self._audit(
            tenant_id, action, actor, resource, outcome, correlation_id, context
        )
        if built is None:
            return False
        delivery = await asyncio.to_thread(self._deliver, built)

        return self._finish("audit", started, delivery)

    def publish_audit_log_sync(
        self,
        tenant_id: str | None = None,
        action: str | None = None,
        actor: str | None = None,
        resource: str | None = None,
        outcome: Outcome | str | None = None,
        correlation_id: str | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> bool:
        """``publish_audit_log`` for code without an event loop."""
        built, started = self._audit(
            tenant_id, action, actor, resource, outcome, correlation_id, context
        )
        if built is None:
            return False

        return self._finish("audit", started, self._deliver(built))

    async def publish_security_log(
        self,
        tenant_id: str | None = None,
        event_type: str | None = None,
        user_id: str | None = None,
        resource: str | None = None,
        decision: Decision | str | None = None,
        correlation_id: str | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> bool:
        """Publish a security event; True only once the broker acknowledged it."""
        built, started = self._security(
            tenant_id, event_type, user_id, resource, decision, correlation_id, context
        )
        if built is None:
            return False
        delivery = await asyncio.to_thread(self._deliver, built)

        return self._finish("security", started, delivery)

    def publish_security_log_sync(
        self,
        tenant_id: str | None = None,
        event_type: str | None = None,
        user_id: str | None = None,
        resource: str | None = None,
        decision: Decision | str | None = None,
        correlation_id: str | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> bool:
        """``publish_security_log`` for code without an event loop."""
        built, started = self._security(
            tenant_id, event_type, user_id, resource, decision, correlation_id, context
        )
        if built is None:
            return False

        return self._finish("security", started, self._deliver(built))

    def _audit(self, tenant_id, action, actor, resource, outcome, correlation, ctx):
        started = time.monotonic()
        built = self._build(
            "audit",
            started,
            self._builder.audit,
            tenant_id=_tenant(tenant_id, warn=True),
            action=action,
            actor=actor,
            resource=resource,
            outcome=_value(outcome),
            context=ctx,
            correlation_id=correlation,
        )

        return built, started

    def _security(self, tenant_id, event_type, user_id, resource, decision, cid, ctx):
        started = time.monotonic()
        built = self._build(
            "security",
            started,
            self._builder.security,
            tenant_id=_tenant(tenant_id, warn=True),
            event_type=event_type,
            user_id=user_id,
            resource=resource,
            decision=_value(decision),
            context=ctx,
            correlation_id=cid,
        )

        return built, started

    def _build(self, label: str, started: float, build, **fields) -> Built | None:
        """Validate and serialize (raising as the old API did), or None to skip."""
        try:
            built = build(**fields)
        except EnvelopeTooLarge:
            _get_metrics().record(label, started, "PayloadTooLarge")
            return None
        if not (self._started and self.enable_events):
            return None

        return built

    def _deliver(self, built: Built) -> Delivery:
        emitter = _emitter_module.get_emitter()

        return emitter.send_and_wait(*built, timeout_s=self.timeout_s)

    def _finish(self, event_type: str, started: float, delivery: Delivery) -> bool:
        error = None if delivery is Delivery.ACKED else _ERROR_TYPES[delivery]
        _get_metrics().record(event_type, started, error)

        return error is None


class LoggingEventPublisherContext:
    """``async with``: a started publisher inside, stopped on the way out."""

    def __init__(
        self, bootstrap_servers: str | None = None, enable_events: bool | None = None
    ) -> None:
        self.publisher = LoggingEventPublisher(
            bootstrap_servers=bootstrap_servers, enable_events=enable_events
        )

    async def __aenter__(self) -> LoggingEventPublisher:
        await self.publisher.start()
        return self.publisher

    async def __aexit__(self, *exc_info: object) -> bool:
        await self.publisher.stop()
        return False


# The shared publisher of the module-level functions. A threading lock, not
# an asyncio one: an asyncio.Lock made at import belongs to the first loop
# that uses it and fails in every later one.
_global_publisher: LoggingEventPublisher | None = None
_global_lock = threading.Lock()


def _get_global_publisher_sync(
    bootstrap_servers: str | None = None, enable_events: bool | None = None
) -> LoggingEventPublisher:
    global _global_publisher
    with _global_lock:
        if _global_publisher is None:
            publisher = LoggingEventPublisher(bootstrap_servers, enable_events)
            publisher.start_sync()
            _global_publisher = publisher

        return _global_publisher


async def _get_global_publisher(
    bootstrap_servers: str | None = None, enable_events: bool | None = None
) -> LoggingEventPublisher:
    """The shared, started publisher; the arguments count on the first call only."""
    return _get_global_publisher_sync(bootstrap_servers, enable_events)


async def publish_application_log(
    service_name: str,
    instance_id: str,
    level: LogLevel | str,
    logger_name: str,
    message: str,
    code: str,
    context: Mapping[str, Any] | None = None,
    correlation_id: str | None = None,
    tenant_id: str | None = None,
    bootstrap_servers: str | None = None,
    enable_events: bool | None = None,
) -> bool:
    """Queue an application event through the shared publisher; True once queued."""
    publisher = _get_global_publisher_sync(bootstrap_servers, enable_events)

    return publisher.publish_application_log_sync(
        service_name=service_name,
        instance_id=instance_id,
        level=level,
        logger_name=logger_name,
        message=message,
        code=code,
        context=context,
        correlation_id=correlation_id,
        tenant_id=tenant_id,
    )


def publish_application_log_sync(
    service_name: str,
    instance_id: str,
    level: LogLevel | str,
    logger_name: str,
    message: str,
    code: str,
    context: Mapping[str, Any] | None = None,
    correlation_id: str | None = None,
    tenant_id: str | None = None,
    bootstrap_servers: str | None = None,
    enable_events: bool | None = None,
) -> bool:
    """``publish_application_log`` for code without an event loop."""
    publisher = _get_global_publisher_sync(bootstrap_servers, enable_events)

    return publisher.publish_application_log_sync(
        service_name=service_name,
        instance_id=instance_id,
        level=level,
        logger_name=logger_name,
        message=message,
        code=code,
        context=context,
        correlation_id=correlation_id,
        tenant_id=tenant_id,
    )


async def publish_audit_log(
    action: str,
    actor: str,
    resource: str,
    outcome: Outcome | str,
    tenant_id: str | None = None,
    correlation_id: str | None = None,
    context: Mapping[str, Any] | None = None,
    bootstrap_servers: str | None = None,
    enable_events: bool | None = None,
) -> bool:
    """Publish an audit event through the shared publisher; True once acked."""
    publisher = _get_global_publisher_sync(bootstrap_servers, enable_events)

    return await publisher.publish_audit_log(
        tenant_id=tenant_id,
        action=action,
        actor=actor,
        resource=resource,
        outcome=outcome,
        correlation_id=correlation_id,
        context=context,
    )


def publish_audit_log_sync(
    action: str,
    actor: str,
    resource: str,
    outcome: Outcome | str,
    tenant_id: str | None = None,
    correlation_id: str | None = None,
    context: Mapping[str, Any] | None = None,
    bootstrap_servers: str | None = None,
    enable_events: bool | None = None,
) -> bool:
    """``publish_audit_log`` for code without an event loop."""
    publisher = _get_global_publisher_sync(bootstrap_servers, enable_events)

    return publisher.publish_audit_log_sync(
        tenant_id=tenant_id,
        action=action,
        actor=actor,
        resource=resource,
        outcome=outcome,
        correlation_id=correlation_id,
        context=context,
    )


async def publish_security_log(
    event_type: str,
    user_id: str,
    resource: str,
    decision: Decision | str,
    tenant_id: str | None = None,
    correlation_id: str | None = None,
    context: Mapping[str, Any] | None = None,
    bootstrap_servers: str | None = None,
    enable_events: bool | None = None,
) -> bool:
    """Publish a security event through the shared publisher; True once acked."""
    publisher = _get_global_publisher_sync(bootstrap_servers, enable_events)

    return await publisher.publish_security_log(
        tenant_id=tenant_id,
        event_type=event_type,
        user_id=user_id,
        resource=resource,
        decision=decision,
        correlation_id=correlation_id,
        context=context,
    )


def publish_security_log_sync(
    event_type: str,
    user_id: str,
    resource: str,
    decision: Decision | str,
    tenant_id: str | None = None,
    correlation_id: str | None = None,
    context: Mapping[str, Any] | None = None,
    bootstrap_servers: str | None = None,
    enable_events: bool | None = None,
) -> bool:
    """``publish_security_log`` for code without an event loop."""
    publisher = _get_global_publisher_sync(bootstrap_servers, enable_events)

    return publisher.publish_security_log_sync(
        tenant_id=tenant_id,
        event_type=event_type,
        user_id=user_id,
        resource=resource,
        decision=decision,
        correlation_id=correlation_id,
        context=context,
    )
