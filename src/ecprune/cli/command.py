"""The one way a subcommand module adds its parser to the ``ecprune`` command line."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def add_command(subparsers: argparse._SubParsersAction, name: str,
                run: Callable[[argparse.Namespace], int | None], *, help: str,
                description: str, epilog: str) -> argparse.ArgumentParser:
    """Add subcommand ``name`` running ``run(args)``; ``epilog`` keeps its line breaks."""
    parser = subparsers.add_parser(name, help=help, description=description, epilog=epilog,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(run=run)
    return parser
