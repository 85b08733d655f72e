"""The ``ecprune`` command line: one module per subcommand, each with ``register(subparsers)``.

Every expected failure (bad file, bad value, existing output, a results folder held by another
run or of another configuration) is reported as one line on stderr with exit code 2, never as a
stack trace.
"""

from __future__ import annotations

import argparse
import os
import sys

from ..distributed import RankFailure
from ..experiments.lock import FolderBusy
from . import info, prune, report, reproduce

COMMANDS = (info, prune, reproduce, report)

EPILOG = """examples:
  ecprune info
  ecprune prune model.pt inputs.npy --trust-model --sparsity 0.9 -o pruned.pt
  ecprune reproduce mnist --quick --out /tmp/mnist-quick
  ecprune report /tmp/mnist-quick/mnist.csv
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
    except (CliError, ValueError, TypeError, OSError, RankFailure, FolderBusy) as err:
        message = " ".join(str(err).split())  # one line, whatever the message
        print(f"ecprune {args.command}: error: {message}", file=sys.stderr)
        return 2
    except RuntimeError as err:
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            raise
        # Under torchrun a rank that died leaves the others a backend error (gloo: "Connection
        # closed by peer"): one line, as every user-facing failure.
        message = " ".join(str(err).split())[:300]
        print(f"ecprune {args.command}: error: another rank failed or died during the "
              f"collective ({message})", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ecprune {args.command}: interrupted", file=sys.stderr)
        return 130


