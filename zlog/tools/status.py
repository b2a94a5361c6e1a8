"""``zlog status``: ask the running broker how it is doing.

The request is the protocol's STATUS message, sent over the broker's own
socket, so it needs nothing the emitters do not already have. The exit code
makes the command a health check: 0 healthy, 1 degraded (Kafka not taking
batches, events going to the spool, or the broker draining), 2 when no broker
answered.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from typing import Any

__all__ = ["EXIT_DEGRADED", "EXIT_HEALTHY", "EXIT_NO_BROKER", "add_arguments", "run"]

EXIT_HEALTHY = 0
EXIT_DEGRADED = 1
EXIT_NO_BROKER = 2

# A broker answers within milliseconds; one busy behind a slow Kafka batch
# may take a few seconds (docs/broker.md, back-pressure).
DEFAULT_TIMEOUT_S = 5.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``zlog status``'s flags."""
    parser.add_argument(
        "--socket", help="broker socket (default: $ZLOG_SOCKET, else as zlog broker)"
    )
    parser.add_argument(
        "--json", action="store_true", help="print the whole status document as JSON"
    )
    parser.add_argument(
        "--timeout-s",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help="seconds to wait for an answer (default: %(default)s)",
    )


def health(status: dict[str, Any]) -> tuple[int, list[str]]:
    """The exit code a status document deserves, and the reasons for it."""
    problems = []
    kafka_state = status.get("kafka", {}).get("state")
    if kafka_state != "connected":
        problems.append(f"Kafka is {kafka_state}")
    if status.get("spool", {}).get("spooling"):
        problems.append("events are going to the spool")
    if status.get("state") != "serving":
        problems.append(f"the broker is {status.get('state')}")

    return (EXIT_DEGRADED if problems else EXIT_HEALTHY), problems


def summary(status: dict[str, Any]) -> str:
    """A few lines a person reads at a glance."""
    code, problems = health(status)
    started = datetime.datetime.fromtimestamp(status["started_at"], datetime.UTC)
    totals = status["totals"]
    rates = status.get("rates") or {}
    spool = status["spool"]
    kafka = status["kafka"]
    drops = sum(status["emitter_drops_total"].values())
    lost = sum(status["losses_reported"].values())
    lines = [
        f"broker    pid {status['pid']} on {status['socket']}, {status['state']}, "
        f"up since {started:%Y-%m-%d %H:%M:%S} UTC "
        f"({_duration(status['uptime_s'])})",
        f"kafka     {kafka['state']} ({kafka['bootstrap_servers']})"
        + (f", last error: {kafka['last_error']}" if kafka.get("last_error") else ""),
        _rates_line(rates),
        f"totals    {totals['received']:,} received, {totals['published']:,} "
        f"published, {totals['spooled']:,} spooled, {totals['replayed']:,} "
        f"replayed, {totals['failed']:,} failed, {totals['dead_lettered']:,} "
        "dead-lettered",
        f"spool     {spool['events']:,} events, {spool['size_bytes']:,} of "
        f"{spool['max_bytes']:,} bytes" + (", spooling" if spool["spooling"] else ""),
        f"emitters  {status.get('connections', 0):,} connections open, "
        f"{status['sequence']['origins']:,} origins (host, pid) seen",
        f"loss      {drops:,} dropped by emitters, "
        f"{status['sequence']['missing']:,} missing from sequences, "
        f"{lost:,} reported as zlog.loss",
        "health    " + ("healthy" if code == EXIT_HEALTHY else "; ".join(problems)),
    ]

    return "\n".join(lines)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"

    return f"{minutes}m {secs}s"


def run(args: argparse.Namespace) -> int:
    """Print the broker's status; the exit code says how healthy it is."""
    from zlog.endpoint import request_status, resolve_socket_path

    path = resolve_socket_path(args.socket)
    body = request_status(path, args.timeout_s) if path.exists() else None
    if body is None:
        print(f"zlog status: no broker answers on {str(path)!r}", file=sys.stderr)
        return EXIT_NO_BROKER
    status = json.loads(body)
    print(json.dumps(status, indent=2) if args.json else summary(status))

    return health(status)[0]


def _rates_line(rates: dict) -> str:
    # The broker works out its first rates a few seconds after it starts;
    # until then a zero would read as "idle".
    if "interval_s" not in rates:
        return "rates     not measured yet (the first sample comes 5 s after start)"

    return (
        f"rates     {rates['received_per_s']:,.0f} events/s in, "
        f"{rates['published_per_s']:,.0f}/s to Kafka, "
        f"{rates['spooled_per_s']:,.0f}/s to the spool "
        f"(over the last {rates['interval_s']:.0f} s)"
    )
