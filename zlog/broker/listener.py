"""The broker's one endpoint: a ZeroMQ ROUTER bound on a Unix socket.

Taking the socket path is done in a fixed order so that two brokers never
share one and a dead broker never blocks a new one:

1. the path is checked against the Unix length limit;
2. its directory is created (mode 0750) if missing;
3. a lock file beside the socket is locked (``flock``): a live broker holds
   it for its whole life, draining included, so a second one is refused;
4. if a socket file is still there, it is probed with a status request: an
   answer means a live broker (refused), silence means a stale file from a
   dead broker, which is removed;
5. the ROUTER binds, and the socket file gets its mode and group.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import stat
from pathlib import Path

import zmq
from zmq.utils.monitor import recv_monitor_message

from zlog.endpoint import check_socket_path, ipc_endpoint, request_status
from zlog.errors import BrokerRunningError, SocketPathError

__all__ = ["Connections", "Listener"]

# Mode of a socket directory the broker creates: group members may reach the
# socket inside, others may not list it.
DIRECTORY_MODE = 0o750

# How long a status probe waits for a live broker; a broker answers within
# milliseconds, so a second means nobody is there.
PROBE_TIMEOUT_S = 1.0

# Replies still queued when the broker closes its socket get this long to go.
CLOSE_LINGER_MS = 1000

# Replies queued per emitter connection before more are counted undeliverable.
# A spool append acks a whole cycle (up to 4096 events) at once, so ZeroMQ's
# default of 1000 would drop acks of a busy emitter; 65,536 small replies
# cost a few MB at most for an emitter that never reads them.
REPLY_HWM = 65_536


class Listener:
    """Owns the socket path, its lock file and the bound ROUTER socket."""

    def __init__(
        self,
        path: Path,
        *,
        mode: int,
        group: str | None,
        max_frame_bytes: int,
    ) -> None:
        self.path = path
        self.lock_path = path.with_name(path.name + ".lock")
        self.mode = mode
        self.group = group
        self.max_frame_bytes = max_frame_bytes
        self.context: zmq.Context | None = None
        self.socket: zmq.Socket | None = None
        self.connections: Connections | None = None
        self._lock_fd: int | None = None

    def bind(self) -> zmq.Socket:
        """Take the path as described in the module docstring; return the socket."""
        check_socket_path(self.path)
        self.context = zmq.Context()
        try:
            self._make_directory()
            self._take_lock()
            self._remove_stale_socket()
            self.socket = self._bind_router()
            self._set_owner_and_mode()
        except BaseException:
            self.close()
            raise

        return self.socket

    def stop_accepting(self) -> None:
        """Remove the socket file so new emitters cannot connect; others stay."""
        # Only a broker that bound the path may remove it: a refused one must
        # leave the live broker's socket alone.
        if self.socket is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def close(self) -> None:
        """Close the socket (queued replies get a short grace) and the lock."""
        if self.connections is not None:
            self.connections.close()
            self.connections = None
        if self.socket is not None:
            self.stop_accepting()
            self.socket.close(linger=CLOSE_LINGER_MS)
            self.socket = None
        if self.context is not None:
            self.context.term()
            self.context = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _make_directory(self) -> None:
        directory = self.path.parent
        if directory.is_dir():
            return
        try:
            directory.mkdir(mode=DIRECTORY_MODE, parents=True)
        except OSError as exc:
            raise SocketPathError(
                f"cannot create socket directory {str(directory)!r}: "
                f"{exc.strerror}; create it or choose another --socket"
            ) from exc

    def _take_lock(self) -> None:
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o640)
        except OSError as exc:
            raise SocketPathError(
                f"cannot open lock file {str(self.lock_path)!r}: {exc.strerror}"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise BrokerRunningError(
                f"another broker (pid {holder}) already serves {str(self.path)!r}; "
                "stop it first or choose another --socket"
            ) from exc
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _remove_stale_socket(self) -> None:
        try:
            mode = self.path.lstat().st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise SocketPathError(
                f"{str(self.path)!r} exists and is not a socket; "
                "remove it or choose another --socket"
            )
        # A broker predating the lock, or one whose lock file was deleted, may
        # still answer; it is never replaced.
        if request_status(self.path, PROBE_TIMEOUT_S, context=self.context) is not None:
            raise BrokerRunningError(
                f"a live broker already answers on {str(self.path)!r}; "
                "stop it first or choose another --socket"
            )
        self.path.unlink()

    def _bind_router(self) -> zmq.Socket:
        router = self.context.socket(zmq.ROUTER)
        # Oversize messages are refused inside libzmq (the sender is
        # disconnected), so they never cost the receive loop anything.
        router.setsockopt(zmq.MAXMSGSIZE, self.max_frame_bytes)
        # Replies to a vanished emitter raise instead of vanishing silently,
        # so they are counted.
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        router.sndhwm = REPLY_HWM
        router.linger = CLOSE_LINGER_MS
        # Watched from before the bind, so every connection is counted.
        self.connections = Connections(router)
        # The socket file is created by bind; the umask keeps it closed to
        # others from its first instant, before the chmod below.
        previous_umask = os.umask(0o777 & ~self.mode)
        try:
            router.bind(ipc_endpoint(self.path))
        except zmq.ZMQError as exc:
            self.connections.close()
            self.connections = None
            router.close(linger=0)
            raise SocketPathError(
                f"cannot bind {str(self.path)!r}: {exc.strerror}"
            ) from exc
        finally:
            os.umask(previous_umask)

        return router

    def _set_owner_and_mode(self) -> None:
        try:
            if self.group is not None:
                shutil.chown(self.path, group=self.group)
            os.chmod(self.path, self.mode)
        except (OSError, LookupError) as exc:
            raise SocketPathError(
                f"cannot give {str(self.path)!r} group {self.group!r} and mode "
                f"{self.mode:o}: {exc}"
            ) from exc


class Connections:
    """Emitter connections open on the broker's ROUTER, from its monitor events.

    ZeroMQ reports each accepted and each closed connection on a monitor
    socket; ``update`` reads what arrived since the last call. An emitter
    holds one connection per sending thread.
    """

    def __init__(self, router: zmq.Socket) -> None:
        self.router = router
        self.monitor = router.get_monitor_socket(
            zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED
        )
        # Read about once a second, so the queue must hold a burst of
        # reconnecting emitters.
        # TODO: libzmq's sending end of the monitor queue keeps its default
        # bound of 1,000 events; more connects and disconnects than that
        # between two reads are lost and skew the count.
        self.monitor.rcvhwm = 0
        self.open = 0

    def update(self) -> int:
        """The number of connections open now."""
        while True:
            try:
                event = recv_monitor_message(self.monitor, zmq.NOBLOCK)
            except zmq.Again:
                return self.open
            self.open += 1 if event["event"] == zmq.EVENT_ACCEPTED else -1

    def close(self) -> None:
        """Stop monitoring; must come before the ROUTER's context ends."""
        self.router.disable_monitor()
        self.monitor.close(linger=0)
