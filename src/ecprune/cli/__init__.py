"""The ``ecprune`` command line: one module per subcommand, each with ``register(subparsers)``.

Every expected failure (bad file, bad value, existing output) is reported as one line on stderr
with exit code 2, never as a stack trace.
"""

from __future__ import annotations

import argparse
import sys

from ..distributed import RankFailure
from . import info, prune

COMMANDS = (info, prune)

EPILOG = """examples:
  ecprune info
  ecprune prune model.pt inputs.npy --trust-model --sparsity 0.9 -o pruned.pt
  ecprune prune --help
"""


class CliError(Exception):
    """A user error the CLI reports as one line and exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ecprune",
        description="Elimination-compensation pruning of fully-connected PyTorch networks.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return args.run(args) or 0
    except (CliError, ValueError, TypeError, OSError, RankFailure) as err:
        message = " ".join(str(err).split())  # one line, whatever the message
        print(f"ecprune {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ecprune {args.command}: interrupted", file=sys.stderr)
        return 130


