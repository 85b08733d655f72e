"""The convergence study of the diffusion-sorption protocol (docs/diffsorp.md, "Convergence
study"): the dense networks of both architectures, every noise level, seeds 0-2, trained by the
experiment's own protocol for 30, 60, 120, 240 and 480 epochs (the learning rate decayed over
each run's own length), their test loss against the noisy and the clean targets.

Writes OUT/diffsorp-convergence.csv (one row per architecture, noise, seed and budget, appended
as each network finishes; a rerun skips finished rows, a killed one loses at most one epoch),
then the figure FIGURES/diffsorp_convergence_study.png and the table of the rule (the smallest
budget E whose mean test loss changes by less than 5 % from E to 2E) as
FIGURES/diffsorp_convergence_study.md, which it also prints. ``--quick``: one seed, noise 0,
budgets 1 and 2, into diffsorp-convergence-quick.csv and *_quick.png / .md.

Run: ``.venv/bin/python scripts/diffsorp_convergence.py --out docs/results --figures
docs/figures --threads 1`` (``make diffsorp-convergence``).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import torch

from ecprune.atomic import write_text
from ecprune.experiments.convergence import (
    STUDY,
    STUDY_QUICK,
    convergence_table,
    figure,
    run_study,
)
from ecprune.experiments.store import read_rows


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="results", help="folder of the CSV (default: results)")
    parser.add_argument("--figures", default=None, metavar="DIR",
                        help="folder of the figure and the table (default: OUT)")
    parser.add_argument("--epochs", type=int, nargs="+", default=None,
                        help=f"budgets in epochs (default: {' '.join(map(str, STUDY.budgets))})")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help=f"seeds (default: {' '.join(map(str, STUDY.seeds))})")
    parser.add_argument("--noise", type=float, nargs="+", default=None,
                        help=f"noise levels d (default: {' '.join(map(str, STUDY.noise))})")
    parser.add_argument("--tolerance", type=float, default=STUDY.tolerance,
                        help="relative change of the mean loss per doubling that counts as "
                             "converged (default: 0.05)")
    parser.add_argument("--quick", action="store_true",
                        help="one seed, noise 0, budgets 1 and 2 (a smoke test, seconds)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's choice)")
    parser.add_argument("--data-dir", default=None, help="the PDE solutions' cache directory")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the study; exit status 2 with a one-line message on a bad option or folder."""
    try:
        return run(parse(argv))
    except ValueError as err:
        print(f"diffsorp_convergence.py: error: {err}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    study = STUDY_QUICK if args.quick else STUDY
    chosen = {"budgets": args.epochs, "seeds": args.seeds, "noise": args.noise}
    study = replace(study, tolerance=args.tolerance,
                    **{k: tuple(v) for k, v in chosen.items() if v is not None})
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    def progress(row: dict) -> None:
        print(f"{row['arch']} d={row['noise']} seed {row['seed']}, {row['epochs']} epochs: "
              f"test loss {row['test_loss']} (clean {row['test_loss_clean']}), "
              f"{row['seconds']} s", flush=True)

    report = run_study(study, out=args.out, data_dir=args.data_dir, on_row=progress)
    print(f"{study.name}: {report.computed} networks trained, {report.networks} in the study, "
          f"{report.seconds:.1f} s; results: {report.results}")
    rows = read_rows(report.results)
    folder = Path(args.figures if args.figures is not None else args.out)
    stem = "diffsorp_convergence_study" + ("_quick" if args.quick else "")
    table = convergence_table(study, rows)
    print(table, end="")
    for path in (figure(study, rows, folder / f"{stem}.png"),
                 write_text(folder / f"{stem}.md", table)):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
