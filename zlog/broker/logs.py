"""The broker's own log: JSON lines on stderr, lifecycle only, warnings throttled.

The broker logs what an operator needs to follow its life (started, bound,
Kafka connected, draining, stopped) and degraded states. It never logs one
line per event and never a payload: per-event facts are counters, read with a
status request.

Libraries log through the standard ``logging`` module; aiokafka says so when
it cannot reach a node. ``JsonLogHandler`` turns their warnings and errors
into the broker's own JSON lines (event ``kafka_client``), throttled like
every other warning, so stderr never holds a line journald cannot parse.
"""

from __future__ import annotations

import logging
import sys
import time

import structlog

__all__ = ["JsonLogHandler", "RateLimiter", "configure_logging", "get_logger"]

# One warning of a kind per minute tells an operator that something is wrong
# without flooding journald when a misbehaving emitter sends thousands.
DEFAULT_WARNING_INTERVAL_S = 60.0

# Standard-library loggers whose records the broker takes into its own log.
LIBRARY_LOGGERS = ("aiokafka",)

# aiokafka's complaints about one topic's metadata, left out: the broker says
# the same itself, once per topic with the reason and the events refused
# (``kafka_rejected``), or refuses to start naming its own topic.
REPORTED_BY_THE_BROKER = frozenset(
    {
        "Topic %s not found in cluster metadata",
        "Topic %s is not authorized for this client",
    }
)


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
    for name in LIBRARY_LOGGERS:
        library = logging.getLogger(name)
        library.setLevel(logging.WARNING)
        library.addHandler(JsonLogHandler())
        library.propagate = False


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


class JsonLogHandler(logging.Handler):
    """Stdlib records of a library as the broker's warnings, rate-limited.

    Each message template passes at most once per interval, whatever its
    arguments; the line says how many were held back. The library's own
    level is kept in ``library_level``: a library's error (Kafka
    unreachable) is a degraded state for the broker, so a warning.
    """

    def __init__(self, limiter: RateLimiter | None = None) -> None:
        super().__init__(logging.WARNING)
        self.limiter = limiter or RateLimiter()

    def emit(self, record: logging.LogRecord) -> None:
        """Log ``record`` as one JSON line, unless its kind was seen lately."""
        if record.msg in REPORTED_BY_THE_BROKER:
            return
        try:
            suppressed = self.limiter.allow(f"{record.name}:{record.msg}")
            if suppressed is None:
                return
            get_logger().warning(
                "kafka_client",
                logger=record.name,
                library_level=record.levelname,
                message=record.getMessage(),
                similar_suppressed=suppressed,
            )
        except Exception:
            self.handleError(record)
