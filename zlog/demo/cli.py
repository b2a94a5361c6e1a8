"""``zlog demo``: replay real system logs through a broker into Kafka, then check.

The run, in order: create three fresh topics, start a broker on a private
socket, replay the sample files from a worker pool with a progress bar, stop
the broker (SIGTERM drains it), read the topics back and print the table
with the exactly-once verdict. The exit code is 0 only when every line
arrived exactly once and the broker exited cleanly; 130 after Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

__all__ = ["add_arguments", "run"]

DEFAULT_BOOTSTRAP_SERVERS = "127.0.0.1:9092"
DEFAULT_WORKERS = 4
DEFAULT_SERVICE_NAME = "loghub-replay"
DEFAULT_TENANT_ID = "demo"

# Where the samples live in a checkout of the repository.
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "examples" / "data" / "loghub"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The demo's options; cheap, no heavy imports."""
    parser.add_argument(
        "--workers",
        type=int,
        default=DEFAULT_WORKERS,
        help="worker processes in the pool (default %(default)s)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="replay the files N times; each pass is checked on its own",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="cap the whole pool at this many events/s (default: no cap)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help="directory holding the four Loghub sample files",
    )
    parser.add_argument(
        "--bootstrap-servers",
        default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", DEFAULT_BOOTSTRAP_SERVERS),
        help="Kafka bootstrap servers (default $KAFKA_BOOTSTRAP_SERVERS or "
        f"{DEFAULT_BOOTSTRAP_SERVERS})",
    )
    parser.add_argument(
        "--topic-prefix",
        help="topics are PREFIX.application, .audit, .security "
        "(default: zlog-demo-<time>-<random>, new on every run)",
    )
    for event_class in ("application", "audit", "security"):
        parser.add_argument(
            f"--{event_class}-topic",
            help=f"topic for {event_class} events (overrides --topic-prefix)",
        )
    parser.add_argument(
        "--service-name",
        default=DEFAULT_SERVICE_NAME,
        help="service_name of the replaying application (default %(default)s)",
    )
    parser.add_argument(
        "--tenant-id",
        default=DEFAULT_TENANT_ID,
        help="tenant of the audit and security events (default %(default)s)",
    )
    parser.add_argument(
        "--start-method",
        choices=("fork", "forkserver", "spawn"),
        help="multiprocessing start method of the pool (default: the platform's)",
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="do not draw the progress bar"
    )
    parser.add_argument(
        "--delete-topics",
        action="store_true",
        help="delete the topics after checking them",
    )


def run(args: argparse.Namespace) -> int:
    """Run the demo; 0 when every line arrived exactly once."""
    from zlog.demo.runner import DemoRun

    return DemoRun.from_args(args).run()
