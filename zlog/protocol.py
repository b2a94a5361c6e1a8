"""The zlog wire format: what an emitter sends the broker, and what comes back.

Pure code: no sockets, no JSON, no clock. Both sides of the socket import it,
and it is tested on its own (``tests/test_protocol.py``).

Every message is one ZeroMQ multipart message. Its first frame, the *head*,
starts with 16 fixed bytes::

    offset  size  field
    0       1     protocol version (PROTOCOL_VERSION)
    1       1     kind (Kind)
    2       1     event class (EventClass), 0 when the message carries none
    3       1     flags (FLAG_WANTS_ACK)
    4       4     origin pid, unsigned, big-endian
    8       8     origin sequence number, unsigned, big-endian

``EVENT`` and ``DROPS`` heads go on with the *routing* part::

    1 byte host length, host (UTF-8)
    1 byte topic length, topic (empty unless the class is ``TOPIC``)
    2 bytes key length, partition key (empty for none)

An ``EVENT`` then carries 4 bytes of headers length, the Kafka headers (see
``encode_headers``), and as the rest of the frame the envelope (UTF-8 JSON),
forwarded to Kafka untouched. A ``DROPS`` carries as its rest the counts by
reason in the headers' form, each value an ASCII decimal, each reason a short
label (``MAX_DROP_REASON_BYTES`` of ``a-z0-9_``), at most
``MAX_DROP_REASONS`` of them; its sequence number is 0, because a drop
report is not an event of the origin's sequence.

Everything a broker reads is one frame, because every frame costs its
receive loop more than the decode of the whole event: receiving the two
frames of protocol version 1 took 4.4 to 5.4 µs of Python per event, one
frame takes under 2 (``docs/protocol.md``). Frames after the head exist only
on what the broker sends back:

- ``ACK``: none; its sequence number names the event it acknowledges.
- ``NACK``: the reason (UTF-8).
- ``STATUS_REPLY``: a JSON document.

A decoder never raises on bad input: it returns a ``FrameError`` naming the
reason, which the broker counts and dead-letters. ``docs/protocol.md`` is the
prose version of this module.
"""

from __future__ import annotations

import enum
import re
import struct
from dataclasses import dataclass
from typing import NamedTuple

__all__ = [
    "DEFAULT_MAX_FRAME_BYTES",
    "FLAG_WANTS_ACK",
    "HEAD",
    "MAX_DROP_REASONS",
    "MAX_DROP_REASON_BYTES",
    "MAX_HOST_BYTES",
    "MAX_KEY_BYTES",
    "PROTOCOL_VERSION",
    "DropReport",
    "Event",
    "EventClass",
    "FrameError",
    "Kind",
    "Reply",
    "StatusRequest",
    "decode",
    "decode_frame",
    "decode_headers",
    "decode_reply",
    "encode_ack",
    "encode_drops",
    "encode_event",
    "encode_headers",
    "encode_nack",
    "encode_status_reply",
    "encode_status_request",
    "is_drop_reason",
]

PROTOCOL_VERSION = 2

HEAD = struct.Struct(">BBBBIQ")

FLAG_WANTS_ACK = 0x01

# Kafka refuses topic names longer than 249 characters, outside this set of
# characters, or made of dots alone.
_TOPIC_RE = re.compile(rb"(?!\.{1,2}\Z)[A-Za-z0-9._-]{1,249}\Z")

# A partition key is an identifier (service name, tenant id), not data; the
# envelope validation caps those at 256 characters, so 4 KiB is generous.
MAX_KEY_BYTES = 4096

# RFC 1035 caps a host name at 253 characters; leave room for odd setups.
MAX_HOST_BYTES = 255

# A drop reason is a metric label, like the emitter's ``broker_unavailable``;
# the broker carries it into its status document and its zlog.loss events, so
# it is short and plain. An emitter knows five reasons; 16 leaves room.
MAX_DROP_REASON_BYTES = 64
MAX_DROP_REASONS = 16
_DROP_REASON_RE = re.compile(rf"[a-z0-9_]{{1,{MAX_DROP_REASON_BYTES}}}\Z")

# The largest frame a broker takes (its ZeroMQ MAXMSGSIZE; a larger one makes
# ZeroMQ drop the sender's connection) and the largest an emitter sends. The
# envelope is capped at 1 MiB (COMPAT.md); routing and headers are small.
DEFAULT_MAX_FRAME_BYTES = 1024 * 1024 + 64 * 1024

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_unpack_u16 = _U16.unpack_from
_unpack_u32 = _U32.unpack_from


class Kind(enum.IntEnum):
    """What a message is. Values below 16 go to the broker, the rest back."""

    EVENT = 1  # one event for Kafka
    DROPS = 2  # the emitter's count of events it dropped before sending
    STATUS = 3  # a request for the broker's status (also a liveness probe)
    ACK = 16  # the event named by the sequence number is safe
    NACK = 17  # the event named by the sequence number was refused
    STATUS_REPLY = 18  # the broker's status as JSON


class EventClass(enum.IntEnum):
    """Which Kafka topic an event goes to, by its class."""

    TOPIC = 0  # the message names its topic explicitly
    APPLICATION = 1
    AUDIT = 2
    SECURITY = 3


class Event(NamedTuple):
    """One event as the broker receives it: routing, headers and envelope.

    A named tuple, not a dataclass: the broker builds one per event, and a
    tuple is built several times faster than a frozen dataclass.
    """

    event_class: EventClass
    topic: str | None
    key: bytes | None
    headers: list[tuple[str, bytes]]
    value: bytes
    host: str
    pid: int
    seq: int
    wants_ack: bool


@dataclass(frozen=True, slots=True)
class DropReport:
    """An emitter's count, by reason, of events it dropped before sending.

    It carries no sequence number: the dropped events took none either.
    """

    counts: dict[str, int]
    host: str
    pid: int


@dataclass(frozen=True, slots=True)
class StatusRequest:
    """A request for the broker's status."""

    pid: int


@dataclass(frozen=True, slots=True)
class Reply:
    """What the broker sent back: an ack, a nack with a reason, or a status."""

    kind: Kind
    seq: int
    body: bytes


@dataclass(frozen=True, slots=True)
class FrameError:
    """A message that could not be decoded: ``reason`` is a short metric label."""

    reason: str
    detail: str


def encode_headers(headers: list[tuple[str, bytes]]) -> bytes:
    """Pack Kafka headers as (u16 name length, name, u32 value length, value)."""
    parts = []
    for name, value in headers:
        name_bytes = name.encode()
        parts += (_U16.pack(len(name_bytes)), name_bytes, _U32.pack(len(value)), value)

    return b"".join(parts)


def decode_headers(data: bytes) -> list[tuple[str, bytes]] | FrameError:
    """Unpack what ``encode_headers`` packed, or say why it cannot."""
    headers = []
    offset = 0
    end = len(data)
    unpack_u16 = _unpack_u16
    unpack_u32 = _unpack_u32
    try:
        while offset < end:
            name_end = offset + 2 + unpack_u16(data, offset)[0]
            value_end = name_end + 4 + unpack_u32(data, name_end)[0]
            if value_end > end or name_end == offset + 2:
                raise ValueError("truncated" if value_end > end else "empty name")
            headers.append(
                (data[offset + 2 : name_end].decode(), data[name_end + 4 : value_end])
            )
            offset = value_end
    except (struct.error, UnicodeDecodeError, ValueError) as exc:
        return FrameError("bad_headers", f"headers frame at byte {offset}: {exc}")

    return headers


def encode_event(
    event_class: EventClass,
    value: bytes,
    *,
    host: bytes,
    pid: int,
    seq: int,
    key: bytes = b"",
    headers: bytes = b"",
    topic: bytes = b"",
    wants_ack: bool = False,
) -> list[bytes]:
    """The one frame of an event; ``headers`` is the output of ``encode_headers``."""
    flags = FLAG_WANTS_ACK if wants_ack else 0
    fixed = HEAD.pack(PROTOCOL_VERSION, Kind.EVENT, event_class, flags, pid, seq)
    routing = _routing(host, topic, key)

    return [b"".join((fixed, routing, _U32.pack(len(headers)), headers, value))]


def _routing(host: bytes, topic: bytes, key: bytes) -> bytes:
    return b"".join(
        (
            len(host).to_bytes(1, "big"),
            host,
            len(topic).to_bytes(1, "big"),
            topic,
            _U16.pack(len(key)),
            key,
        )
    )


def is_drop_reason(reason: str) -> bool:
    """Whether ``reason`` is a label a drop report may carry."""
    return _DROP_REASON_RE.match(reason) is not None


def encode_drops(counts: dict[str, int], *, host: bytes, pid: int) -> list[bytes]:
    """Frames reporting events dropped before sending, by reason.

    Each reason must be a label ``decode`` accepts (see ``MAX_DROP_REASONS``).
    """
    fixed = HEAD.pack(PROTOCOL_VERSION, Kind.DROPS, 0, 0, pid, 0)
    body = encode_headers([(reason, str(n).encode()) for reason, n in counts.items()])

    return [b"".join((fixed, _routing(host, b"", b""), body))]


def encode_status_request(pid: int) -> list[bytes]:
    """Frames asking the broker for its status."""
    return [HEAD.pack(PROTOCOL_VERSION, Kind.STATUS, 0, 0, pid, 0)]


def encode_ack(seq: int) -> list[bytes]:
    """Frames telling an emitter that its event ``seq`` is safe."""
    return [HEAD.pack(PROTOCOL_VERSION, Kind.ACK, 0, 0, 0, seq)]


def encode_nack(seq: int, reason: str) -> list[bytes]:
    """Frames telling an emitter that its event ``seq`` was refused, and why."""
    return [HEAD.pack(PROTOCOL_VERSION, Kind.NACK, 0, 0, 0, seq), reason.encode()]


def encode_status_reply(body: bytes) -> list[bytes]:
    """Frames carrying the broker's status document."""
    return [HEAD.pack(PROTOCOL_VERSION, Kind.STATUS_REPLY, 0, 0, 0, 0), body]


def _read_head(frames: list[bytes]) -> tuple[int, int, int, int, int] | FrameError:
    if not frames:
        return FrameError("bad_frame_count", "empty message")
    head = frames[0]
    if len(head) < HEAD.size:
        return FrameError(
            "bad_head", f"head frame is {len(head)} bytes, at least {HEAD.size} needed"
        )
    version, kind, event_class, flags, pid, seq = HEAD.unpack_from(head)
    if version != PROTOCOL_VERSION:
        return FrameError(
            "bad_version",
            f"protocol version {version}, this side speaks {PROTOCOL_VERSION}",
        )

    return kind, event_class, flags, pid, seq


def _read_routing(data: bytes) -> tuple[str, bytes, bytes, int] | FrameError:
    """(host, topic, key, offset of what follows) from a frame's routing part.

    Lengths are checked, contents are not.
    """
    try:
        host_end = HEAD.size + 1 + data[HEAD.size]
        topic_end = host_end + 1 + data[host_end]
        key_end = topic_end + 2 + _U16.unpack_from(data, topic_end)[0]
    except (IndexError, struct.error):
        return FrameError("bad_head", f"routing part cut short at {len(data)} bytes")
    if key_end > len(data):
        return FrameError("bad_head", f"routing part cut short at {len(data)} bytes")
    host = _HOSTS.get(data[HEAD.size + 1 : host_end])
    if host is None:
        host = _decode_host(data[HEAD.size + 1 : host_end])
        if host.__class__ is FrameError:
            return host

    return host, data[host_end + 1 : topic_end], data[topic_end + 2 : key_end], key_end


# Hosts seen so far, decoded once; a host sends many events.
_HOSTS: dict[bytes, str] = {}
_MAX_CACHED_HOSTS = 1024

# Header blocks seen so far, decoded once: without a correlation id an
# emitter's headers repeat from event to event. The decoded lists are shared
# by every event that carried the same bytes, so nothing may change them.
# Bounded in entries and in size, so no sender can make it grow past ~2 MiB.
_HEADERS: dict[bytes, list[tuple[str, bytes]]] = {}
_MAX_CACHED_HEADERS = 4096
_MAX_CACHED_HEADER_BYTES = 512


def _decode_new_headers(data: bytes) -> list[tuple[str, bytes]] | FrameError:
    headers = decode_headers(data)
    cacheable = len(data) <= _MAX_CACHED_HEADER_BYTES and headers.__class__ is list
    if cacheable and len(_HEADERS) < _MAX_CACHED_HEADERS:
        _HEADERS[data] = headers

    return headers


def _decode_host(host_bytes: bytes) -> str | FrameError:
    try:
        host = host_bytes.decode()
    except UnicodeDecodeError:
        return FrameError("bad_host", "host is not UTF-8")
    if len(_HOSTS) < _MAX_CACHED_HOSTS:
        _HOSTS[host_bytes] = host

    return host


_CLASSES = tuple(EventClass)


# Plain ints for the per-event path: an enum member costs an attribute
# lookup each time it is named.
_HEAD_SIZE = HEAD.size
_EVENT = int(Kind.EVENT)
_DROPS = int(Kind.DROPS)
_STATUS = int(Kind.STATUS)
_TOPIC = int(EventClass.TOPIC)
_unpack_head = HEAD.unpack_from


def _decode_event(
    data: bytes, event_class: int, flags: int, pid: int, seq: int
) -> Event | FrameError:
    """Decode one event's frame after its head. Kept lean: once per event."""
    if event_class >= len(_CLASSES):
        return FrameError("bad_class", f"event class {event_class} is unknown")
    size = len(data)
    try:
        host_end = _HEAD_SIZE + 1 + data[_HEAD_SIZE]
        topic_end = host_end + 1 + data[host_end]
        key_end = topic_end + 2 + _unpack_u16(data, topic_end)[0]
        headers_end = key_end + 4 + _unpack_u32(data, key_end)[0]
    except (IndexError, struct.error):
        return FrameError("bad_head", f"routing part cut short at {size} bytes")
    if headers_end > size:
        return FrameError(
            "bad_head", f"routing part and headers run to byte {headers_end} of {size}"
        )
    host_bytes = data[_HEAD_SIZE + 1 : host_end]
    host = _HOSTS.get(host_bytes) or _decode_host(host_bytes)
    if host.__class__ is FrameError:
        return host
    topic = None
    if host_end + 1 != topic_end:
        if event_class != _TOPIC:
            return FrameError("bad_topic", "a topic was given with a routed class")
        topic_bytes = data[host_end + 1 : topic_end]
        if _TOPIC_RE.match(topic_bytes) is None:
            shown = topic_bytes[:64]
            return FrameError(
                "bad_topic", f"topic {shown!r} is not a legal Kafka topic"
            )
        topic = topic_bytes.decode()
    elif event_class == _TOPIC:
        return FrameError("bad_topic", "topic b'' is not a legal Kafka topic")
    if key_end - topic_end - 2 > MAX_KEY_BYTES:
        return FrameError(
            "bad_key", f"key is {key_end - topic_end - 2} bytes, limit {MAX_KEY_BYTES}"
        )
    headers_bytes = data[key_end + 4 : headers_end]
    headers = _HEADERS.get(headers_bytes) or _decode_new_headers(headers_bytes)
    if headers.__class__ is FrameError:
        return headers
    value = data[headers_end:]
    if value[:1] != b"{" or value[-1:] != b"}":
        return FrameError("bad_envelope", "envelope is not a JSON object")
    try:
        value.decode()
    except UnicodeDecodeError as exc:
        return FrameError("bad_envelope", f"envelope is not UTF-8: {exc.reason}")

    return Event(
        _CLASSES[event_class],
        topic,
        data[topic_end + 2 : key_end] or None,
        headers,
        value,
        host,
        pid,
        seq,
        bool(flags & FLAG_WANTS_ACK),
    )


def _decode_drops(data: bytes, pid: int) -> DropReport | FrameError:
    routing = _read_routing(data)
    if routing.__class__ is FrameError:
        return routing
    host, _, _, offset = routing
    pairs = decode_headers(data[offset:])
    if pairs.__class__ is FrameError:
        return pairs
    if len(pairs) > MAX_DROP_REASONS:
        return FrameError(
            "bad_drops",
            f"drop report has {len(pairs)} reasons, limit {MAX_DROP_REASONS}",
        )
    counts = {}
    for reason, count in pairs:
        if not is_drop_reason(reason):
            return FrameError(
                "bad_drops",
                f"drop reason {reason[:MAX_DROP_REASON_BYTES]!r} is not a label of "
                f"1 to {MAX_DROP_REASON_BYTES} characters a-z, 0-9 or _",
            )
        if not count.isdigit() or len(count) > 19:
            return FrameError("bad_drops", f"drop count for {reason!r} is not a number")
        counts[reason] = counts.get(reason, 0) + int(count)

    return DropReport(counts=counts, host=host, pid=pid)


def decode(frames: list[bytes]) -> Event | DropReport | StatusRequest | FrameError:
    """Decode a message an emitter sent; never raises.

    Args:
        frames: the message's frames, without the ROUTER's identity frame.
    """
    if len(frames) == 1:
        return decode_frame(frames[0])
    head = _read_head(frames)
    if head.__class__ is FrameError:
        return head

    return FrameError(
        "bad_frame_count", f"message has {len(frames)} frames, expected 1"
    )


def decode_frame(data: bytes) -> Event | DropReport | StatusRequest | FrameError:
    """Decode a message of one frame, as every valid one is; never raises."""
    if len(data) < _HEAD_SIZE:
        return FrameError(
            "bad_head", f"head is {len(data)} bytes, at least {_HEAD_SIZE} needed"
        )
    version, kind, event_class, flags, pid, seq = _unpack_head(data)
    if version != PROTOCOL_VERSION:
        return FrameError(
            "bad_version",
            f"protocol version {version}, this side speaks {PROTOCOL_VERSION}",
        )
    if kind == _EVENT:
        return _decode_event(data, event_class, flags, pid, seq)
    if kind == _DROPS:
        return _decode_drops(data, pid)
    if kind == _STATUS:
        if len(data) != _HEAD_SIZE:
            return FrameError("bad_head", "status request has bytes after its head")
        return StatusRequest(pid=pid)

    return FrameError("bad_kind", f"message kind {kind} is not one a broker accepts")


def decode_reply(frames: list[bytes]) -> Reply | FrameError:
    """Decode a message the broker sent back; never raises."""
    head = _read_head(frames)
    if isinstance(head, FrameError):
        return head
    kind, _, _, _, seq = head
    if len(frames[0]) != HEAD.size:
        return FrameError("bad_reply", f"reply head is {len(frames[0])} bytes")
    if kind == Kind.ACK and len(frames) == 1:
        return Reply(Kind.ACK, seq, b"")
    if kind in (Kind.NACK, Kind.STATUS_REPLY) and len(frames) == 2:
        return Reply(Kind(kind), seq, frames[1])

    return FrameError("bad_reply", f"reply kind {kind} with {len(frames)} frames")
