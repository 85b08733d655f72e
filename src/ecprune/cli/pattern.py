"""``ecprune prune --pattern N:M``: semi-structured sparsity from the command line
(:func:`ecprune.prune`'s ``pattern``)."""

from __future__ import annotations

import argparse

from ecprune.masking.pattern import check_pattern_sparsity, parse_pattern


def add_pattern_option(group: argparse._ArgumentGroup) -> None:
    """Add ``--pattern N:M`` to the pruning options."""
    group.add_argument("--pattern", metavar="N:M",
                       help="semi-structured sparsity: every group of M consecutive inputs of "
                            "each row keeps N weights (e.g. 2:4, which sparse tensor cores run); "
                            "the sparsity is then 1 - N/M (--sparsity optional)")


def check_pattern(args: argparse.Namespace) -> None:
    """``--pattern``: parsed, without the options it excludes, ``--sparsity`` set to (or checked
    against) ``1 - N/M``."""
    pattern = parse_pattern(args.pattern, caller="ecprune prune --pattern")
    for flag, given in (("--error-budget", args.error_budget is not None),
                        ("--neurons", args.neurons is not None),
                        ("--scope", args.scope is not None), ("--steps", args.steps != 1)):
        if given:
            raise ValueError(f"--pattern {pattern} keeps {pattern.n} of every {pattern.m} "
                             f"consecutive inputs of each row, in one step, chosen within each "
                             f"group (sparsity {pattern.sparsity:g}); drop {flag}.")
    args.sparsity = check_pattern_sparsity(args.sparsity, pattern, caller="ecprune prune")


def check_amount(args: argparse.Namespace) -> None:
    """How much to prune: one of ``--sparsity``, ``--error-budget``, ``--neurons``, or
    ``--pattern`` (whose sparsity ``--sparsity`` may repeat); sets the default ``--scope``."""
    if args.pattern is not None:
        check_pattern(args)
    elif args.sparsity is None and args.error_budget is None and args.neurons is None:
        raise ValueError("one of the arguments --sparsity, --error-budget, --neurons or "
                         "--pattern is required.")
    elif args.scope is None:
        args.scope = "global"
