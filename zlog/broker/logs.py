"""The broker's own log: JSON lines on stderr, lifecycle only, warnings throttled.

The broker logs what an operator needs to follow its life (started, bound,
Kafka connected, draining, stopped) and degraded states. It never logs one
line per event and never a payload: per-event facts are counters, read with a
status request.
"""

from __future__ import annotations

import logging
import sys
import time

import structlog

__all__ = ["RateLimiter", "configure_logging", "get_logger"]

# One warning of a kind per minute tells an operator that something is wrong
# without flooding journald when a misbehaving emitter sends thousands.
DEFAULT_WARNING_INTERVAL_S = 60.0


def configure_logging(level: int = logging.INFO) -> None:
    """Send structlog output to stderr as one JSON object per line."""
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(sort_keys=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


def get_logger() -> structlog.typing.FilteringBoundLogger:
    """The broker's logger, tagged so its lines are easy to pick out."""
    return structlog.get_logger().bind(component="zlog-broker")


class RateLimiter:
    """Lets through one warning per key per interval and counts the rest."""

    def __init__(self, interval_s: float = DEFAULT_WARNING_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def allow(self, key: str) -> int | None:
        """None when ``key`` was let through recently, else how many were held."""
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return None
        self._last[key] = now

        return self._suppressed.pop(key, 0)
