"""What the broker tells systemd: ready, alive, what it is doing, stopping.

systemd's notify protocol is one datagram per message, ``KEY=value`` lines,
sent to the Unix socket named by ``$NOTIFY_SOCKET`` (a leading ``@`` means
the abstract namespace). It is small enough to speak directly: the one
package on PyPI for it (sdnotify) has not been released since 2017, and
linking libsystemd would tie the broker to one C library for a single
``sendto``.

Outside systemd ``$NOTIFY_SOCKET`` is unset and every call does nothing, so
the broker runs the same way in a terminal, a container or a unit.
"""

from __future__ import annotations

import os
import socket

__all__ = ["Notifier"]


class Notifier:
    """Sends notify messages to the socket systemd named, if it named one."""

    def __init__(self, address: str | None, watchdog_interval_s: float | None):
        self.address = address
        # How often to send WATCHDOG=1: half the interval systemd allows.
        self.watchdog_interval_s = watchdog_interval_s
        self._socket: socket.socket | None = None

    @classmethod
    def from_environment(cls, env: dict[str, str] | None = None) -> Notifier:
        """A notifier for ``$NOTIFY_SOCKET`` and ``$WATCHDOG_USEC``."""
        env = os.environ if env is None else env
        address = env.get("NOTIFY_SOCKET") or None
        if address and address.startswith("@"):
            address = "\0" + address[1:]
        watchdog_usec = env.get("WATCHDOG_USEC", "")
        # The watchdog is meant for the process WATCHDOG_PID names, when set.
        owner = env.get("WATCHDOG_PID", "")
        ours = not owner or owner == str(os.getpid())
        interval_s = None
        if address and ours and watchdog_usec.isdigit() and int(watchdog_usec) > 0:
            interval_s = int(watchdog_usec) / 2e6

        return cls(address, interval_s)

    @property
    def enabled(self) -> bool:
        """Whether a supervisor listens."""
        return self.address is not None

    def send(self, **fields: object) -> bool:
        """Send one message; False when nobody listens or the send failed."""
        if self.address is None:
            return False
        message = "\n".join(f"{key}={value}" for key, value in fields.items())
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._socket.setblocking(False)
            self._socket.sendto(message.encode(), self.address)
        except OSError:
            # systemd went away or its queue is full: the broker's work goes
            # on, and the next message tries again.
            return False

        return True

    def ready(self, status: str) -> bool:
        """The socket is bound and events are safe: in Kafka or the spool."""
        return self.send(READY=1, STATUS=status, MAINPID=os.getpid())

    def stopping(self, status: str) -> bool:
        """Draining has begun."""
        return self.send(STOPPING=1, STATUS=status)

    def status(self, status: str) -> bool:
        """A one-line summary systemctl status shows."""
        return self.send(STATUS=status)

    def watchdog(self) -> bool:
        """The event loop is alive."""
        return self.send(WATCHDOG=1)

    def close(self) -> None:
        """Close the datagram socket."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None
