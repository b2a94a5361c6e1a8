"""``zlog broker``: the command line of the broker daemon.

This module only parses arguments into a ``BrokerConfig``: its flags are the
rows of ``zlog.broker.settings.SETTINGS`` that have one, layered over the
configuration file and the environment. The daemon, ZeroMQ and aiokafka are
imported inside ``run`` so that ``zlog --help`` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import os

from zlog.broker import config as defaults
from zlog.broker import settings

__all__ = ["add_arguments", "config_from_args", "flags_from_args", "run"]

# Exit codes: 2 for a setting the operator must change (argparse uses 2 too),
# 3 when another broker already serves the socket, 1 for anything else.
EXIT_CONFIG = 2
EXIT_BROKER_RUNNING = 3
EXIT_FAILED = 1

_FIELDS = {f.name: f for f in dataclasses.fields(defaults.BrokerConfig)}

# Defaults that depend on the user or the machine, as the help shows them.
_DEFAULT_HELP = {
    "socket.path": "/run/zlog/broker.sock as root, else under $XDG_RUNTIME_DIR or /tmp",
    "spool.path": "$STATE_DIRECTORY/spool.db under systemd, /var/lib/zlog as "
    "root, else under $XDG_STATE_HOME/zlog or ~/.local/state/zlog",
    "kafka.compression": "zstd if available, else lz4, else gzip",
}


def _default_of(setting: settings.Setting) -> str:
    if setting.key in _DEFAULT_HELP:
        return _DEFAULT_HELP[setting.key]
    value = _FIELDS[setting.field].default
    if setting.field == "socket_mode":
        return f"{value:04o}"

    return "none" if value is None else str(value)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the broker's flags on ``parser``, one per setting that has one."""
    parser.add_argument(
        "--config",
        metavar="FILE",
        help=f"TOML configuration file (default: ${settings.CONFIG_ENV}, else "
        "none); the environment and flags override it",
    )
    groups: dict[str, argparse._ArgumentGroup] = {}
    for setting in settings.SETTINGS:
        if setting.flag is None:
            continue
        section = setting.key.split(".")[0]
        group = groups.get(section) or groups.setdefault(
            section, parser.add_argument_group(section)
        )
        help_text = (
            f"{setting.help} (${setting.env_var}, {setting.key}; "
            f"default: {_default_of(setting)})"
        )
        if _FIELDS[setting.field].type == "bool":
            extra = {"action": argparse.BooleanOptionalAction}
        else:
            extra = {"metavar": setting.key.split(".")[1].upper()}
        group.add_argument(
            setting.flag, dest=_dest(setting), help=help_text, default=None, **extra
        )


def _dest(setting: settings.Setting) -> str:
    return "setting_" + setting.key.replace(".", "_")


def flags_from_args(args: argparse.Namespace) -> dict[str, object]:
    """The settings given on the command line, by dotted key."""
    given = {}
    for setting in settings.SETTINGS:
        value = getattr(args, _dest(setting), None) if setting.flag else None
        if value is not None:
            given[setting.key] = value

    return given


def config_from_args(args: argparse.Namespace) -> defaults.BrokerConfig:
    """The ``BrokerConfig`` of the file, the environment and the parsed flags."""
    config, _ = settings.load(args.config, os.environ, flags_from_args(args))

    return config


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
