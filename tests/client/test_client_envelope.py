"""Envelopes: fields, headers, partition keys, validation and redaction."""

from __future__ import annotations

import collections
import dataclasses
import enum
import json
import re
import types
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zlog.client.envelope import (
    MAX_CONTEXT_DEPTH,
    MAX_CORRELATION_ID_CHARS,
    REDACTED,
    TRUNCATED,
    EnvelopeBuilder,
    EnvelopeTooLarge,
    InvalidEvent,
    new_uuid4,
    utc_timestamp,
)
from zlog.protocol import EventClass, decode_headers

ENVELOPE_FIELDS = [
    "event_type",
    "event_id",
    "timestamp",
    "tenant_id",
    "namespace",
    "source",
    "correlation_id",
    "causation_id",
    "schema_ref",
    "payload",
]


def application(builder=None, **overrides):
    fields = {
        "service_name": "svc",
        "instance_id": "host:1",
        "level": "INFO",
        "logger": "app.db",
        "message": "hi",
        "code": "C1",
        "context": {"user": "bob"},
        "tenant_id": "t1",
    } | overrides

    return (builder or EnvelopeBuilder()).application(**fields)


def audit(builder=None, **overrides):
    fields = {
        "tenant_id": "t1",
        "action": "login",
        "actor": "bob",
        "resource": "app",
        "outcome": "success",
        "context": None,
    } | overrides

    return (builder or EnvelopeBuilder()).audit(**fields)


def security(builder=None, **overrides):
    fields = {
        "tenant_id": "t1",
        "event_type": "authz",
        "user_id": "bob",
        "resource": "doc",
        "decision": "deny",
        "context": None,
    } | overrides

    return (builder or EnvelopeBuilder()).security(**fields)


def test_application_envelope_has_the_compatible_fields():
    """Fields, order, types and payload match what consumers read."""
    event_class, value, key, _ = application()
    doc = json.loads(value)

    assert event_class is EventClass.APPLICATION
    assert list(doc) == ENVELOPE_FIELDS
    assert doc["event_type"] == "omninode.logging.application.v1"
    assert uuid.UUID(doc["event_id"]).version == 4
    assert doc["timestamp"].endswith("+00:00")
    assert doc["causation_id"] == doc["correlation_id"]
    assert doc["schema_ref"] == "registry://omninode/logging/application/v1"
    assert list(doc["payload"]) == [
        "service_name",
        "instance_id",
        "level",
        "logger",
        "message",
        "code",
        "context",
    ]
    assert key == b"svc"


def test_audit_and_security_are_keyed_by_tenant():
    """Audit and security envelopes use the tenant id as partition key."""
    audit_class, audit_value, audit_key, _ = audit()
    security_class, security_value, security_key, _ = security()

    assert (audit_class, audit_key) == (EventClass.AUDIT, b"t1")
    assert (security_class, security_key) == (EventClass.SECURITY, b"t1")
    audit_payload = json.loads(audit_value)["payload"]
    assert list(audit_payload) == [
        "tenant_id",
        "action",
        "actor",
        "resource",
        "timestamp",
        "outcome",
        "context",
    ]
    security_payload = json.loads(security_value)["payload"]
    assert security_payload["decision"] == "deny"
    assert security_payload["timestamp"] == json.loads(security_value)["timestamp"]


def test_headers_without_correlation_id():
    """Tenant and schema headers only, when no correlation id was given."""
    headers = dict(decode_headers(application()[3]))

    assert headers == {
        "x-tenant": b"t1",
        "x-schema-hash": b"registry://omninode/logging/application/v1",
    }


def test_headers_with_correlation_id_carry_a_traceparent():
    """A given correlation id adds correlation, causation and traceparent headers."""
    cid = "0af76519-16cd-43dd-8448-eb211c80319c"
    headers = dict(decode_headers(audit(correlation_id=cid)[3]))

    assert headers["x-correlation-id"] == cid.encode()
    assert headers["x-causation-id"] == cid.encode()
    traceparent = headers["x-traceparent"].decode()
    assert re.fullmatch(
        r"00-0af7651916cd43dd8448eb211c80319c-[0-9a-f]{16}-01", traceparent
    )


def test_short_correlation_id_is_padded_in_traceparent():
    """A short correlation id is padded with zeros to a 32-digit trace id."""
    headers = dict(decode_headers(audit(correlation_id="abc-123")[3]))

    assert headers["x-traceparent"].decode().split("-")[1] == "abc123".ljust(32, "0")


def test_namespace_and_source_are_configurable(monkeypatch):
    """Arguments, then environment, set namespace and source."""
    monkeypatch.setenv("ZLOG_SOURCE", "from-env")
    doc = json.loads(application(EnvelopeBuilder(namespace="ns"))[1])

    assert (doc["namespace"], doc["source"]) == ("ns", "from-env")


def test_redaction_at_any_depth_and_inside_lists():
    """Sensitive keys are redacted in nested dicts and in lists of dicts."""
    context = {
        "Password": "p",
        "user": {"api_key": "k", "name": "bob"},
        "items": [{"token": "t", "id": 1}, [{"Cookie": "c"}]],
    }
    doc = json.loads(application(context=context)[1])

    assert doc["payload"]["context"] == {
        "Password": REDACTED,
        "user": {"api_key": REDACTED, "name": "bob"},
        "items": [{"token": REDACTED, "id": 1}, [{"Cookie": REDACTED}]],
    }
    assert context["Password"] == "p"


@dataclasses.dataclass
class Login:
    user: str
    password: str


class Field(enum.Enum):
    TOKEN = "token"


class Name(str):
    pass


Row = collections.namedtuple("Row", "user token")


def test_redaction_reaches_mappings_named_tuples_and_dataclasses():
    """Secrets in a MappingProxyType, a UserDict, a named tuple or a
    dataclass, alone or in a list, are redacted; each is written as a dict."""
    context = {
        "login": Login("bob", "p"),
        "settings": types.MappingProxyType({"secret": "s", "port": 1}),
        "user_dict": collections.UserDict(jwt="j"),
        "row": Row("ann", "t"),
        "history": [Login("eve", "q")],
    }
    doc = json.loads(application(context=context)[1])

    assert doc["payload"]["context"] == {
        "login": {"user": "bob", "password": REDACTED},
        "settings": {"secret": REDACTED, "port": 1},
        "user_dict": {"jwt": REDACTED},
        "row": {"user": "ann", "token": REDACTED},
        "history": [{"user": "eve", "password": REDACTED}],
    }


@dataclasses.dataclass(frozen=True)
class Key:
    user: str
    token: str


# An enum whose member's value is a dict, as configuration presets are.
Preset = enum.Enum("Preset", {"PROD": {"host": "db", "password": "p"}})


def test_redaction_reaches_sets_and_enum_values():
    """A dataclass in a set and an enum written as a dict value are redacted."""
    context = {"keys": {Key("bob", "t")}, "preset": Preset.PROD}
    doc = json.loads(application(context=context)[1])

    assert doc["payload"]["context"] == {
        "keys": [{"user": "bob", "token": REDACTED}],
        "preset": {"host": "db", "password": REDACTED},
    }


def test_free_audit_and_security_fields_are_redacted_when_not_text():
    """actor, outcome, user_id and decision given as mappings are redacted
    like the context; text passes as it is."""
    audit_doc = json.loads(
        audit(actor={"user": "bob", "password": "p"}, outcome="success")[1]
    )
    security_doc = json.loads(security(user_id={"token": "t"}, decision="deny")[1])

    assert audit_doc["payload"]["actor"] == {"user": "bob", "password": REDACTED}
    assert audit_doc["payload"]["outcome"] == "success"
    assert security_doc["payload"]["user_id"] == {"token": REDACTED}
    assert security_doc["payload"]["decision"] == "deny"


def test_redaction_checks_keys_by_the_name_they_are_written_under():
    """A str-subclass key and an enum key whose value is sensitive are
    redacted."""
    context = {Name("Password"): "p", Field.TOKEN: "t", "user": "bob"}
    doc = json.loads(application(context=context)[1])

    assert doc["payload"]["context"] == {
        "Password": REDACTED,
        "token": REDACTED,
        "user": "bob",
    }


def test_context_keys_with_one_name_keep_both_values():
    """An int key and a str key that print alike are both written."""
    context = {"codes": {200: "int", "200": "str"}}
    doc = json.loads(application(context=context)[1])

    assert doc["payload"]["context"] == {"codes": {"200": "int", "200 (str)": "str"}}


SECRET = "s3cr3t-value"

wrappers = st.sampled_from(
    [
        lambda d: d,
        types.MappingProxyType,
        lambda d: [d],
        lambda d: (d,),
        lambda d: Login(d, "p"),
        lambda d: Row(d, "t"),
        collections.UserDict,
    ]
)


@st.composite
def hiding_places(draw):
    """A context, at most a few levels deep, with SECRET under a sensitive key."""
    key = draw(st.sampled_from(["password", "API_KEY", "Token", Name("jwt")]))
    value = {key: SECRET, "other": draw(st.integers())}
    for _ in range(draw(st.integers(0, 4))):
        wrapped = draw(wrappers)(value)
        value = {draw(st.sampled_from(["a", "b", 1, uuid.UUID(int=7)])): wrapped}
    return value


@given(hiding_places())
def test_a_secret_under_a_sensitive_key_never_reaches_the_envelope(context):
    """Whatever mapping, named tuple, dataclass or list hides it, the secret
    is redacted."""
    for build in (EnvelopeBuilder(), EnvelopeBuilder(strict=False)):
        envelope = application(build, context=context)[1]

        assert SECRET.encode() not in envelope


def test_redaction_keys_are_configurable():
    """A custom key list replaces the default one."""
    builder = EnvelopeBuilder(redact_keys=["ssn_hash"])
    doc = json.loads(application(builder, context={"SSN_HASH": 1, "password": 2})[1])

    assert doc["payload"]["context"] == {"SSN_HASH": REDACTED, "password": 2}


def nested(depth: int) -> dict:
    value: dict = {}
    for _ in range(depth):
        value = {"x": value}

    return value


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        pytest.param({"tenant_id": 5}, TypeError, id="tenant-not-str"),
        pytest.param({"tenant_id": "  "}, ValueError, id="tenant-blank"),
        pytest.param({"tenant_id": "t" * 129}, ValueError, id="tenant-too-long"),
        pytest.param({"tenant_id": "a\x00b"}, ValueError, id="tenant-nul"),
        pytest.param({"service_name": 7}, TypeError, id="service-not-str"),
        pytest.param({"service_name": "s" * 257}, ValueError, id="service-too-long"),
        pytest.param({"context": nested(MAX_CONTEXT_DEPTH + 2)}, ValueError, id="deep"),
        pytest.param({"context": {"x": "y" * 70_000}}, ValueError, id="big-context"),
    ],
)
def test_strict_validation_raises_like_the_old_api(fields, error):
    """Invalid application fields raise TypeError or ValueError."""
    with pytest.raises(error):
        application(**fields)


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"action": ""}, id="action-empty"),
        pytest.param({"action": "a" * 257}, id="action-too-long"),
        pytest.param({"resource": "r\x00"}, id="resource-nul"),
    ],
)
def test_strict_audit_validation(fields):
    """Invalid audit fields raise ValueError."""
    with pytest.raises(ValueError):
        audit(**fields)


def test_security_event_type_is_limited_to_128():
    """A security event type over 128 characters is refused."""
    with pytest.raises(ValueError):
        security(event_type="e" * 129)


def test_circular_context_raises_in_strict_mode():
    """A context that contains itself is refused."""
    context: dict = {}
    context["me"] = context
    with pytest.raises(ValueError):
        application(context=context)


def test_lenient_mode_truncates_deep_context_with_a_marker():
    """The processor path keeps the event and marks where nesting was cut."""
    builder = EnvelopeBuilder(strict=False)
    doc = json.loads(application(builder, context=nested(MAX_CONTEXT_DEPTH + 3))[1])

    assert TRUNCATED in json.dumps(doc)


def test_lenient_mode_raises_invalid_event_with_a_reason():
    """The processor path gets InvalidEvent, which it counts."""
    builder = EnvelopeBuilder(strict=False)
    with pytest.raises(InvalidEvent) as info:
        audit(builder, action=None)

    assert info.value.reason == "invalid"


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(application, id="application"),
        pytest.param(audit, id="audit"),
        pytest.param(security, id="security"),
    ],
)
def test_correlation_id_over_the_limit_raises_value_error_naming_it(build):
    """A correlation id over 256 characters is refused before any envelope.

    It travels in the envelope and three headers, so a long one makes a frame
    larger than the broker takes.
    """
    too_long = "c" * (MAX_CORRELATION_ID_CHARS + 1)
    with pytest.raises(ValueError, match="correlation_id must be at most 256"):
        build(correlation_id=too_long)


def test_correlation_id_at_the_limit_is_kept_in_envelope_and_headers():
    """A correlation id of exactly 256 characters passes unchanged."""
    cid = "c" * MAX_CORRELATION_ID_CHARS
    _, value, _, headers = audit(correlation_id=cid)

    assert json.loads(value)["correlation_id"] == cid
    assert dict(decode_headers(headers))["x-correlation-id"] == cid.encode()


def test_lenient_mode_refuses_a_long_correlation_id_as_invalid():
    """The processor path gets InvalidEvent ``invalid`` naming the field."""
    builder = EnvelopeBuilder(strict=False)
    with pytest.raises(InvalidEvent, match="correlation_id") as info:
        application(builder, correlation_id="c" * 300_000)

    assert info.value.reason == "invalid"


def test_envelope_over_one_mib_is_refused():
    """A message that makes the envelope exceed 1 MiB raises EnvelopeTooLarge."""
    with pytest.raises(EnvelopeTooLarge):
        application(message="m" * (1024 * 1024))


def test_uuid_and_timestamp_helpers():
    """Event ids are version-4 UUIDs, timestamps ISO 8601 in UTC."""
    ids = {new_uuid4() for _ in range(1000)}

    assert len(ids) == 1000
    assert all(
        uuid.UUID(i).version == 4 and uuid.UUID(i).variant == uuid.RFC_4122 for i in ids
    )
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00", utc_timestamp()
    )
