"""What one log call costs the caller, in microseconds per event (p50 / p99).

Runs a stand-in broker (a ZeroMQ ROUTER that only drains) in a subprocess so
the numbers measure the client alone, then times, event by event:

- a bare emit of a ready envelope, and an application envelope built + sent;
- a typical structlog chain rendering JSON, without and with ZlogProcessor;
- a stdlib logger with ZlogHandler;
- for the threading choice: a thread-local lookup against a lock round trip.

Usage: python benchmarks/emit_cost.py [--events N]
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import structlog

# Submodules, not the package's re-exports: they import the same way from a
# script in benchmarks/ whatever kind of install the checkout has.
from zlog.client import emitter as zlog_emitter
from zlog.client.envelope import EnvelopeBuilder
from zlog.client.handler import ZlogHandler
from zlog.client.processor import ZlogProcessor

DRAIN = """
import sys, zmq
sock = zmq.Context().socket(zmq.ROUTER)
sock.rcvhwm = 0  # never push back: the numbers are the client's alone
sock.bind("ipc://" + sys.argv[1])
print("ready", flush=True)
while True:
    sock.recv_multipart()
"""


def percentiles(samples_ns: list[int]) -> tuple[float, float]:
    samples_ns.sort()
    p50 = samples_ns[len(samples_ns) // 2]
    p99 = samples_ns[len(samples_ns) * 99 // 100]

    return p50 / 1000, p99 / 1000


def timed(call, events: int) -> tuple[float, float]:
    for _ in range(min(events // 10, 2000)):
        call()
    samples = []
    clock = time.perf_counter_ns
    for _ in range(events):
        started = clock()
        call()
        samples.append(clock() - started)

    return percentiles(samples)


def structlog_chain(with_zlog: bool):
    processors = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso"),
    ]
    if with_zlog:
        processors.append(ZlogProcessor(service_name="bench", tenant_id="t"))
    processors.append(structlog.processors.JSONRenderer())
    structlog.configure(
        processors=processors,
        logger_factory=structlog.WriteLoggerFactory(io.StringIO()),
        cache_logger_on_first_use=True,
    )
    log = structlog.get_logger().bind(request_id="r-1")

    return lambda: log.info("order placed", order_id=42, amount=9.5)


def stdlib_logger():
    logger = logging.getLogger("bench.handler")
    logger.handlers[:] = [ZlogHandler(service_name="bench", tenant_id="t")]
    logger.setLevel(logging.INFO)
    logger.propagate = False

    return lambda: logger.info("order %s placed", 42, extra={"amount": 9.5})


def run(events: int) -> list[tuple[str, float, float]]:
    builder = EnvelopeBuilder()

    def build() -> tuple:
        return builder.application(
            service_name="bench",
            instance_id="host:1",
            level="INFO",
            logger="bench",
            message="order placed",
            code="",
            context={"order_id": 42, "amount": 9.5},
            tenant_id="t",
        )

    ready = build()
    emitter = zlog_emitter.get_emitter()
    local = threading.local()
    local.value = 1
    lock = threading.Lock()

    def lock_round_trip() -> None:
        with lock:
            pass

    rows = [
        ("bare emit (ready envelope)", lambda: emitter.send(*ready)),
        ("build envelope + emit", lambda: emitter.send(*build())),
        ("structlog chain, no zlog", structlog_chain(False)),
        ("structlog chain + ZlogProcessor", structlog_chain(True)),
        ("logging + ZlogHandler", stdlib_logger()),
        ("thread-local lookup", lambda: local.value),
        ("lock acquire + release", lock_round_trip),
    ]

    return [(name, *timed(call, events)) for name, call in rows]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    args = parser.parse_args()
    socket_dir = Path(tempfile.mkdtemp(prefix="zlog-bench-"))
    socket_path = socket_dir / "broker.sock"
    drain = subprocess.Popen(
        [sys.executable, "-c", DRAIN, str(socket_path)], stdout=subprocess.PIPE
    )
    try:
        drain.stdout.readline()
        os.environ["ZLOG_SOCKET"] = str(socket_path)
        zlog_emitter.configure(socket_path=str(socket_path))
        rows = run(args.events)
        stats = zlog_emitter.stats()
    finally:
        zlog_emitter.close(0)
        drain.kill()
        drain.wait()
        socket_path.unlink(missing_ok=True)
        socket_dir.rmdir()
    print(f"{'path':<34} {'p50 µs':>8} {'p99 µs':>8}")
    for name, p50, p99 in rows:
        print(f"{name:<34} {p50:>8.2f} {p99:>8.2f}")
    print(f"sent {stats.sent}, dropped {stats.dropped or 'none'}")

    return 0


if __name__ == "__main__":
    sys.exit(main())
