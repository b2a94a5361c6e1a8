"""``zlog config check FILE``: validate a broker configuration without starting.

The file is layered with the environment exactly as ``zlog broker --config``
would layer it, so what is printed is what the broker would run with: every
key, its value (secrets masked) and where the value came from.
"""

from __future__ import annotations

import argparse
import os
import sys

__all__ = ["add_arguments", "run"]

EXIT_INVALID = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``zlog config check``."""
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    check = actions.add_parser(
        "check",
        help="validate a broker configuration file and print the effective one",
        description="Validate FILE with the environment as zlog broker would, "
        "and print the effective configuration with secrets masked.",
    )
    check.add_argument("file", metavar="FILE", help="TOML configuration file")
    check.add_argument(
        "--quiet", action="store_true", help="print nothing when the file is valid"
    )


def run(args: argparse.Namespace) -> int:
    """Exit 0 when the configuration is valid, 2 with the reason when not."""
    from zlog.broker import settings
    from zlog.errors import ConfigError

    try:
        config, sources = settings.load(args.file, os.environ)
    except ConfigError as exc:
        print(f"zlog config check: {exc}", file=sys.stderr)
        return EXIT_INVALID
    if not args.quiet:
        print(settings.describe(config, sources))

    return 0
