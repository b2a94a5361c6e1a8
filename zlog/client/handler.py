"""The stdlib logging bridge: a ``logging.Handler`` that sends through zlog.

A record becomes an event dict (message with its args applied, level, logger
name, the ``extra=`` fields, ``exc_info``) and goes through the same mapping
as the structlog processor. The handler never raises and never calls
``handleError``: what it cannot send is counted in the emitter's drops.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from zlog.client import emitter as _emitter_module
from zlog.client.emitter import DropReason
from zlog.client.forward import EventForwarder

__all__ = ["ZlogHandler"]

# Attributes every LogRecord has; anything else on a record came from extra=.
_RECORD_ATTRS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys()
    | {"message", "asctime", "taskName"}
)


class ZlogHandler(logging.Handler):
    """Sends log records to the broker; the arguments are ``ZlogProcessor``'s.

    Args:
        level: the handler's threshold, as for any ``logging.Handler``.
    """

    def __init__(
        self,
        level: int | str = logging.NOTSET,
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
    ) -> None:
        super().__init__(level)
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

    def handle(self, record: logging.LogRecord) -> bool:
        # The emitter is thread-safe on its own: skip the handler's lock.
        rv = self.filter(record)
        if isinstance(rv, logging.LogRecord):
            record = rv
        if rv:
            self.emit(record)

        return bool(rv)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.forwarder.forward(self.event_dict(record))
        except Exception:
            _emitter_module.get_emitter().count_drop(DropReason.ERROR)

    def event_dict(self, record: logging.LogRecord) -> dict[str, Any]:
        """The record as a structlog-style event dict."""
        event = {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRS}
        try:
            message = record.getMessage()
        except Exception:
            message = str(record.msg)
        event["event"] = message
        event["level"] = record.levelname
        event["logger"] = record.name
        if record.exc_info:
            event["exc_info"] = record.exc_info

        return event
