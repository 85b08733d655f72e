"""``ecprune report RESULTS.csv``: figures and a markdown summary of a results CSV."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..atomic import write_text
from ..experiments.store import (
    RESULT_FIELDS,
    RESULT_NUMBERS,
    TIMING_FIELDS,
    TIMING_NUMBERS,
    read_checked,
)
from .command import add_command

EPILOG = """examples:
  ecprune report docs/results/mnist.csv --out docs/figures
  ecprune report results/mnist.csv          # figures next to the CSV
  ecprune report docs/results/beyond-mnist.csv --compare ecp-refit sparsegpt-refit

Writes NAME_ARCH_loss.png (and NAME_ARCH_accuracy.png for classification; NAME_ARCH_loss_clean.png
where the CSV has test_loss_clean, the loss against noise-free targets) per architecture and
NAME_summary.md, and prints the summary; with NAME-timings.csv next to the CSV, the summary
gives the pruning time in gradient passes.
"""


def run(args: argparse.Namespace) -> int:
    from ..experiments.summary import experiment_report
    from ..plots import experiment_figures

    path = Path(args.results)
    if not path.is_file():
        raise FileNotFoundError(f"No results CSV at {path}; run `ecprune reproduce` first.")
    rows = read_checked(path, RESULT_FIELDS, RESULT_NUMBERS, unique=True)
    if not rows:
        raise ValueError(f"{path} holds no result rows; expected a CSV written by "
                         "`ecprune reproduce`.")
    timings_path = path.with_name(f"{path.stem}-timings.csv")
    timings = (read_checked(timings_path, TIMING_FIELDS, TIMING_NUMBERS)
               if timings_path.is_file() else [])
    pairs = [tuple(pair) for pair in args.compare or []]
    unknown = sorted({m for pair in pairs for m in pair} - {row["method"] for row in rows})
    if unknown:
        raise ValueError(f"--compare: no rows of method(s) {unknown} in {path}.")
    out = Path(args.out) if args.out else path.parent
    figures = experiment_figures(rows, out, error_rate=args.error_rate)
    summary = experiment_report(rows, timings, pairs)
    summary_path = write_text(out / f"{path.stem}_summary.md", summary)
    print(summary)
    for figure in [*figures, summary_path]:
        print(f"wrote {figure}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers, "report", run, help="figures and a markdown summary of a results CSV",
        description="Plot test loss (and accuracy) against the pruning ratio per method and "
                    "architecture, and summarise the results with significance tests.",
        epilog=EPILOG,
    )
    parser.add_argument("results", help="results CSV written by `ecprune reproduce`")
    parser.add_argument("--out", default=None,
                        help="directory for figures and summary (default: the CSV's)")
    parser.add_argument("--error-rate", action="store_true",
                        help="plot the test error 1 - accuracy on a log axis instead of the "
                             "accuracy (NAME_ARCH_error.png)")
    parser.add_argument("--compare", nargs=2, action="append", metavar=("METHOD", "REFERENCE"),
                        help="also compare METHOD with REFERENCE per ratio, paired over seeds "
                             "(repeatable)")
