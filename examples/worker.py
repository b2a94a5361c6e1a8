"""An example worker: logs through structlog, and zlog ships the events to Kafka.

It is the ``worker`` service of docker-compose.yml, and runs as well on a host
with a broker::

    ZLOG_SOCKET=/run/zlog/broker.sock python examples/worker.py --count 10

Every second it logs an application event, and every fifth one an audit and a
security event too. ``zlog tail`` shows them arriving in Kafka.
"""

from __future__ import annotations

import argparse
import itertools
import random
import time

import structlog

import zlog


def configure(service_name: str) -> structlog.typing.FilteringBoundLogger:
    """structlog with the zlog processor in its chain, rendering to stdout too."""
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            zlog.ZlogProcessor(service_name=service_name, tenant_id="example"),
            structlog.processors.JSONRenderer(),
        ],
        cache_logger_on_first_use=True,
    )

    return structlog.get_logger("example.worker")


def work(log: structlog.typing.FilteringBoundLogger, number: int) -> None:
    """One unit of pretend work and the events it logs."""
    took_ms = random.randint(5, 250)
    if took_ms > 200:
        log.warning("slow order", order=number, took_ms=took_ms)
    else:
        log.info("order processed", order=number, took_ms=took_ms)
    if number % 5 == 0:
        log.info(
            "refund approved",
            event_class="audit",
            action="refund.approve",
            actor="clerk-7",
            resource=f"order/{number}",
            outcome="success",
        )
        log.info(
            "vault access",
            event_class="security",
            event_type="secret.read",
            user_id="svc-payments",
            resource="vault/payments",
            decision="allow" if number % 10 else "deny",
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--service-name", default="example-worker")
    parser.add_argument("--interval-s", type=float, default=1.0)
    parser.add_argument(
        "--count", type=int, help="stop after this many (default: never)"
    )
    args = parser.parse_args()
    log = configure(args.service_name)
    numbers = range(1, args.count + 1) if args.count else itertools.count(1)
    for number in numbers:
        work(log, number)
        time.sleep(args.interval_s)


if __name__ == "__main__":
    main()
