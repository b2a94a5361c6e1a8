"""Envelopes: the JSON documents consumers read from Kafka, built and checked.

An envelope has the fields consumers of the old publisher already read
(``docs/client.md`` lists them, and so does the compatibility brief)::

    event_type, event_id, timestamp, tenant_id, namespace, source,
    correlation_id, causation_id, schema_ref, payload{...}

``EnvelopeBuilder`` turns one event into what the emitter sends: the class,
the serialized envelope, the partition key and the packed Kafka headers. It
validates as the old publisher did; with ``strict=True`` (the compatible API)
a bad field raises ``TypeError`` or ``ValueError``, with ``strict=False`` (the
structlog processor and the logging handler) it raises ``InvalidEvent``, which
those callers count and swallow, and it trims too-deep context with a visible
marker instead of refusing the event.

Context values under sensitive keys are replaced by ``"[REDACTED]"`` at any
depth, inside lists too. Mappings that are not dicts (``MappingProxyType``,
any ``Mapping``), named tuples and dataclass instances are written as dicts,
sets as lists and enum members as their values, so what they hold is checked
too; a key is checked under the name it is written with, so ``str``
subclasses, bytes and enum keys count. A context without sensitive keys or
nested containers is used as it is, not copied.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import os
import random
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from zlog.client.jsonenc import dumps, key_name, named_keys, safe_repr
from zlog.protocol import EventClass, encode_headers

__all__ = [
    "APPLICATION_EVENT_TYPE",
    "AUDIT_EVENT_TYPE",
    "DEFAULT_NAMESPACE",
    "DEFAULT_REDACT_KEYS",
    "DEFAULT_SOURCE",
    "MAX_CONTEXT_BYTES",
    "MAX_CONTEXT_DEPTH",
    "MAX_ENVELOPE_BYTES",
    "REDACTED",
    "SECURITY_EVENT_TYPE",
    "TRUNCATED",
    "Built",
    "EnvelopeBuilder",
    "EnvelopeTooLarge",
    "InvalidEvent",
    "new_uuid4",
    "traceparent",
    "utc_timestamp",
]

APPLICATION_EVENT_TYPE = "omninode.logging.application.v1"
AUDIT_EVENT_TYPE = "omninode.logging.audit.v1"
SECURITY_EVENT_TYPE = "omninode.logging.security.v1"

# The fixed values of the deployment zlog replaces; consumers may filter on
# them, so they stay the defaults ($ZLOG_NAMESPACE and $ZLOG_SOURCE override).
DEFAULT_NAMESPACE = "omninode"
DEFAULT_SOURCE = "omniclaude"

# The old publisher's limits, kept so that what it accepted zlog accepts.
MAX_TENANT_CHARS = 128
MAX_ACTION_CHARS = 256
MAX_EVENT_TYPE_CHARS = 128
MAX_NAME_CHARS = 256
MAX_CONTEXT_DEPTH = 10
# The old publisher set no limit, but a correlation id travels four times
# (envelope, two headers, traceparent): a huge one makes a frame the broker
# must refuse. A UUID is 36 characters, a W3C traceparent 55.
MAX_CORRELATION_ID_CHARS = 256
MAX_CONTEXT_BYTES = 64 * 1024
MAX_ENVELOPE_BYTES = 1024 * 1024

REDACTED = "[REDACTED]"
TRUNCATED = "[TRUNCATED: nested deeper than 10 levels]"

DEFAULT_REDACT_KEYS = frozenset(
    {
        "password",
        "passwd",
        "pwd",
        "secret",
        "api_key",
        "apikey",
        "api-key",
        "token",
        "auth_token",
        "access_token",
        "refresh_token",
        "private_key",
        "credentials",
        "ssn",
        "credit_card",
        "email",
        "auth",
        "authorization",
        "bearer",
        "jwt",
        "session",
        "cookie",
    }
)

# Header sets without a correlation id depend only on class and tenant; the
# cache is cleared when it reaches this size so odd tenants cannot grow it.
_HEADER_CACHE_MAX = 1024

_EVENT_TYPES = {
    EventClass.APPLICATION: APPLICATION_EVENT_TYPE,
    EventClass.AUDIT: AUDIT_EVENT_TYPE,
    EventClass.SECURITY: SECURITY_EVENT_TYPE,
}

# event_id and span ids come from a generator of our own: an application that
# seeds the global one for reproducible runs must not get repeated event ids.
_rng = random.Random()
os.register_at_fork(after_in_child=_rng.seed)

Built = tuple[EventClass, bytes, bytes, bytes]
"""What the emitter sends: class, envelope, partition key, packed headers."""


class InvalidEvent(ValueError):
    """An event the lenient path refuses; ``reason`` is the drop-count label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class EnvelopeTooLarge(InvalidEvent):
    """The serialized envelope is over ``MAX_ENVELOPE_BYTES``."""

    def __init__(self, size: int) -> None:
        super().__init__(
            "too_large", f"envelope is {size} bytes, limit {MAX_ENVELOPE_BYTES}"
        )


_VARIANT_DIGITS = "89ab" * 4


def new_uuid4() -> str:
    """A random (version 4) UUID as a string, faster than ``str(uuid.uuid4())``."""
    h = _rng.randbytes(16).hex()
    variant = _VARIANT_DIGITS[int(h[16], 16)]

    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{variant}{h[17:20]}-{h[20:]}"


_second_cache: tuple[int, str] = (-1, "")


def utc_timestamp() -> str:
    """Now as ISO 8601 in UTC with microseconds, like ``datetime.isoformat``."""
    global _second_cache
    now_ns = time.time_ns()
    second = now_ns // 1_000_000_000
    cached_second, prefix = _second_cache
    if second != cached_second:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _second_cache = (second, prefix)

    return f"{prefix}.{now_ns // 1000 % 1_000_000:06d}+00:00"


def traceparent(correlation_id: str) -> str:
    """A W3C traceparent whose trace id is the correlation id's hex digits."""
    trace_id = correlation_id.replace("-", "")[:32].ljust(32, "0")

    return f"00-{trace_id}-{_rng.getrandbits(64):016x}-01"


def _check_text(
    name: str,
    value: Any,
    max_chars: int,
    *,
    required: bool = False,
    key: bool = False,
) -> None:
    """Raise TypeError or ValueError as the old publisher did for ``name``."""
    if not isinstance(value, str):
        if value is None and not required:
            return
        error = TypeError if key or required else ValueError
        raise error(f"{name} must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise ValueError(f"{name} cannot be empty or whitespace only")
    if len(value) > max_chars:
        raise ValueError(
            f"{name} must be at most {max_chars} characters (got {len(value)})"
        )
    if "\x00" in value:
        raise ValueError(f"{name} cannot contain NUL characters")


def _plain_ok(value: Any, max_chars: int) -> bool:
    """The common case of ``_check_text`` without a call per rule."""
    return value.__class__ is str and len(value) <= max_chars and "\x00" not in value


def _required_ok(value: Any, max_chars: int) -> bool:
    return _plain_ok(value, max_chars) and value != "" and not value.isspace()


# Sensitive-key answers are cached per key string; past this many distinct
# keys the cache stops growing and new keys are checked each time.
_SENSITIVE_CACHE_MAX = 4096

_CONTAINERS = frozenset({dict, list, tuple})

# Values that hold nothing redaction must look into: the common ones are
# skipped with one set lookup, the rest are asked whether they are mappings.
_LEAVES = frozenset(
    {str, int, float, bool, type(None), datetime.datetime, datetime.date, uuid.UUID}
)


class EnvelopeBuilder:
    """Builds envelopes for one configuration (namespace, source, redaction).

    Args:
        namespace: the envelope's ``namespace`` (default ``$ZLOG_NAMESPACE``
            or ``DEFAULT_NAMESPACE``).
        source: the envelope's ``source`` (default ``$ZLOG_SOURCE`` or
            ``DEFAULT_SOURCE``).
        redact_keys: context keys whose values are replaced by ``REDACTED``,
            compared case-insensitively (default ``DEFAULT_REDACT_KEYS``).
        strict: raise TypeError/ValueError on invalid fields (the compatible
            API); when false, raise ``InvalidEvent`` and trim deep context.
    """

    def __init__(
        self,
        *,
        namespace: str | None = None,
        source: str | None = None,
        redact_keys: Iterable[str] | None = None,
        strict: bool = True,
    ) -> None:
        self.namespace = (
            namespace or os.environ.get("ZLOG_NAMESPACE") or (DEFAULT_NAMESPACE)
        )
        self.source = source or os.environ.get("ZLOG_SOURCE") or DEFAULT_SOURCE
        keys = DEFAULT_REDACT_KEYS if redact_keys is None else redact_keys
        self.redact_keys = frozenset(k.lower() for k in keys)
        self.strict = strict
        self._sensitive: dict[str, bool] = {}
        self._headers: dict[tuple[EventClass, str], bytes] = {}

    def application(
        self,
        *,
        service_name: str,
        instance_id: str,
        level: str,
        logger: str,
        message: str,
        code: str,
        context: Mapping[str, Any] | None,
        tenant_id: str,
        correlation_id: str | None = None,
    ) -> Built:
        """An application event, keyed by ``service_name``."""
        if not _plain_ok(service_name, MAX_NAME_CHARS):
            self._check(
                _check_text, "service_name", service_name, MAX_NAME_CHARS, key=True
            )
        if not _required_ok(tenant_id, MAX_TENANT_CHARS):
            self._check_tenant(tenant_id)
        payload = {
            "service_name": service_name,
            "instance_id": instance_id,
            "level": level,
            "logger": logger,
            "message": message,
            "code": code,
            "context": self.clean_context(context),
        }

        return self._build(
            EventClass.APPLICATION, tenant_id, correlation_id, payload, service_name
        )

    def audit(
        self,
        *,
        tenant_id: str,
        action: str,
        actor: Any,
        resource: Any,
        outcome: Any,
        context: Mapping[str, Any] | None,
        correlation_id: str | None = None,
    ) -> Built:
        """An audit event, keyed by ``tenant_id``."""
        self._check_tenant(tenant_id)
        self._check(_check_text, "action", action, MAX_ACTION_CHARS, required=True)
        if resource is not None:
            self._check(_check_text, "resource", resource, MAX_NAME_CHARS)
        timestamp = utc_timestamp()
        payload = {
            "tenant_id": tenant_id,
            "action": action,
            "actor": self._clean_field(actor),
            "resource": resource,
            "timestamp": timestamp,
            "outcome": self._clean_field(outcome),
            "context": self.clean_context(context),
        }

        return self._build(
            EventClass.AUDIT, tenant_id, correlation_id, payload, tenant_id, timestamp
        )

    def security(
        self,
        *,
        tenant_id: str,
        event_type: str,
        user_id: Any,
        resource: Any,
        decision: Any,
        context: Mapping[str, Any] | None,
        correlation_id: str | None = None,
    ) -> Built:
        """A security event, keyed by ``tenant_id``."""
        self._check_tenant(tenant_id)
        self._check(
            _check_text, "event_type", event_type, MAX_EVENT_TYPE_CHARS, required=True
        )
        if resource is not None:
            self._check(_check_text, "resource", resource, MAX_NAME_CHARS)
        timestamp = utc_timestamp()
        payload = {
            "tenant_id": tenant_id,
            "event_type": event_type,
            "user_id": self._clean_field(user_id),
            "resource": resource,
            "decision": self._clean_field(decision),
            "timestamp": timestamp,
            "context": self.clean_context(context),
        }

        return self._build(
            EventClass.SECURITY,
            tenant_id,
            correlation_id,
            payload,
            tenant_id,
            timestamp,
        )

    def clean_context(self, context: Mapping[str, Any] | None) -> Any:
        """The context with sensitive values redacted and depth checked.

        The context itself is returned, uncopied, when nothing in it changes.
        """
        if not context:
            return {}
        if context.__class__ is dict:
            return self._clean_dict(context, 0)
        if not isinstance(context, dict):
            try:
                context = dict(context)
            except Exception as exc:
                self._fail("invalid", f"context is not a mapping: {exc}")

        return self._clean(context, 0)

    def _clean(self, value: Any, depth: int) -> Any:
        if value.__class__ not in _CONTAINERS:
            if isinstance(value, enum.Enum):
                # Written as its value, which may hold a secret in turn.
                inner = value.value
                if inner.__class__ in _LEAVES:
                    return value
                cleaned = self._clean(inner, depth)
                return value if cleaned is inner else cleaned
            walkable = _walkable(value)
            if walkable is None:
                return value
            value = walkable
        if depth > MAX_CONTEXT_DEPTH:
            if self.strict:
                raise ValueError(
                    f"context nesting exceeds {MAX_CONTEXT_DEPTH} levels "
                    "(or holds a circular reference)"
                )
            return TRUNCATED
        if isinstance(value, dict):
            return self._clean_dict(value, depth)

        return self._clean_list(value, depth)

    def _clean_dict(self, value: dict, depth: int) -> dict:
        sensitive = self._sensitive
        copy = None
        odd_keys = False
        for key, item in value.items():
            new = item
            if key.__class__ is str:
                hit = sensitive.get(key)
                if hit is None:
                    hit = self._learn_key(key)
            else:
                odd_keys = True
                hit = key_name(key).lower() in self.redact_keys
            if hit:
                new = REDACTED
            elif item.__class__ not in _LEAVES:
                new = self._clean(item, depth + 1)
            if new is not item:
                if copy is None:
                    copy = dict(value)
                copy[key] = new
        if odd_keys:
            # Written by name, so two keys with one name would keep one value.
            return named_keys(value if copy is None else copy)

        return value if copy is None else copy

    def _clean_field(self, value: Any) -> Any:
        """A field typed as text (actor, outcome, ...) that is not text is
        written as given, so it is redacted like the context."""
        if value.__class__ in _LEAVES:
            return value

        return self._clean(value, 0)

    def _learn_key(self, key: str) -> bool:
        hit = key.lower() in self.redact_keys
        if len(self._sensitive) < _SENSITIVE_CACHE_MAX:
            self._sensitive[key] = hit

        return hit

    def _clean_list(self, value: list | tuple, depth: int) -> list | tuple:
        copy = None
        for index, item in enumerate(value):
            if item.__class__ not in _LEAVES:
                new = self._clean(item, depth + 1)
                if new is not item:
                    if copy is None:
                        copy = list(value)
                    copy[index] = new

        return value if copy is None else copy

    def _check(self, check, *args, **kwargs) -> None:
        if self.strict:
            check(*args, **kwargs)
            return
        try:
            check(*args, **kwargs)
        except (TypeError, ValueError) as exc:
            raise InvalidEvent("invalid", str(exc)) from None

    def _check_tenant(self, tenant_id: Any) -> None:
        self._check(
            _check_text, "tenant_id", tenant_id, MAX_TENANT_CHARS, required=True
        )

    def _fail(self, reason: str, detail: str) -> None:
        if self.strict:
            raise ValueError(detail)
        raise InvalidEvent(reason, detail)

    def _build(
        self,
        event_class: EventClass,
        tenant_id: str,
        correlation_id: str | None,
        payload: dict,
        key: str,
        timestamp: str | None = None,
    ) -> Built:
        event_type = _EVENT_TYPES[event_class]
        if correlation_id is not None:
            if not isinstance(correlation_id, str):
                correlation_id = str(correlation_id)
            if len(correlation_id) > MAX_CORRELATION_ID_CHARS:
                self._fail(
                    "invalid",
                    f"correlation_id must be at most {MAX_CORRELATION_ID_CHARS} "
                    f"characters (got {len(correlation_id)})",
                )
        given_correlation = correlation_id
        correlation_id = correlation_id or new_uuid4()
        envelope = {
            "event_type": event_type,
            "event_id": new_uuid4(),
            "timestamp": timestamp or utc_timestamp(),
            "tenant_id": tenant_id,
            "namespace": self.namespace,
            "source": self.source,
            "correlation_id": correlation_id,
            "causation_id": correlation_id,
            "schema_ref": _schema_ref(event_type),
            "payload": payload,
        }
        value = dumps(envelope)
        self._check_size(value, payload)

        return (
            event_class,
            value,
            _utf8(key),
            self.headers(event_class, tenant_id, given_correlation),
        )

    def _check_size(self, value: bytes, payload: dict) -> None:
        if len(value) <= MAX_CONTEXT_BYTES:
            return
        # Only a large envelope can hide a large context: measure it alone.
        context_bytes = len(dumps(payload["context"]))
        if context_bytes > MAX_CONTEXT_BYTES:
            self._fail(
                "too_large",
                f"context is {context_bytes} bytes serialized, "
                f"limit {MAX_CONTEXT_BYTES}",
            )
        if len(value) > MAX_ENVELOPE_BYTES:
            raise EnvelopeTooLarge(len(value))

    def headers(
        self, event_class: EventClass, tenant_id: str, correlation_id: str | None
    ) -> bytes:
        """Packed Kafka headers; without a correlation id they come from a cache."""
        if correlation_id:
            return encode_headers(
                [
                    *self._base_headers(event_class, tenant_id),
                    ("x-traceparent", traceparent(correlation_id).encode()),
                    ("x-correlation-id", _utf8(correlation_id)),
                    ("x-causation-id", _utf8(correlation_id)),
                ]
            )
        cached = self._headers.get((event_class, tenant_id))
        if cached is None:
            if len(self._headers) >= _HEADER_CACHE_MAX:
                self._headers.clear()
            cached = encode_headers(self._base_headers(event_class, tenant_id))
            self._headers[(event_class, tenant_id)] = cached

        return cached

    def _base_headers(
        self, event_class: EventClass, tenant_id: str
    ) -> list[tuple[str, bytes]]:
        schema_ref = _schema_ref(_EVENT_TYPES[event_class])

        return [("x-tenant", _utf8(tenant_id)), ("x-schema-hash", schema_ref.encode())]


def _walkable(value: Any) -> dict | list | tuple | None:
    """``value`` as the dict, list or tuple redaction walks, or None when it
    holds nothing to redact.

    A subclass of dict, list or tuple is walked as it is. A named tuple or a
    mapping that is not a dict would be written as its ``repr``, secrets and
    all, so it becomes a dict; a dataclass becomes the dict of its fields,
    and a set the list of what it holds (a frozen dataclass, say). Reading a
    field or item may run the application's code, so a failure writes a
    stand-in.
    """
    if isinstance(value, tuple) and hasattr(type(value), "_fields"):
        return dict(zip(type(value)._fields, value, strict=False))
    if isinstance(value, dict | list | tuple):
        return value
    if isinstance(value, set | frozenset):
        return list(value)
    if isinstance(value, Mapping):
        try:
            return dict(value)
        except Exception:
            return {"<unreadable>": safe_repr(type(value))}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        try:
            return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        except Exception:
            return {"<unreadable>": safe_repr(type(value))}

    return None


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "backslashreplace")


_SCHEMA_REFS = {t: f"registry://{t.replace('.', '/')}" for t in _EVENT_TYPES.values()}


def _schema_ref(event_type: str) -> str:
    return _SCHEMA_REFS[event_type]
