"""The wire format: round trips, refusals, and a decoder that never raises."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zlog import protocol
from zlog.protocol import (
    HEAD,
    DropReport,
    Event,
    EventClass,
    FrameError,
    Kind,
    StatusRequest,
)

ENVELOPE = b'{"event_type":"x","payload":{}}'

u32 = st.integers(min_value=0, max_value=2**32 - 1)
u64 = st.integers(min_value=0, max_value=2**64 - 1)
hosts = st.text(max_size=60).filter(
    lambda s: len(s.encode()) <= protocol.MAX_HOST_BYTES
)
header_names = st.text(min_size=1, max_size=30)
drop_reasons = st.from_regex(r"[a-z0-9_]{1,64}", fullmatch=True)
headers = st.lists(st.tuples(header_names, st.binary(max_size=100)), max_size=8)
envelopes = st.builds(
    lambda body: b'{"v":"' + body.encode() + b'"}',
    st.text(
        alphabet=st.characters(exclude_characters='"\\', exclude_categories=("Cs",)),
        max_size=200,
    ),
)
routed_classes = st.sampled_from(
    [EventClass.APPLICATION, EventClass.AUDIT, EventClass.SECURITY]
)
topics = st.from_regex(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,60}", fullmatch=True)


def event_frames(**overrides) -> list[bytes]:
    arguments = {
        "event_class": EventClass.APPLICATION,
        "value": ENVELOPE,
        "host": b"web-1",
        "pid": 42,
        "seq": 7,
        "key": b"svc",
        "headers": protocol.encode_headers([("x-tenant", b"t1")]),
    }
    arguments.update(overrides)

    return protocol.encode_event(**arguments)


@given(
    event_class=routed_classes,
    value=envelopes,
    host=hosts,
    pid=u32,
    seq=u64,
    key=st.binary(max_size=protocol.MAX_KEY_BYTES),
    header_list=headers,
    wants_ack=st.booleans(),
)
def test_routed_event_round_trips(
    event_class, value, host, pid, seq, key, header_list, wants_ack
):
    """Every field of a routed event comes back as it was encoded."""
    frames = protocol.encode_event(
        event_class,
        value,
        host=host.encode(),
        pid=pid,
        seq=seq,
        key=key,
        headers=protocol.encode_headers(header_list),
        wants_ack=wants_ack,
    )

    decoded = protocol.decode(frames)

    assert decoded == Event(
        event_class=event_class,
        topic=None,
        key=key or None,
        headers=header_list,
        value=value,
        host=host,
        pid=pid,
        seq=seq,
        wants_ack=wants_ack,
    )


@given(topic=topics.filter(lambda t: t.strip(".")), value=envelopes)
def test_explicit_topic_round_trips(topic, value):
    """An event that names its topic decodes with that topic and class TOPIC."""
    frames = event_frames(
        event_class=EventClass.TOPIC, topic=topic.encode(), value=value
    )

    decoded = protocol.decode(frames)

    assert decoded.topic == topic
    assert decoded.event_class is EventClass.TOPIC


@given(header_list=headers)
def test_headers_round_trip(header_list):
    """Kafka headers survive encode_headers and decode_headers unchanged."""
    assert protocol.decode_headers(protocol.encode_headers(header_list)) == header_list


@given(
    counts=st.dictionaries(
        drop_reasons, st.integers(0, 10**18), max_size=protocol.MAX_DROP_REASONS
    )
)
def test_drop_report_round_trips(counts):
    """A drop report keeps its counts by reason and its origin."""
    frames = protocol.encode_drops(counts, host=b"h", pid=9)

    assert protocol.decode(frames) == DropReport(counts, "h", 9)


def test_drop_report_takes_no_sequence_number():
    """A drop report's head carries sequence number 0: it is not an event."""
    (frame,) = protocol.encode_drops({"error": 1}, host=b"h", pid=9)

    assert HEAD.unpack_from(frame)[5] == 0


@given(seq=u64, reason=st.text(max_size=100))
def test_replies_round_trip(seq, reason):
    """Acks, nacks and status replies decode to what was sent."""
    ack = protocol.decode_reply(protocol.encode_ack(seq))
    nack = protocol.decode_reply(protocol.encode_nack(seq, reason))
    status = protocol.decode_reply(protocol.encode_status_reply(b"{}"))

    assert (ack.kind, ack.seq) == (Kind.ACK, seq)
    assert (nack.kind, nack.seq, nack.body) == (Kind.NACK, seq, reason.encode())
    assert (status.kind, status.body) == (Kind.STATUS_REPLY, b"{}")


def test_status_request_decodes_with_its_pid():
    """A status request carries the asking process's pid."""
    assert protocol.decode(protocol.encode_status_request(77)) == StatusRequest(77)


def _with_head(**fields) -> list[bytes]:
    values = {"version": protocol.PROTOCOL_VERSION, "kind": 1, "cls": 1, "flags": 0}
    values.update(fields)
    head = HEAD.pack(
        values["version"], values["kind"], values["cls"], values["flags"], 1, 1
    )

    frames = event_frames()

    return [head + frames[0][HEAD.size :], *frames[1:]]


@pytest.mark.parametrize(
    ("frames", "reason"),
    [
        pytest.param([], "bad_frame_count", id="empty"),
        pytest.param([b"short"], "bad_head", id="short-head"),
        pytest.param(
            [event_frames()[0][: HEAD.size + 3]], "bad_head", id="routing-cut-short"
        ),
        pytest.param(
            [event_frames()[0][: HEAD.size + 12]], "bad_head", id="headers-cut-short"
        ),
        pytest.param(_with_head(version=9), "bad_version", id="future-version"),
        pytest.param(_with_head(kind=16), "bad_kind", id="reply-kind-sent-to-broker"),
        pytest.param(_with_head(cls=9), "bad_class", id="unknown-class"),
        pytest.param([*event_frames(), b"{}"], "bad_frame_count", id="extra-frame"),
        pytest.param(
            [*event_frames(value=b""), b"{}"],
            "bad_frame_count",
            id="envelope-in-a-frame-of-its-own",
        ),
        pytest.param(event_frames(value=b""), "bad_envelope", id="missing-envelope"),
        pytest.param(
            event_frames(event_class=EventClass.TOPIC),
            "bad_topic",
            id="topic-class-without-topic",
        ),
        pytest.param(event_frames(host=b"\xff"), "bad_host", id="host-not-utf8"),
        pytest.param(
            event_frames(topic=b"some.topic"), "bad_topic", id="topic-with-class"
        ),
        pytest.param(
            event_frames(event_class=EventClass.TOPIC, topic=b"bad topic!"),
            "bad_topic",
            id="illegal-topic",
        ),
        pytest.param(
            event_frames(event_class=EventClass.TOPIC, topic=b".."),
            "bad_topic",
            id="dots-topic",
        ),
        pytest.param(
            event_frames(key=b"k" * (protocol.MAX_KEY_BYTES + 1)),
            "bad_key",
            id="key-too-long",
        ),
        pytest.param(event_frames(headers=b"\x00\x05ab"), "bad_headers", id="headers"),
        pytest.param(
            event_frames(headers=b"\x00\x00\x00\x00\x00\x00"),
            "bad_headers",
            id="header-without-name",
        ),
        pytest.param(event_frames(value=b"[1]"), "bad_envelope", id="not-object"),
        pytest.param(event_frames(value=b'{"\xff"}'), "bad_envelope", id="not-utf8"),
        pytest.param(
            [*protocol.encode_status_request(1), b"x"],
            "bad_frame_count",
            id="status-extra-frame",
        ),
        pytest.param(
            [
                protocol.encode_drops({}, host=b"h", pid=1)[0]
                + b"\x00\x01r\x00\x00\x00\x01x"
            ],
            "bad_drops",
            id="drop-count-not-number",
        ),
        pytest.param(
            protocol.encode_drops({"a" * 40_000: 1, "b" * 40_000: 1}, host=b"h", pid=1),
            "bad_drops",
            id="drop-reasons-of-40-kb",
        ),
        pytest.param(
            protocol.encode_drops({"r" * 65: 1}, host=b"h", pid=1),
            "bad_drops",
            id="drop-reason-over-64-bytes",
        ),
        pytest.param(
            protocol.encode_drops({"Queue Full": 1}, host=b"h", pid=1),
            "bad_drops",
            id="drop-reason-not-a-label",
        ),
        pytest.param(
            protocol.encode_drops({"": 1}, host=b"h", pid=1),
            "bad_headers",
            id="drop-reason-empty",
        ),
        pytest.param(
            protocol.encode_drops(
                {f"r{i}": 1 for i in range(protocol.MAX_DROP_REASONS + 1)},
                host=b"h",
                pid=1,
            ),
            "bad_drops",
            id="drop-reasons-too-many",
        ),
    ],
)
def test_malformed_message_decodes_to_named_error(frames, reason):
    """Each kind of malformed message is refused with its own reason label."""
    decoded = protocol.decode(frames)

    assert isinstance(decoded, FrameError)
    assert decoded.reason == reason


@given(st.lists(st.binary(max_size=64), max_size=8))
def test_decode_never_raises_on_arbitrary_frames(frames):
    """Any list of frames decodes to a message or a FrameError, never an exception."""
    decoded = protocol.decode(frames)

    assert isinstance(decoded, Event | DropReport | StatusRequest | FrameError)


@given(
    st.lists(st.binary(max_size=64), max_size=6),
    st.integers(0, 255),
    st.integers(0, 255),
    st.integers(0, 255),
)
def test_decode_never_raises_behind_a_valid_head(rest, kind, event_class, flags):
    """Garbage behind a well-formed head, in its frame or after it, is refused
    without raising."""
    head = HEAD.pack(protocol.PROTOCOL_VERSION, kind, event_class, flags, 1, 1)

    decoded = protocol.decode([head + b"".join(rest[:1]), *rest[1:]])

    assert isinstance(decoded, Event | DropReport | StatusRequest | FrameError)


@given(st.lists(st.binary(max_size=64), max_size=4))
def test_decode_reply_never_raises(frames):
    """The emitter's decoder is as robust as the broker's."""
    decoded = protocol.decode_reply(frames)

    assert isinstance(decoded, protocol.Reply | FrameError)
