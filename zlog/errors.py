"""Exceptions raised by zlog.

::

    ZlogError
    ├── ConfigError          bad configuration: fix it and start again
    │   └── SocketPathError  the socket path cannot be used
    ├── BrokerRunningError   another broker already answers on the socket
    └── BrokerUnavailable    no broker answered in time (retriable)

The client never raises these into an application's logging call; they reach
code that starts a broker, checks a configuration or asks for a status.
"""

from __future__ import annotations

__all__ = [
    "BrokerRunningError",
    "BrokerUnavailable",
    "ConfigError",
    "SocketPathError",
    "ZlogError",
]


class ZlogError(Exception):
    """The root of every exception zlog raises."""

    retriable = False


class ConfigError(ZlogError):
    """A setting has a value zlog cannot use; the message names it."""


class SocketPathError(ConfigError):
    """The socket path is too long, or its directory cannot be made."""


class BrokerRunningError(ZlogError):
    """A live broker already answers on the socket this one would bind."""


class BrokerUnavailable(ZlogError):
    """No broker answered on the socket within the time allowed."""

    retriable = True
