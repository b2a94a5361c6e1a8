"""``zlog tail``: print events from the zlog topics as they arrive, one a line.

For a person debugging: it reads the topics a broker writes (from a broker
configuration file, the environment and flags, as ``zlog broker`` reads
them), keeps the events that match every filter given, and prints each as a
short line, or as its envelope with ``--json``. It joins no consumer group
and commits nothing, so it never disturbs real consumers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any, TextIO

__all__ = ["Filter", "add_arguments", "format_line", "run"]

CLASSES = ("application", "audit", "security")

# Levels in rising order; --level keeps that level and the ones above it.
LEVELS = ("DEBUG", "INFO", "WARN", "ERROR")
_LEVEL_ALIASES = {"WARNING": "WARN", "CRITICAL": "ERROR", "FATAL": "ERROR"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``zlog tail``'s flags."""
    parser.add_argument("--config", metavar="FILE", help="broker configuration file")
    parser.add_argument(
        "--bootstrap-servers",
        help="Kafka bootstrap servers (default: as zlog broker reads them)",
    )
    parser.add_argument(
        "--class",
        dest="classes",
        action="append",
        choices=CLASSES,
        help="only events of this class (repeatable)",
    )
    parser.add_argument(
        "--service",
        dest="services",
        action="append",
        help="only application events of this service (repeatable)",
    )
    parser.add_argument(
        "--level",
        type=str.upper,
        choices=LEVELS,
        help="only application events at this level or above",
    )
    parser.add_argument(
        "--from-beginning",
        action="store_true",
        help="start at the oldest event kept, not at the newest",
    )
    parser.add_argument("--json", action="store_true", help="print whole envelopes")
    parser.add_argument(
        "--max-events", type=int, help="stop after printing this many events"
    )
    parser.add_argument(
        "--timeout-s", type=float, help="stop after this many seconds in all"
    )


class Filter:
    """Decides which envelopes are printed."""

    def __init__(
        self,
        classes: list[str] | None = None,
        services: list[str] | None = None,
        level: str | None = None,
    ) -> None:
        self.classes = set(classes or CLASSES)
        self.services = set(services or ())
        self.min_level = LEVELS.index(level) if level else 0

    def keeps(self, event_class: str, envelope: dict[str, Any] | None) -> bool:
        """Whether an envelope of ``event_class`` passes every filter.

        A record that is not a JSON object (None here) has no service or
        level, so only the class filter can keep it.
        """
        if event_class not in self.classes:
            return False
        if not (self.services or self.min_level):
            return True
        if envelope is None:
            return False
        if event_class != "application":
            # Audit and security events have neither service nor level.
            return not self.services
        payload = envelope.get("payload") or {}
        if self.services and payload.get("service_name") not in self.services:
            return False

        return _level_rank(payload.get("level")) >= self.min_level


def _level_rank(level: object) -> int:
    name = str(level).upper()
    name = _LEVEL_ALIASES.get(name, name)

    return LEVELS.index(name) if name in LEVELS else len(LEVELS)


def format_line(event_class: str, envelope: dict[str, Any]) -> str:
    """One line: time, class, then what matters for that class."""
    payload = envelope.get("payload") or {}
    when = str(envelope.get("timestamp", "-"))
    if event_class == "application":
        what = (
            f"{payload.get('level', '-')!s:<5} {payload.get('service_name', '-')} "
            f"{payload.get('logger', '-')}: {payload.get('message', '')}"
        )
    elif event_class == "audit":
        what = (
            f"tenant={envelope.get('tenant_id')} actor={payload.get('actor')} "
            f"{payload.get('action')} {payload.get('resource')} -> "
            f"{payload.get('outcome')}"
        )
    else:
        what = (
            f"tenant={envelope.get('tenant_id')} user={payload.get('user_id')} "
            f"{payload.get('event_type')} {payload.get('resource')} -> "
            f"{payload.get('decision')}"
        )

    return f"{when} {event_class:<11} {what}"


async def _tail(
    config: Any,
    by_topic: dict[str, str],
    args: argparse.Namespace,
    out: TextIO,
) -> int:
    from aiokafka import AIOKafkaConsumer

    keep = Filter(args.classes, args.services, args.level)
    consumer = AIOKafkaConsumer(
        *by_topic,
        **config.kafka_client_options(),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest" if args.from_beginning else "latest",
        client_id="zlog-tail",
    )
    await consumer.start()
    printed = 0
    deadline = time.monotonic() + args.timeout_s if args.timeout_s else None
    try:
        while args.max_events is None or printed < args.max_events:
            if deadline is not None and time.monotonic() >= deadline:
                break
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                for record in records:
                    line = _render(record, by_topic[record.topic], keep, args.json)
                    if line is None:
                        continue
                    print(line, file=out, flush=True)
                    printed += 1
                    if printed == args.max_events:
                        return 0
    finally:
        await consumer.stop()

    return 0


def _render(record: Any, event_class: str, keep: Filter, raw: bool) -> str | None:
    try:
        envelope = json.loads(record.value)
    except (TypeError, ValueError):
        envelope = None
    if not isinstance(envelope, dict):
        envelope = None
    if not keep.keeps(event_class, envelope):
        return None
    if envelope is None:
        where = f"{record.topic}[{record.partition}]@{record.offset}"
        return f"{where}: {len(record.value or b'')} bytes, not a JSON object"
    if raw:
        return json.dumps(envelope, separators=(",", ":"))

    return format_line(event_class, envelope)


def run(args: argparse.Namespace) -> int:
    """Print matching events until interrupted or a bound is reached."""
    from zlog.broker import settings
    from zlog.errors import ConfigError

    flags = {}
    if args.bootstrap_servers:
        flags["kafka.bootstrap_servers"] = args.bootstrap_servers
    try:
        config, _ = settings.load(args.config, os.environ, flags)
    except ConfigError as exc:
        print(f"zlog tail: {exc}", file=sys.stderr)
        return 2
    by_topic = dict(zip(config.topics, CLASSES, strict=True))
    try:
        return asyncio.run(_tail(config, by_topic, args, sys.stdout))
    except KeyboardInterrupt:
        return 0
