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
    the rest: Kafka headers (see ``encode_headers``); for DROPS, the counts
    by reason in the same form, each value an ASCII decimal

Everything but the envelope travels in the head because every frame costs
the broker's receive loop about a microsecond (measured): an event is two
frames, head and envelope. The frames after the head, by kind:

- ``EVENT``: the envelope (UTF-8 JSON), forwarded to Kafka untouched.
- ``DROPS``, ``STATUS``, ``ACK``: none; an ack's sequence number names the
  event it acknowledges.
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
    "FLAG_WANTS_ACK",
    "HEAD",
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
    "decode_headers",
    "decode_reply",
    "encode_ack",
    "encode_drops",
    "encode_event",
    "encode_headers",
    "encode_nack",
    "encode_status_reply",
    "encode_status_request",
]

PROTOCOL_VERSION = 1

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

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")


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
    """An emitter's count, by reason, of events it dropped before sending."""

    counts: dict[str, int]
    host: str
    pid: int
    seq: int


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
    try:
        while offset < end:
            (name_len,) = _U16.unpack_from(data, offset)
            offset += 2
            name = data[offset : offset + name_len].decode()
            offset += name_len
            (value_len,) = _U32.unpack_from(data, offset)
            offset += 4
            value = data[offset : offset + value_len]
            offset += value_len
            if len(name) == 0 or offset > end:
                raise ValueError("truncated")
            headers.append((name, value))
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
    """Frames for one event; ``headers`` is the output of ``encode_headers``."""
    flags = FLAG_WANTS_ACK if wants_ack else 0
    fixed = HEAD.pack(PROTOCOL_VERSION, Kind.EVENT, event_class, flags, pid, seq)
    routing = _routing(host, topic, key)

    return [b"".join((fixed, routing, headers)), value]


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


def encode_drops(
    counts: dict[str, int], *, host: bytes, pid: int, seq: int
) -> list[bytes]:
    """Frames reporting events dropped before sending, by reason."""
    fixed = HEAD.pack(PROTOCOL_VERSION, Kind.DROPS, 0, 0, pid, seq)
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


class _Routing(NamedTuple):
    host: str
    topic: bytes
    key: bytes
    rest: bytes


def _read_routing(head: bytes) -> _Routing | FrameError:
    """Split a head's routing part; lengths are checked, contents are not."""
    try:
        host_end = HEAD.size + 1 + head[HEAD.size]
        topic_end = host_end + 1 + head[host_end]
        key_end = topic_end + 2 + _U16.unpack_from(head, topic_end)[0]
    except (IndexError, struct.error):
        return FrameError("bad_head", f"routing part cut short at {len(head)} bytes")
    if key_end > len(head):
        return FrameError("bad_head", f"routing part cut short at {len(head)} bytes")
    host = _HOSTS.get(head[HEAD.size + 1 : host_end])
    if host is None:
        host = _decode_host(head[HEAD.size + 1 : host_end])
        if host.__class__ is FrameError:
            return host

    return _Routing(
        host,
        head[host_end + 1 : topic_end],
        head[topic_end + 2 : key_end],
        head[key_end:],
    )


# Hosts seen so far, decoded once; a host sends many events.
_HOSTS: dict[bytes, str] = {}
_MAX_CACHED_HOSTS = 1024


def _decode_host(host_bytes: bytes) -> str | FrameError:
    try:
        host = host_bytes.decode()
    except UnicodeDecodeError:
        return FrameError("bad_host", "host is not UTF-8")
    if len(_HOSTS) < _MAX_CACHED_HOSTS:
        _HOSTS[host_bytes] = host

    return host


_CLASSES = tuple(EventClass)


def _decode_event(
    frames: list[bytes], event_class: int, flags: int, pid: int, seq: int
) -> Event | FrameError:
    if len(frames) != 2:
        return FrameError(
            "bad_frame_count", f"event has {len(frames)} frames, expected 2"
        )
    head, value = frames
    if event_class >= len(_CLASSES):
        return FrameError("bad_class", f"event class {event_class} is unknown")
    routing = _read_routing(head)
    if routing.__class__ is FrameError:
        return routing
    host, topic_bytes, key, headers_bytes = routing
    topic = None
    if event_class == EventClass.TOPIC:
        if _TOPIC_RE.match(topic_bytes) is None:
            shown = topic_bytes[:64]
            return FrameError(
                "bad_topic", f"topic {shown!r} is not a legal Kafka topic"
            )
        topic = topic_bytes.decode()
    elif topic_bytes:
        return FrameError("bad_topic", "a topic was given with a routed class")
    if len(key) > MAX_KEY_BYTES:
        return FrameError("bad_key", f"key is {len(key)} bytes, limit {MAX_KEY_BYTES}")
    headers = decode_headers(headers_bytes) if headers_bytes else []
    if headers.__class__ is FrameError:
        return headers
    if value[:1] != b"{" or value[-1:] != b"}":
        return FrameError("bad_envelope", "envelope is not a JSON object")
    try:
        value.decode()
    except UnicodeDecodeError as exc:
        return FrameError("bad_envelope", f"envelope is not UTF-8: {exc.reason}")

    return Event(
        _CLASSES[event_class],
        topic,
        key or None,
        headers,
        value,
        host,
        pid,
        seq,
        bool(flags & FLAG_WANTS_ACK),
    )


def _decode_drops(frames: list[bytes], pid: int, seq: int) -> DropReport | FrameError:
    if len(frames) != 1:
        return FrameError("bad_frame_count", f"drop report has {len(frames)} frames")
    routing = _read_routing(frames[0])
    if routing.__class__ is FrameError:
        return routing
    pairs = decode_headers(routing.rest)
    if pairs.__class__ is FrameError:
        return pairs
    counts = {}
    for reason, count in pairs:
        if not count.isdigit() or len(count) > 19:
            return FrameError("bad_drops", f"drop count for {reason!r} is not a number")
        counts[reason] = int(count)

    return DropReport(counts=counts, host=routing.host, pid=pid, seq=seq)


def decode(frames: list[bytes]) -> Event | DropReport | StatusRequest | FrameError:
    """Decode a message an emitter sent; never raises.

    Args:
        frames: the message's frames, without the ROUTER's identity frame.
    """
    head = _read_head(frames)
    if isinstance(head, FrameError):
        return head
    kind, event_class, flags, pid, seq = head
    if kind == Kind.EVENT:
        return _decode_event(frames, event_class, flags, pid, seq)
    if kind == Kind.DROPS:
        return _decode_drops(frames, pid, seq)
    if kind == Kind.STATUS:
        if len(frames) != 1 or len(frames[0]) != HEAD.size:
            return FrameError("bad_frame_count", "status request has extra frames")
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
