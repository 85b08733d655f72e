"""Retrain dense networks of the diffusion-sorption grid and compare them with its dense rows.

Checks that a results folder's dense rows are reproduced on this machine (docs/diffsorp.md,
"The run"): each JOB, ``VARIANT,ARCH,SEED`` (e.g. ``noise=0,68-64-32-32-16-16-1,3``), is
trained exactly as the grid trains it, then its test losses are printed next to the CSV's.
``--prune R ...`` then prunes copies by magnitude and by ECP at each ratio and prints which
inputs keep weights in the first layer (mu, t, x and the 64 columns of u0).

    python benchmarks/diffsorp_retrain_dense.py noise=0,68-32-32-32-1,2 --threads 1
    python benchmarks/diffsorp_retrain_dense.py noise=0,68-32-32-32-1,0 --prune 0.8 0.9
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch

import ecprune
from ecprune.experiments.diffsorp import DIFFSORP, load_diffsorp_split
from ecprune.experiments.folder import data_digest
from ecprune.experiments.job import Job, train_dense
from ecprune.experiments.stacked import StackedMLP
from ecprune.experiments.store import read_rows
from ecprune.experiments.training import evaluate

RESULTS = Path(__file__).parents[1] / "docs/results/diffsorp-e240"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("jobs", nargs="+", metavar="VARIANT,ARCH,SEED")
    parser.add_argument("--results", type=Path, default=RESULTS,
                        help="the grid's folder (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--prune", type=float, nargs="*", default=[], metavar="RATIO")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dense = {(r["variant"], r["arch"], r["seed"]): r
             for r in read_rows(args.results / "diffsorp.csv") if r["phase"] == "dense"}
    for spec in args.jobs:
        key = tuple(spec.split(","))
        if key not in dense:
            parser.error(f"no dense row for {spec!r} in {args.results / 'diffsorp.csv'}; "
                         "expected VARIANT,ARCH,SEED such as noise=0,68-32-32-32-1,0")
        variant, arch, seed = key
        split = load_diffsorp_split(variant)
        model, _ = train_dense(DIFFSORP, Job(variant, tuple(map(int, arch.split("-"))),
                                             int(seed)), split)
        stacked = StackedMLP.from_models([model])
        with torch.no_grad():
            loss = evaluate(stacked, split.x_test, split.y_test, DIFFSORP.loss)[0].item()
            clean = evaluate(stacked, split.x_test, split.y_test_clean, DIFFSORP.loss)[0].item()
        row = dense[key]
        print(f"{spec}: here test {loss:.8g} clean {clean:.8g}; CSV test {row['test_loss']} "
              f"clean {row['test_loss_clean']}; data {data_digest(split)[:19]}", flush=True)
        for method in ("magnitude", "ecp"):
            for ratio in args.prune:
                inputs = first_layer_inputs(model, split, method, ratio)
                print(f"  {method} r = {ratio:g}: {inputs}", flush=True)


def first_layer_inputs(model: torch.nn.Sequential, split, method: str, ratio: float) -> str:
    """Weights the first layer keeps on each input after pruning a copy of ``model``."""
    pruned = copy.deepcopy(model)
    ecprune.prune(pruned, split.x_train, ratio, method=method)
    kept = pruned[0].weight_mask.sum(0)
    u0 = kept[4:]
    return (f"mu {kept[0]:.0f} / {kept[1]:.0f}, t {kept[2]:.0f}, x {kept[3]:.0f}; "
            f"u0: {int((u0 > 0).sum())} of {len(u0)} columns keep weights ({u0.sum():.0f} weights)")


if __name__ == "__main__":
    main()
