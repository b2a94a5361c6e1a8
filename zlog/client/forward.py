"""From an event dict to a sent envelope: what the processor and handler share.

An *event* here is a dict in structlog's vocabulary: ``event`` is the
message, ``level`` and ``logger`` name its origin, every other key is
context. ``EventForwarder`` classifies it, maps it into an envelope and hands
it to the process's emitter. It never raises: an event it cannot send is
counted by reason in the emitter's drop counts.

Mapping (other engineers build on it; keep it stable):

- class: the key ``event_class`` (``"application"``, ``"audit"`` or
  ``"security"``), else the first logger-name rule that matches, else the
  default class;
- application payload: ``message`` = ``event``, ``level`` upper-cased with
  ``WARNING`` written ``WARN``, ``logger`` = ``logger`` (or the name of the
  wrapped stdlib logger), ``service_name`` and ``instance_id`` from the
  forwarder, ``code`` = ``code`` or ``""``, ``context`` = every other key
  except ``event_class``, ``timestamp``, ``level``, ``logger``;
- audit payload: ``action``, ``actor``, ``resource``, ``outcome`` and
  ``tenant_id`` from the keys of those names; security payload:
  ``event_type``, ``user_id``, ``resource``, ``decision``, ``tenant_id``
  likewise; in both, every other key except ``event_class``, ``timestamp``,
  ``level`` and ``logger`` goes to ``context`` (so the message stays there as
  ``event``);
- ``exc_info`` is rendered as a traceback string under ``exception``;
  ``exception`` already rendered by ``format_exc_info`` or
  ``dict_tracebacks`` is kept as it is;
- ``tenant_id`` and ``correlation_id`` keys, when present, also set the
  envelope's tenant and correlation id (for application events they stay in
  the context too).
"""

from __future__ import annotations

import os
import socket
import sys
import traceback
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

from zlog.client import emitter as _emitter_module
from zlog.client.emitter import DropReason
from zlog.client.envelope import EnvelopeBuilder, InvalidEvent
from zlog.client.jsonenc import safe_repr

__all__ = ["EVENT_CLASSES", "EventForwarder", "normalize_level"]

EVENT_CLASSES = ("application", "audit", "security")

_NOT_CONTEXT = frozenset(
    {"event_class", "timestamp", "level", "logger", "_record", "_from_structlog"}
)
_APPLICATION_FIELDS = _NOT_CONTEXT | {"event", "code", "exc_info"}
_AUDIT_FIELDS = _NOT_CONTEXT | {
    "action",
    "actor",
    "resource",
    "outcome",
    "tenant_id",
    "exc_info",
}
_SECURITY_FIELDS = _NOT_CONTEXT | {
    "event_type",
    "user_id",
    "resource",
    "decision",
    "tenant_id",
    "exc_info",
}

_LEVELS = {
    "debug": "DEBUG",
    "info": "INFO",
    "warn": "WARN",
    "warning": "WARN",
    "error": "ERROR",
    "exception": "ERROR",
    "critical": "CRITICAL",
    "fatal": "CRITICAL",
    "msg": "INFO",
}


def normalize_level(level: Any) -> str:
    """A level as the envelope writes it: upper case, ``WARNING`` as ``WARN``."""
    known = _LEVELS.get(level) if level.__class__ is str else None
    if known is not None:
        return known
    text = str(level).upper()

    return "WARN" if text == "WARNING" else text


def _program_name() -> str:
    argv0 = sys.argv[0] if sys.argv and sys.argv[0] else ""

    return os.path.basename(argv0) or "python"


def _text(value: Any) -> str:
    if value is None:
        return ""

    return value if isinstance(value, str) else safe_repr(value)


def _enum_text(value: Any) -> Any:
    """Enums (Outcome, Decision, ...) are written by value."""
    return getattr(value, "value", value)


def render_exc_info(exc_info: Any) -> str | None:
    """A traceback string for structlog's or logging's ``exc_info`` value."""
    if exc_info is True:
        exc_info = sys.exc_info()
    if isinstance(exc_info, BaseException):
        exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
    if not isinstance(exc_info, tuple) or len(exc_info) != 3 or exc_info[0] is None:
        return None

    return "".join(traceback.format_exception(*exc_info))


class EventForwarder:
    """Maps event dicts into envelopes and sends them; never raises.

    Args:
        service_name: the application events' ``service_name`` (default
            ``$ZLOG_SERVICE_NAME``, else the program's name).
        instance_id: their ``instance_id`` (default ``"<host>:<pid>"``).
        tenant_id: the tenant when an event names none (default
            ``$TENANT_ID``, else ``"default"`` with a warning).
        namespace: the envelopes' ``namespace``.
        source: the envelopes' ``source``.
        logger_rules: logger-name prefix to class, e.g.
            ``{"myapp.audit": "audit"}``; the longest matching prefix wins.
        default_class: the class of an event no key or rule classifies.
        redact_keys: context keys to redact (default ``DEFAULT_REDACT_KEYS``).
        ack: wait for the broker's acknowledgment of audit and security
            events (bounded by the emitter's ``ack_timeout_s``).
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
        _stacklevel: int = 2,
    ) -> None:
        self.service_name = (
            service_name or os.environ.get("ZLOG_SERVICE_NAME") or _program_name()
        )
        self.instance_id = instance_id
        self.tenant_id = tenant_id or os.environ.get("TENANT_ID") or ""
        if not self.tenant_id:
            warnings.warn(
                "no tenant_id given and TENANT_ID is not set; events use 'default'",
                stacklevel=_stacklevel + 1,
            )
            self.tenant_id = "default"
        self.default_class = self._checked_class(default_class, _stacklevel)
        self.rules = self._checked_rules(logger_rules or {}, _stacklevel)
        self.ack = ack
        self.builder = EnvelopeBuilder(
            namespace=namespace, source=source, redact_keys=redact_keys, strict=False
        )
        self._class_by_logger: dict[str, str] = {}
        self._host = socket.gethostname()
        self._instance_for: tuple[int, str] = (-1, "")

    def _checked_class(self, name: str, stacklevel: int) -> str:
        if name in EVENT_CLASSES:
            return name
        warnings.warn(
            f"event class {name!r} is not one of {EVENT_CLASSES}; using application",
            stacklevel=stacklevel + 2,
        )
        return "application"

    def _checked_rules(
        self, rules: Mapping[str, str], stacklevel: int
    ) -> list[tuple[str, str]]:
        checked = [
            (prefix, self._checked_class(name, stacklevel + 1))
            for prefix, name in rules.items()
        ]

        return sorted(checked, key=lambda rule: len(rule[0]), reverse=True)

    def forward(
        self, event: Mapping[str, Any], logger: Any = None, method_name: str = "info"
    ) -> bool:
        """Send one event; True when it was queued (or acknowledged).

        ``method_name`` gives the level when the event has no ``level`` key.
        """
        emitter = _emitter_module.get_emitter()
        try:
            built, wants_ack = self._build(event, logger, method_name, emitter.pid)
        except InvalidEvent as exc:
            emitter.count_drop(exc.reason)
            return False
        except Exception:
            emitter.count_drop(DropReason.ERROR)
            return False

        return emitter.send(*built, wants_ack=wants_ack)

    def classify(self, event: Mapping[str, Any], logger_name: str) -> str:
        """The class of ``event``: its ``event_class`` key, a rule, or the default."""
        named = event.get("event_class")
        if named in EVENT_CLASSES:
            return named
        cached = self._class_by_logger.get(logger_name)
        if cached is None:
            cached = self._match_rules(logger_name)
            if len(self._class_by_logger) < 4096:
                self._class_by_logger[logger_name] = cached

        return cached

    def _match_rules(self, logger_name: str) -> str:
        for prefix, name in self.rules:
            if logger_name == prefix or logger_name.startswith(prefix + "."):
                return name

        return self.default_class

    def _logger_name(self, event: Mapping[str, Any], logger: Any) -> str:
        name = event.get("logger")
        if name is None:
            name = getattr(logger, "name", None)

        return name if isinstance(name, str) else _text(name)

    def _build(self, event: Mapping[str, Any], logger: Any, method: str, pid: int):
        logger_name = self._logger_name(event, logger)
        event_class = self.classify(event, logger_name)
        if event_class == "application":
            level = event.get("level") or method
            return self._application(event, logger_name, level, pid), False
        if event_class == "audit":
            return self._audit(event), self.ack

        return self._security(event), self.ack

    def _context(self, event: Mapping[str, Any], skip: frozenset) -> dict:
        context = {k: v for k, v in event.items() if k not in skip}
        exc_info = event.get("exc_info")
        if exc_info and "exception" not in context:
            rendered = render_exc_info(exc_info)
            if rendered is not None:
                context["exception"] = rendered

        return context

    def _instance_id(self, pid: int) -> str:
        if self.instance_id:
            return self.instance_id
        cached_pid, cached = self._instance_for
        if cached_pid != pid:
            cached = f"{self._host}:{pid}"
            self._instance_for = (pid, cached)

        return cached

    def _application(
        self, event: Mapping[str, Any], logger_name: str, level: Any, pid: int
    ):
        message = event.get("event", "")
        return self.builder.application(
            service_name=self.service_name,
            instance_id=self._instance_id(pid),
            level=normalize_level(level),
            logger=logger_name,
            message=message if message.__class__ is str else _text(message),
            code=_text(event.get("code")),
            context=self._context(event, _APPLICATION_FIELDS),
            tenant_id=event.get("tenant_id") or self.tenant_id,
            correlation_id=event.get("correlation_id"),
        )

    def _audit(self, event: Mapping[str, Any]):
        return self.builder.audit(
            tenant_id=event.get("tenant_id") or self.tenant_id,
            action=event.get("action"),
            actor=_text(event.get("actor")),
            resource=_text(event.get("resource")),
            outcome=_text(_enum_text(event.get("outcome"))),
            context=self._context(event, _AUDIT_FIELDS),
            correlation_id=event.get("correlation_id"),
        )

    def _security(self, event: Mapping[str, Any]):
        return self.builder.security(
            tenant_id=event.get("tenant_id") or self.tenant_id,
            event_type=event.get("event_type"),
            user_id=_text(event.get("user_id")),
            resource=_text(event.get("resource")),
            decision=_text(_enum_text(event.get("decision"))),
            context=self._context(event, _SECURITY_FIELDS),
            correlation_id=event.get("correlation_id"),
        )
