"""The ``zlog`` command: one subcommand per job, each defined in its own module.

A subcommand module provides ``add_arguments(parser)`` and ``run(args) -> int``;
it imports its heavy dependencies inside ``run`` so that building the parser
stays cheap and ``zlog status`` does not pay for the broker's imports.
"""

from __future__ import annotations

import argparse
import importlib
import sys

__all__ = ["main"]

# name -> (module, one-line help)
SUBCOMMANDS = {
    "broker": ("zlog.broker.cli", "run the per-host broker daemon"),
    "config": ("zlog.tools.config", "check a broker configuration file"),
    "demo": ("zlog.demo.cli", "replay real system logs through a broker into Kafka"),
    "status": ("zlog.tools.status", "ask the running broker how it is doing"),
    "tail": ("zlog.tools.tail", "print events from the zlog topics as they arrive"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zlog",
        description="Ship Python logs and events to Kafka through one broker per host.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        subparser = subparsers.add_parser(name, help=help_text, description=help_text)
        subparser.set_defaults(_module=module_name)
        importlib.import_module(module_name).add_arguments(subparser)

    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2

    return importlib.import_module(args._module).run(args)
