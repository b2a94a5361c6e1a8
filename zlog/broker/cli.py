"""``zlog broker``: the command line of the broker daemon.

This module only parses arguments into a ``BrokerConfig``; the daemon, ZeroMQ
and aiokafka are imported inside ``run`` so that ``zlog --help`` stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from zlog.broker import config as defaults

__all__ = ["add_arguments", "config_from_args", "run"]

# Exit codes: 2 for a setting the operator must change (argparse uses 2 too),
# 3 when another broker already serves the socket, 1 for anything else.
EXIT_CONFIG = 2
EXIT_BROKER_RUNNING = 3
EXIT_FAILED = 1


def _mode(text: str) -> int:
    try:
        return int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an octal mode") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the broker's flags on ``parser``."""
    parser.add_argument(
        "--socket",
        help="Unix socket path (default: $ZLOG_SOCKET, else /run/zlog/broker.sock "
        "as root, else under $XDG_RUNTIME_DIR or /tmp)",
    )
    parser.add_argument(
        "--bootstrap-servers",
        help="Kafka bootstrap servers (default: $KAFKA_BOOTSTRAP_SERVERS, else "
        f"{defaults.DEFAULT_BOOTSTRAP_SERVERS})",
    )
    topics = parser.add_argument_group("topics")
    for name, default in (
        ("application", defaults.DEFAULT_APPLICATION_TOPIC),
        ("audit", defaults.DEFAULT_AUDIT_TOPIC),
        ("security", defaults.DEFAULT_SECURITY_TOPIC),
    ):
        topics.add_argument(
            f"--{name}-topic",
            default=default,
            help=f"topic for {name} events (default: %(default)s)",
        )
    topics.add_argument(
        "--topic-partitions",
        type=int,
        default=defaults.DEFAULT_TOPIC_PARTITIONS,
        help="partitions of topics the broker creates (default: %(default)s)",
    )
    topics.add_argument(
        "--topic-replication",
        type=int,
        default=defaults.DEFAULT_TOPIC_REPLICATION,
        help="replication factor of topics the broker creates (default: %(default)s)",
    )
    topics.add_argument(
        "--no-create-topics",
        dest="create_topics",
        action="store_false",
        help="do not create missing topics at start",
    )
    kafka = parser.add_argument_group("producer")
    kafka.add_argument(
        "--linger-ms",
        type=int,
        default=defaults.DEFAULT_LINGER_MS,
        help="producer linger in milliseconds (default: %(default)s)",
    )
    kafka.add_argument(
        "--compression",
        choices=("zstd", "lz4", "gzip", "snappy", "none"),
        help="compression codec (default: zstd if available, else lz4, else gzip)",
    )
    endpoint = parser.add_argument_group("socket")
    endpoint.add_argument(
        "--socket-mode",
        type=_mode,
        default=defaults.DEFAULT_SOCKET_MODE,
        help="octal mode of the socket file (default: 0660)",
    )
    endpoint.add_argument("--socket-group", help="group owning the socket file")
    endpoint.add_argument(
        "--max-frame-bytes",
        type=int,
        default=defaults.DEFAULT_MAX_FRAME_BYTES,
        help="largest frame accepted; larger ones are refused by ZeroMQ "
        "(default: %(default)s)",
    )
    kafka.add_argument(
        "--send-timeout-s",
        type=float,
        default=defaults.DEFAULT_SEND_TIMEOUT_S,
        help="seconds Kafka may take to acknowledge a batch before it is spooled "
        "(default: %(default)s)",
    )
    spool = parser.add_argument_group("spool")
    spool.add_argument(
        "--spool-path",
        help="spool file (default: /var/lib/zlog/spool.db as root, else under "
        "$XDG_STATE_HOME/zlog or ~/.local/state/zlog)",
    )
    spool.add_argument(
        "--spool-max-bytes",
        type=int,
        default=defaults.DEFAULT_SPOOL_MAX_BYTES,
        help="bound of the spool's stored data (default: %(default)s)",
    )
    spool.add_argument(
        "--spool-drop-policy",
        choices=("application-only", "any-class"),
        default="application-only",
        help="what a full spool may evict: application events only, or audit "
        "and security too once they are gone (default: %(default)s)",
    )
    parser.add_argument(
        "--loss-report-interval-s",
        type=float,
        default=defaults.DEFAULT_LOSS_REPORT_INTERVAL_S,
        help="how often known losses are published as zlog.loss events "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--drain-timeout-s",
        type=float,
        default=defaults.DEFAULT_DRAIN_TIMEOUT_S,
        help="seconds allowed to publish what was received after SIGTERM "
        "(default: %(default)s)",
    )


def config_from_args(args: argparse.Namespace) -> defaults.BrokerConfig:
    """The ``BrokerConfig`` the parsed flags describe."""
    from zlog.endpoint import resolve_socket_path

    compression = args.compression or defaults.default_compression()

    return defaults.BrokerConfig(
        socket_path=resolve_socket_path(args.socket),
        bootstrap_servers=defaults.bootstrap_servers_from(args.bootstrap_servers),
        application_topic=args.application_topic,
        audit_topic=args.audit_topic,
        security_topic=args.security_topic,
        create_topics=args.create_topics,
        topic_partitions=args.topic_partitions,
        topic_replication=args.topic_replication,
        linger_ms=args.linger_ms,
        compression=compression,
        socket_mode=args.socket_mode,
        socket_group=args.socket_group,
        max_frame_bytes=args.max_frame_bytes,
        drain_timeout_s=args.drain_timeout_s,
        send_timeout_s=args.send_timeout_s,
        spool_path=Path(args.spool_path) if args.spool_path else None,
        spool_max_bytes=args.spool_max_bytes,
        spool_drop_policy=args.spool_drop_policy,
        loss_report_interval_s=args.loss_report_interval_s,
    )


def run(args: argparse.Namespace) -> int:
    """Run the broker until SIGTERM or SIGINT; return the exit code."""
    import asyncio

    from aiokafka.errors import KafkaError

    from zlog.broker.daemon import run_broker
    from zlog.broker.logs import configure_logging, get_logger
    from zlog.broker.spool import SpoolError, SpoolLockedError
    from zlog.errors import BrokerRunningError, ConfigError

    configure_logging()
    log = get_logger()
    try:
        config = config_from_args(args)
        return asyncio.run(run_broker(config))
    except (BrokerRunningError, SpoolLockedError) as exc:
        log.error("refused", reason=str(exc))
        return EXIT_BROKER_RUNNING
    except ConfigError as exc:
        log.error("refused", reason=str(exc))
        return EXIT_CONFIG
    except SpoolError as exc:
        log.error("failed", reason=str(exc), hint="check the --spool-path file")
        return EXIT_FAILED
    except KafkaError as exc:
        log.error(
            "failed",
            reason=str(exc) or type(exc).__name__,
            hint="check that Kafka is reachable at --bootstrap-servers",
        )
        return EXIT_FAILED
    except OSError as exc:
        log.error("failed", reason=f"{type(exc).__name__}: {exc}")
        return EXIT_FAILED
