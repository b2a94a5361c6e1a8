"""zlog: ship Python logs, audit and security events to Kafka through one broker.

The public surface for application code; ``docs/client.md`` explains it.
"""

from __future__ import annotations

from zlog.client.compat import (
    Decision,
    LoggingEventPublisher,
    LoggingEventPublisherContext,
    LogLevel,
    Outcome,
    _get_global_publisher,
    _global_publisher,
    publish_application_log,
    publish_application_log_sync,
    publish_audit_log,
    publish_audit_log_sync,
    publish_security_log,
    publish_security_log_sync,
)
from zlog.client.emitter import (
    Delivery,
    DropReason,
    Emitter,
    EmitterStats,
    close,
    configure,
    flush,
    get_emitter,
    stats,
)
from zlog.client.handler import ZlogHandler
from zlog.client.processor import ZlogProcessor

__all__ = [
    "Decision",
    "Delivery",
    "DropReason",
    "Emitter",
    "EmitterStats",
    "LogLevel",
    "LoggingEventPublisher",
    "LoggingEventPublisherContext",
    "Outcome",
    "ZlogHandler",
    "ZlogProcessor",
    "_get_global_publisher",
    "_global_publisher",
    "close",
    "configure",
    "flush",
    "get_emitter",
    "publish_application_log",
    "publish_application_log_sync",
    "publish_audit_log",
    "publish_audit_log_sync",
    "publish_security_log",
    "publish_security_log_sync",
    "stats",
]
