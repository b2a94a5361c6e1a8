"""Where the broker's socket lives, shared by the broker and its clients.

The socket path comes from, in order: an explicit argument, ``$ZLOG_SOCKET``,
then a default that works both for a system service and for an ordinary
user: ``/run/zlog/broker.sock`` when running as root or when a system broker
already serves it, ``$XDG_RUNTIME_DIR/zlog/broker.sock`` when that directory
exists, else ``/tmp/zlog-<uid>/broker.sock``.
"""

from __future__ import annotations

import os
from pathlib import Path

import zmq

from zlog import protocol
from zlog.errors import SocketPathError

__all__ = [
    "MAX_SOCKET_PATH_BYTES",
    "check_socket_path",
    "default_socket_path",
    "ipc_endpoint",
    "request_status",
    "resolve_socket_path",
]

# sockaddr_un.sun_path is 108 bytes on Linux, one of them the closing NUL.
MAX_SOCKET_PATH_BYTES = 107

SYSTEM_SOCKET_PATH = Path("/run/zlog/broker.sock")


def default_socket_path() -> Path:
    """The socket path used when neither an argument nor ZLOG_SOCKET names one."""
    # Application users of a host with the system service (docs/systemd.md)
    # find its socket without setting ZLOG_SOCKET (os.path.exists, not
    # Path.exists: a user outside the zlog group gets EACCES, not an answer).
    if os.geteuid() == 0 or os.path.exists(SYSTEM_SOCKET_PATH):
        return SYSTEM_SOCKET_PATH
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
    if runtime_dir and Path(runtime_dir).is_dir():
        return Path(runtime_dir) / "zlog" / "broker.sock"

    return Path(f"/tmp/zlog-{os.getuid()}") / "broker.sock"


def resolve_socket_path(path: str | os.PathLike[str] | None = None) -> Path:
    """The socket path from ``path``, else ``$ZLOG_SOCKET``, else the default."""
    if path:
        return Path(path)
    from_env = os.environ.get("ZLOG_SOCKET")
    if from_env:
        return Path(from_env)

    return default_socket_path()


def check_socket_path(path: Path) -> None:
    """Raise SocketPathError when ``path`` is too long for a Unix socket."""
    length = len(os.fsencode(path))
    if length > MAX_SOCKET_PATH_BYTES:
        raise SocketPathError(
            f"socket path {str(path)!r} is {length} bytes, over the Unix limit "
            f"of {MAX_SOCKET_PATH_BYTES}; choose a shorter --socket"
        )


def ipc_endpoint(path: Path) -> str:
    """The ZeroMQ endpoint for a socket path."""
    return f"ipc://{path}"


def request_status(
    path: Path, timeout_s: float = 1.0, *, context: zmq.Context | None = None
) -> bytes | None:
    """Ask whoever serves ``path`` for its status document.

    Returns the document (JSON bytes), or None when nothing answers within
    ``timeout_s`` or the answer does not decode. The broker uses it to find a
    live predecessor; ``zlog status``, the demo and the tests to find a ready
    broker.
    """
    context = context or zmq.Context.instance()
    sock = context.socket(zmq.DEALER)
    sock.linger = 0
    try:
        sock.connect(ipc_endpoint(path))
        sock.send_multipart(protocol.encode_status_request(os.getpid()))
        if not sock.poll(int(timeout_s * 1000)):
            return None
        reply = protocol.decode_reply(sock.recv_multipart())
    finally:
        sock.close()
    if isinstance(reply, protocol.FrameError):
        return None

    return reply.body
