"""The emitter: the one object per process that hands events to the broker.

How it works
------------

Each thread that emits gets its own ZeroMQ DEALER socket (a *channel*)
connected to the broker's ROUTER over ``ipc://``. ZeroMQ sockets must not be
shared between threads; a per-thread socket needs no lock on the send path,
and an acknowledgment comes back on the socket of the thread that waits for
it, so no thread has to sort out replies for another. ``docs/client.md``
gives the measurements behind this choice.

Sending never waits longer than a bound:

- an application event is sent with ``NOBLOCK``; when ZeroMQ cannot queue it
  (no broker connected, or ``queue_events`` already queued) it is dropped and
  counted under ``broker_unavailable``. A socket only just opened waits up to
  ``connect_grace_ms`` once, while the broker's socket file exists, so the
  first line a process logs is not lost to the connection still being set up;
- an audit or security event asks for an acknowledgment and waits at most
  ``ack_timeout_s`` for it. With no socket file it fails at once; a broker
  not connected within ``connect_grace_ms`` fails it after that grace; and
  once a wait has ended with no reply at all, later waits on the emitter are
  cut to ``connect_grace_ms`` until the broker answers anything again, so a
  silent broker costs a worker one full timeout, not one per event.

A frame larger than ``max_frame_bytes`` (the broker's ``--max-frame-bytes``,
same default) is never sent: ZeroMQ would drop the whole connection, and
with it the events queued behind that frame. It is counted ``too_large``.

The socket connects with ``IMMEDIATE`` set, so nothing queues for a broker
that is not there: every loss is a counted drop, never a silent one. The
counts not yet reported ride to the broker in a drop report right after the
next event that goes through. ZeroMQ reconnects by itself when the broker
restarts.

Sequence numbers: an event takes the origin's next number only when ZeroMQ
takes it. The number is written into the frame and the frame handed to
ZeroMQ under one lock, and a send ZeroMQ refuses leaves the number for the
next event, so the broker sees a gap only where an event ZeroMQ took never
reached it. A dropped event is counted once, in the drop report, and never
again as a gap.

Fork: ``os.register_at_fork`` forgets the parent's emitter in the child (and
keeps a reference to it, so that not even garbage collection touches the
parent's context there). The child builds its own emitter on first use.

Exit: ``atexit`` (and ``multiprocessing``'s finalizers, because pool workers
leave through ``os._exit``) close every socket with a linger of
``linger_ms`` (default 1 s) and terminate the context. Events a broker never
took by then are lost, counted as sent. A process leaving through a bare
``os._exit`` runs no hook: what ZeroMQ still holds is lost, though counted as
sent, unless it calls ``close()`` first.
"""

from __future__ import annotations

import atexit
import contextlib
import enum
import os
import socket
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import zmq
import zmq.backend

from zlog import endpoint, protocol
from zlog.protocol import DEFAULT_MAX_FRAME_BYTES, EventClass

__all__ = [
    "DEFAULT_ACK_TIMEOUT_S",
    "DEFAULT_CONNECT_GRACE_MS",
    "DEFAULT_LINGER_MS",
    "DEFAULT_MAX_FRAME_BYTES",
    "DEFAULT_QUEUE_EVENTS",
    "Delivery",
    "DropReason",
    "Emitter",
    "EmitterStats",
    "close",
    "configure",
    "flush",
    "get_emitter",
    "stats",
]

# The old publisher bounded each send_and_wait by 5 s; audit callers keep it.
DEFAULT_ACK_TIMEOUT_S = 5.0

# The brief for the client: exit may wait at most one second for the broker.
DEFAULT_LINGER_MS = 1000

# Events a thread may have queued for the broker (ZeroMQ's send high-water
# mark). 10,000 envelopes of ~500 bytes is 5 MB: a few milliseconds of a
# stalled broker at full speed, well over a second at ordinary log rates.
DEFAULT_QUEUE_EVENTS = 10_000

# An ipc connect completes in well under a millisecond on an idle machine,
# but took over 100 ms for freshly spawned pool workers on two busy cores
# (measured in the test suite). The wait is paid at most once per thread, and
# only while the broker's socket file exists: with no broker, no wait.
DEFAULT_CONNECT_GRACE_MS = 1000

# ZeroMQ retries a lost connection every 100 ms, backing off to 1 s.
RECONNECT_IVL_MS = 100
RECONNECT_IVL_MAX_MS = 1000

_MORE = zmq.NOBLOCK | zmq.SNDMORE
_LAST = zmq.NOBLOCK

# An event as ``send`` takes it, not yet numbered: (class, envelope, key,
# packed headers, topic, wants_ack). A plain tuple: one is made per event.
_EventParts = tuple[EventClass, bytes, bytes, bytes, bytes, bool]

# pyzmq's Socket.send adds a Python layer that costs more than ZeroMQ itself
# (about 0.8 µs a frame); the compiled method underneath takes the same
# arguments we pass, so the hot path calls it directly.
_send_frame = zmq.backend.Socket.send


class DropReason:
    """Why an event was dropped: the labels of the drop counts."""

    BROKER_UNAVAILABLE = "broker_unavailable"  # no broker, or the queue is full
    INVALID = "invalid"  # the event failed validation
    TOO_LARGE = "too_large"  # context, envelope or whole frame over its limit
    CLOSED = "closed"  # emitted after the emitter closed (interpreter exit)
    ERROR = "error"  # an unexpected failure inside the client
    OTHER = "other"  # a reason given to count_drop that a report cannot carry


class Delivery(enum.Enum):
    """What became of an event sent with a wait for the broker's ack."""

    ACKED = "acked"  # the broker has it in Kafka or in its spool
    NACKED = "nacked"  # the broker refused it (it says why in its counts)
    TIMED_OUT = "timed_out"  # sent, but no verdict came in time
    UNAVAILABLE = "unavailable"  # no broker took it in time; dropped
    TOO_LARGE = "too_large"  # over max_frame_bytes: never sent; dropped
    CLOSED = "closed"  # the emitter is closed or belongs to another process


@dataclass
class EmitterStats:
    """What an emitter did, since it was created.

    Attributes:
        sent: events handed to ZeroMQ.
        acked: events the broker acknowledged.
        nacked: events the broker refused.
        unacked: events sent with a wait for an ack that did not come in time
            (the broker may still have published them).
        dropped: events never sent, by reason (see ``DropReason``).
        reported: drops already told to the broker, by reason.
    """

    sent: int = 0
    acked: int = 0
    nacked: int = 0
    unacked: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    reported: dict[str, int] = field(default_factory=dict)

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())


class _Channel:
    """One thread's socket and that thread's counts (so they need no lock)."""

    __slots__ = ("acked", "grace_until", "nacked", "sent", "socket", "thread")

    def __init__(self, sock: zmq.Socket, grace_until: float) -> None:
        self.socket = sock
        self.thread = threading.current_thread()
        self.grace_until = grace_until
        self.sent = 0
        self.acked = 0
        self.nacked = 0


class Emitter:
    """Sends events to the broker; safe to share between threads.

    Most code never makes one: ``get_emitter()`` returns this process's.

    Args:
        socket_path: the broker's socket (default: ``resolve_socket_path()``).
        ack_timeout_s: the longest an acknowledged send waits.
        linger_ms: how long ``close`` waits for queued events to leave.
        queue_events: events one thread may have queued before drops begin.
        connect_grace_ms: how long the first send on a new socket may wait
            for the connection when the socket file exists; 0 never waits.
        max_frame_bytes: the largest frame sent; keep it at the broker's
            ``--max-frame-bytes``. A larger frame is dropped as ``too_large``.
    """

    def __init__(
        self,
        socket_path: str | os.PathLike[str] | None = None,
        *,
        ack_timeout_s: float = DEFAULT_ACK_TIMEOUT_S,
        linger_ms: int = DEFAULT_LINGER_MS,
        queue_events: int = DEFAULT_QUEUE_EVENTS,
        connect_grace_ms: int = DEFAULT_CONNECT_GRACE_MS,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    ) -> None:
        self.socket_path: Path = endpoint.resolve_socket_path(socket_path)
        self.endpoint = endpoint.ipc_endpoint(self.socket_path)
        self.ack_timeout_s = ack_timeout_s
        self.linger_ms = linger_ms
        self.queue_events = queue_events
        self.connect_grace_ms = connect_grace_ms
        self.max_frame_bytes = max_frame_bytes
        self.pid = os.getpid()
        self.host = socket.gethostname().encode()[: protocol.MAX_HOST_BYTES]
        # An event's frame is these bytes plus its envelope, key, headers
        # and topic (protocol.encode_event).
        self._frame_overhead = protocol.HEAD.size + len(self.host) + 8
        self._generation = _fork_generation
        self._context: zmq.Context | None = None
        self._local = threading.local()
        self._lock = threading.Lock()
        self._channels: list[_Channel] = []
        self._retired = EmitterStats()
        self._unacked = 0
        self._dropped: dict[str, int] = {}
        self._unreported: dict[str, int] = {}
        self._reported: dict[str, int] = {}
        # The next sequence number, taken under the lock by a send ZeroMQ
        # accepts (see _send_numbered).
        self._seq_lock = threading.Lock()
        self._next_seq = 1
        self._closed = False
        self._warned = False
        # Replies read on any channel, and whether the last acked send's
        # wait ended without one (see _send_acked).
        self._replies = 0
        self._broker_silent = False

    def __repr__(self) -> str:
        return f"<Emitter pid={self.pid} endpoint={self.endpoint!r}>"

    @property
    def closed(self) -> bool:
        return self._closed

    def send(
        self,
        event_class: EventClass,
        value: bytes,
        key: bytes = b"",
        headers: bytes = b"",
        *,
        topic: bytes = b"",
        wants_ack: bool = False,
        timeout_s: float | None = None,
    ) -> bool:
        """Send one serialized envelope; never raises.

        Args:
            event_class: routes the event to its topic (``TOPIC`` with ``topic``).
            value: the envelope (a JSON object, UTF-8).
            key: the Kafka partition key.
            headers: Kafka headers packed by ``protocol.encode_headers``.
            topic: an explicit topic, only with ``EventClass.TOPIC``.
            wants_ack: wait for the broker's acknowledgment.
            timeout_s: the longest to wait for it (default ``ack_timeout_s``).

        Returns:
            True when the event was queued (or, with ``wants_ack``, acknowledged).
        """
        if self._generation != _fork_generation:
            return False
        try:
            try:
                channel = self._local.channel
            except AttributeError:
                channel = self._open_channel()
                if channel is None:
                    return False
            # _too_large, inlined: a method call would cost the per-event
            # path as much again as the check itself.
            size = self._frame_overhead + len(value) + len(key) + len(headers)
            if size + len(topic) > self.max_frame_bytes:
                self._count(DropReason.TOO_LARGE)
                return False
            event = (event_class, value, key, headers, topic, wants_ack)
            if wants_ack:
                timeout = self.ack_timeout_s if timeout_s is None else timeout_s
                delivery = self._send_acked(channel, event, timeout)
                return delivery is Delivery.ACKED
            if not self._send_now(channel, event):
                return False
            channel.sent += 1
            if self._unreported:
                self._report_drops(channel)
        except Exception as exc:
            self._fail(exc)
            return False

        return True

    def send_and_wait(
        self,
        event_class: EventClass,
        value: bytes,
        key: bytes = b"",
        headers: bytes = b"",
        *,
        topic: bytes = b"",
        timeout_s: float | None = None,
    ) -> Delivery:
        """Send one envelope and wait (bounded) for the broker's verdict.

        Like ``send(..., wants_ack=True)``, but says what happened.
        """
        if self._generation != _fork_generation:
            return Delivery.CLOSED
        try:
            channel = self._channel_or_none()
            if channel is None:
                return Delivery.CLOSED
            if self._too_large(value, key, headers, topic):
                return Delivery.TOO_LARGE
            event = (event_class, value, key, headers, topic, True)
            timeout = self.ack_timeout_s if timeout_s is None else timeout_s
            return self._send_acked(channel, event, timeout)
        except Exception as exc:
            self._fail(exc)

        return Delivery.UNAVAILABLE

    def count_drop(self, reason: str) -> None:
        """Count an event dropped before it reached ``send`` (e.g. invalid).

        ``reason`` is a label a drop report can carry (``protocol.is_drop_reason``);
        any other, or a new one past the ``protocol.MAX_DROP_REASONS`` an
        emitter may name, is counted as ``other``.
        """
        self._count(reason)

    def stats(self) -> EmitterStats:
        """A snapshot of the counts, summed over every thread."""
        with self._lock:
            total = EmitterStats(
                sent=self._retired.sent,
                acked=self._retired.acked,
                nacked=self._retired.nacked,
                unacked=self._unacked,
                dropped=dict(self._dropped),
                reported=dict(self._reported),
            )
            for channel in self._channels:
                total.sent += channel.sent
                total.acked += channel.acked
                total.nacked += channel.nacked

        return total

    def flush(self, timeout_s: float = 1.0) -> bool:
        """Wait until the broker has received what this thread sent.

        A status request travels behind the thread's events on the same
        connection, so its answer means they all arrived.
        """
        try:
            channel = self._channel_or_none()
            if channel is None:
                return False
            deadline = time.monotonic() + timeout_s
            frames = protocol.encode_status_request(self.pid)
            while True:
                try:
                    _send_frames(channel.socket, frames)
                    break
                except zmq.Again:
                    if not _wait_for_room(channel.socket, deadline):
                        return False
            reply = self._await_reply(channel, deadline, protocol.Kind.STATUS_REPLY)
        except Exception as exc:
            self._fail(exc, drop=False)
            return False

        return reply is not None

    def close(self, linger_ms: int | None = None) -> None:
        """Close every socket, waiting at most ``linger_ms`` for queued events.

        Later sends are dropped as ``closed``. Call it only when no other
        thread is still emitting, as at interpreter exit.
        """
        if self._generation != _fork_generation:
            return
        with self._lock:
            if self._closed:
                return
            self._closed = True
            context = self._context
        if context is None:
            return
        linger = self.linger_ms if linger_ms is None else linger_ms
        # term() waits for the linger of every socket; a thread bounds the wait
        # even if some socket were somehow left open.
        closer = threading.Thread(
            target=_destroy_quietly, args=(context, linger), daemon=True
        )
        try:
            closer.start()
        except RuntimeError:
            _destroy_quietly(context, linger)
            return
        closer.join(linger / 1000 + 0.5)

    def _channel_or_none(self) -> _Channel | None:
        if self._generation != _fork_generation:
            return None
        try:
            return self._local.channel
        except AttributeError:
            return self._open_channel()

    def _open_channel(self) -> _Channel | None:
        if self._generation != _fork_generation:
            # The parent's lock may have been held at fork: touch nothing.
            return None
        with self._lock:
            if self._closed:
                channel = None
            else:
                self._retire_dead_channels()
                channel = self._new_channel()
                self._channels.append(channel)
        if channel is None:
            self._count(DropReason.CLOSED)
            return None
        self._local.channel = channel

        return channel

    def _new_channel(self) -> _Channel:
        if self._context is None:
            self._context = zmq.Context(io_threads=1)
        sock = self._context.socket(zmq.DEALER)
        try:
            sock.setsockopt(zmq.LINGER, self.linger_ms)
            sock.setsockopt(zmq.SNDHWM, self.queue_events)
            sock.setsockopt(zmq.IMMEDIATE, 1)
            sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
            sock.connect(self.endpoint)
        except BaseException:
            sock.close(linger=0)
            raise
        grace_s = self.connect_grace_ms / 1000 if self._socket_file_exists() else 0.0

        return _Channel(sock, time.monotonic() + grace_s)

    def _socket_file_exists(self) -> bool:
        # os.path.exists, not Path.exists: it answers False where Path.exists
        # raises (a directory we may not search, a NUL in the path).
        return os.path.exists(self.socket_path)

    def _fail(self, exc: Exception, *, drop: bool = True) -> None:
        """Count an event lost to an unexpected failure; warn about the first."""
        if drop:
            self._count(DropReason.ERROR)
        if self._warned:
            return
        self._warned = True
        _warn(
            f"zlog cannot send events to {self.endpoint} "
            f"({exc.__class__.__name__}: {exc}); they are dropped and counted "
            "as 'error' in zlog.stats(); check zlog.configure() and ZLOG_SOCKET"
        )

    def _retire_dead_channels(self) -> None:
        # Called with the lock held. A dead thread's socket is no one's now,
        # so closing it here is safe; its counts move to the retired total.
        alive = []
        for channel in self._channels:
            if channel.thread.is_alive():
                alive.append(channel)
                continue
            self._retired.sent += channel.sent
            self._retired.acked += channel.acked
            self._retired.nacked += channel.nacked
            channel.socket.close()
        self._channels = alive

    def _too_large(
        self, value: bytes, key: bytes, headers: bytes, topic: bytes
    ) -> bool:
        """Whether the event's frame is over ``max_frame_bytes``; counts it if so.

        Checked before the event takes a sequence number, so that the broker
        sees no gap for it, only the drop.
        """
        size = self._frame_overhead + len(value) + len(key) + len(headers)
        if size + len(topic) <= self.max_frame_bytes:
            return False
        self._count(DropReason.TOO_LARGE)

        return True

    def _send_numbered(self, sock: zmq.Socket, event: _EventParts) -> int:
        """Encode an event with the next number and queue it without waiting.

        Returns the number. Raises ``zmq.Again`` (or another ``ZMQError``)
        when ZeroMQ did not take it: the number then goes to the next event.
        The lock makes the number and the send one step for every thread of
        the process; encoding under it costs less than numbering a frame
        encoded before (a copy of it).
        """
        event_class, value, key, headers, topic, wants_ack = event
        with self._seq_lock:
            seq = self._next_seq
            (frame,) = protocol.encode_event(
                event_class,
                value,
                host=self.host,
                pid=self.pid,
                seq=seq,
                key=key,
                headers=headers,
                topic=topic,
                wants_ack=wants_ack,
            )
            _send_frame(sock, frame, _LAST)
            self._next_seq = seq + 1

        return seq

    def _send_now(self, channel: _Channel, event: _EventParts) -> bool:
        try:
            self._send_numbered(channel.socket, event)
            return True
        except zmq.Again:
            pass
        except zmq.ZMQError:
            self._count(DropReason.CLOSED if self._closed else DropReason.ERROR)
            return False
        if channel.grace_until and time.monotonic() < channel.grace_until:
            return self._send_in_grace(channel, event)
        self._count(DropReason.BROKER_UNAVAILABLE)

        return False

    def _send_in_grace(self, channel: _Channel, event: _EventParts) -> bool:
        deadline = channel.grace_until
        channel.grace_until = 0.0
        try:
            sent = self._send_by(channel, event, deadline) > 0
        except zmq.ZMQError:
            sent = False
        if not sent:
            self._count(DropReason.BROKER_UNAVAILABLE)

        return sent

    def _send_by(self, channel: _Channel, event: _EventParts, deadline: float) -> int:
        """Send an event, waiting until ``deadline`` for room (or a connection).

        Returns its sequence number, or 0 when ZeroMQ did not take it in time.
        """
        sock = channel.socket
        while True:
            try:
                return self._send_numbered(sock, event)
            except zmq.Again:
                if not _wait_for_room(sock, deadline):
                    return 0

    def _send_acked(
        self, channel: _Channel, event: _EventParts, timeout_s: float
    ) -> Delivery:
        # No socket file, no broker: nothing to wait for.
        if not self._socket_file_exists():
            self._count(DropReason.BROKER_UNAVAILABLE)
            return Delivery.UNAVAILABLE
        started = time.monotonic()
        deadline = started + timeout_s
        # A broker not connected within the grace is not coming in time (a
        # stale socket file, a broker still starting); while the broker is
        # silent, the wait for its verdict is cut to the same bound.
        short = min(deadline, started + self.connect_grace_ms / 1000)
        if self._broker_silent:
            deadline = short
        replies = self._replies
        try:
            seq = self._send_by(channel, event, short)
            if not seq:
                self._count(DropReason.BROKER_UNAVAILABLE)
                return Delivery.UNAVAILABLE
            channel.sent += 1
            if self._unreported:
                self._report_drops(channel)
            reply = self._await_reply(channel, deadline, seq=seq)
        except zmq.ZMQError:
            reply = None
        if reply is None:
            with self._lock:
                self._unacked += 1
            if self._replies == replies:
                self._broker_silent = True
            return Delivery.TIMED_OUT
        if reply.kind == protocol.Kind.ACK:
            channel.acked += 1
            return Delivery.ACKED
        channel.nacked += 1

        return Delivery.NACKED

    def _await_reply(
        self,
        channel: _Channel,
        deadline: float,
        kind: protocol.Kind | None = None,
        seq: int | None = None,
    ) -> protocol.Reply | None:
        """The reply naming ``seq`` (or of ``kind``); stale replies are skipped."""
        sock = channel.socket
        while True:
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0 or not sock.poll(remaining_ms, zmq.POLLIN):
                return None
            reply = protocol.decode_reply(sock.recv_multipart(zmq.NOBLOCK))
            if isinstance(reply, protocol.FrameError):
                continue
            # Any reply, even a stale one, shows the broker is answering.
            self._replies += 1
            self._broker_silent = False
            if seq is not None and reply.kind != protocol.Kind.STATUS_REPLY:
                if reply.seq == seq:
                    return reply
            elif kind is not None and reply.kind == kind:
                return reply

    def _count(self, reason: str) -> None:
        with self._lock:
            dropped = self._dropped
            if reason not in dropped:
                # Past the bound ``other`` takes the last place, so a drop
                # report never names more reasons than a broker accepts.
                room = protocol.MAX_DROP_REASONS - (DropReason.OTHER not in dropped)
                if len(dropped) >= room or not protocol.is_drop_reason(reason):
                    reason = DropReason.OTHER
            dropped[reason] = dropped.get(reason, 0) + 1
            self._unreported[reason] = self._unreported.get(reason, 0) + 1

    def _report_drops(self, channel: _Channel) -> None:
        with self._lock:
            counts, self._unreported = self._unreported, {}
        if not counts:
            return
        frames = protocol.encode_drops(counts, host=self.host, pid=self.pid)
        try:
            _send_frames(channel.socket, frames)
        except zmq.ZMQError:
            sent = False
        else:
            sent = True
        with self._lock:
            target = self._reported if sent else self._unreported
            for reason, count in counts.items():
                target[reason] = target.get(reason, 0) + count


def _wait_for_room(sock: zmq.Socket, deadline: float) -> bool:
    """Wait until ``sock`` may take a message or ``deadline`` passes; False then."""
    remaining_ms = int((deadline - time.monotonic()) * 1000)
    if remaining_ms <= 0:
        return False
    sock.poll(remaining_ms, zmq.POLLOUT)

    return True


def _send_frames(sock: zmq.Socket, frames: list[bytes]) -> None:
    """Queue a multipart message; raises zmq.Again only if nothing was queued.

    ZeroMQ queues a multipart message whole or not at all: once the first
    frame is accepted, the others are too.
    """
    last = len(frames) - 1
    for index in range(last):
        _send_frame(sock, frames[index], _MORE)
    _send_frame(sock, frames[last], _LAST)


# Modules between an application's logging call and the emitter: a warning
# points at the first frame outside them.
_LIBRARY_MODULES = ("zlog", "structlog", "logging", "asyncio", "concurrent")


def _warn(message: str) -> None:
    """Warn at the application's line; never raises, even under ``-W error``.

    The caller may be a logging call, into which nothing may raise.
    """
    frame = sys._getframe(0)
    stacklevel = 1
    while frame is not None and _is_library(frame.f_globals.get("__name__", "")):
        frame = frame.f_back
        stacklevel += 1
    with contextlib.suppress(Exception):
        warnings.warn(message, stacklevel=stacklevel)


def _is_library(module: str) -> bool:
    return any(
        module == name or module.startswith(name + ".") for name in _LIBRARY_MODULES
    )


def _destroy_quietly(context: zmq.Context, linger_ms: int) -> None:
    # Nobody is left to tell at exit; the events still queued are lost.
    with contextlib.suppress(Exception):
        context.destroy(linger=linger_ms)


# The process's emitter, its settings, and what fork leaves behind.
_emitter: Emitter | None = None
_emitter_lock = threading.Lock()
_settings: dict = {}
_fork_generation = 0
_abandoned: list[Emitter] = []


def get_emitter() -> Emitter:
    """This process's emitter, created on first use (again after a fork)."""
    emitter = _emitter
    if emitter is not None:
        return emitter

    return _create_emitter()


def _create_emitter() -> Emitter:
    global _emitter
    with _emitter_lock:
        if _emitter is None:
            _emitter = Emitter(**_settings)
            _register_multiprocessing_exit()

    return _emitter


def configure(**settings) -> None:
    """Set the arguments of the process's emitter (see ``Emitter``).

    The current emitter, if any, is closed; the next event creates a new one
    with these settings. Forked children inherit them. An unknown name or a
    socket path that is not a path raises ``TypeError`` here, so that no
    logging call ever meets it; a value the broker connection cannot use (a
    path too long for a Unix socket, a negative queue) is found at the first
    event, which is dropped and counted as ``error``, with one warning.
    """
    global _emitter, _settings
    Emitter(**settings)
    with _emitter_lock:
        old, _emitter = _emitter, None
        _settings = dict(settings)
    if old is not None:
        old.close()


def stats() -> EmitterStats:
    """The counts of the process's emitter (zeros before it exists)."""
    emitter = _emitter

    return EmitterStats() if emitter is None else emitter.stats()


def flush(timeout_s: float = 1.0) -> bool:
    """Wait until the broker has received every event this thread sent.

    True when it has, False after ``timeout_s``. A pool task that ends with
    it loses nothing when the pool is terminated after the task (as leaving
    ``with multiprocessing.Pool()`` does). True at once when this process
    has sent nothing.
    """
    emitter = _emitter
    if emitter is None or emitter.pid != os.getpid():
        return True

    return emitter.flush(timeout_s)


def close(linger_ms: int | None = None) -> None:
    """Close the process's emitter now; a later event creates a new one."""
    global _emitter
    with _emitter_lock:
        old, _emitter = _emitter, None
    if old is not None and old.pid == os.getpid():
        old.close(linger_ms)


def _after_fork_in_child() -> None:
    global _emitter, _emitter_lock, _fork_generation
    # Keep the parent's emitter referenced so its context and sockets are
    # never touched here, not even by the garbage collector.
    if _emitter is not None:
        _abandoned.append(_emitter)
    _emitter = None
    _emitter_lock = threading.Lock()
    _fork_generation += 1


def _close_at_exit() -> None:
    emitter = _emitter
    if emitter is not None and emitter.pid == os.getpid():
        emitter.close()


def _register_multiprocessing_exit() -> None:
    # multiprocessing's children leave through os._exit, which skips atexit;
    # its finalizers run just before. Only hook them if multiprocessing is in.
    util = sys.modules.get("multiprocessing.util")
    if util is not None:
        util.Finalize(None, _close_at_exit, exitpriority=0)


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_close_at_exit)
