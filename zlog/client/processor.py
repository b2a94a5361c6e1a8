"""The structlog processor: forwards each event to the broker, changes nothing.

Place ``ZlogProcessor`` in a structlog chain after the processors that add
what the envelope should carry (``add_log_level``, ``add_logger_name``,
``merge_contextvars``, ``format_exc_info`` or ``dict_tracebacks``) and before
the renderer. It returns the event dict unchanged, so later processors and
the renderer see exactly what they saw without it; with ``drop=True`` it
raises ``structlog.DropEvent`` instead, for chains whose only output is zlog.

It holds no socket: each call asks for the process's emitter, so a logger
cached before a fork sends from the child's own emitter.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any

import structlog

from zlog.client.forward import EventForwarder

__all__ = ["ZlogProcessor"]


class ZlogProcessor:
    """A structlog processor that sends every event through zlog.

    Args:
        service_name: application events' ``service_name`` (default
            ``$ZLOG_SERVICE_NAME``, else the program name).
        instance_id: their ``instance_id`` (default ``"<host>:<pid>"``).
        tenant_id: the tenant of events that name none (default ``$TENANT_ID``).
        namespace: the envelopes' ``namespace``.
        source: the envelopes' ``source``.
        logger_rules: logger-name prefix to event class, longest prefix first.
        default_class: the class of unclassified events (``"application"``).
        redact_keys: context keys whose values are redacted.
        ack: wait (bounded) for the broker's ack of audit and security events.
        drop: raise ``structlog.DropEvent`` after forwarding.
    """

    def __init__(
        self,
        *,
        service_name: str | None = None,
        instance_id: str | None = None,
        tenant_id: str | None = None,
        namespace: str | None = None,
        source: str | None = None,
        logger_rules: Mapping[str, str] | None = None,
        default_class: str = "application",
        redact_keys: Iterable[str] | None = None,
        ack: bool = True,
        drop: bool = False,
    ) -> None:
        self.forwarder = EventForwarder(
            service_name=service_name,
            instance_id=instance_id,
            tenant_id=tenant_id,
            namespace=namespace,
            source=source,
            logger_rules=logger_rules,
            default_class=default_class,
            redact_keys=redact_keys,
            ack=ack,
            _stacklevel=3,
        )
        self.drop = drop

    def __call__(
        self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        self.forwarder.forward(event_dict, logger, method_name)
        if self.drop:
            raise structlog.DropEvent

        return event_dict
