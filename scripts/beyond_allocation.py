"""Where ``ecp-refit`` removes weights: per-layer counts of the refit allocation against ECP's
global ranking, on the beyond-mnist networks (docs/beyond.md).

Trains each seed's dense 784-64-64-10 network exactly as ``ecprune reproduce beyond-mnist``
does, scores it once per allocation, prunes copies at each ratio (masks and shifts only, no
refit: the counts do not depend on it) and writes the removed fraction of every layer.

Run: ``.venv/bin/python scripts/beyond_allocation.py`` (about a minute on 2 CPU cores);
writes ``docs/results/beyond-allocation.csv`` and prints the means over seeds.
"""

from __future__ import annotations

import argparse
import copy
import csv
import statistics
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

import ecprune
from ecprune.experiments.beyond import BEYOND_MNIST
from ecprune.experiments.job import Job, train_dense
from ecprune.experiments.mnist import load_mnist_split
from ecprune.experiments.stacked import StackedMLP
from ecprune.experiments.training import evaluate

OUT = Path(__file__).resolve().parent.parent / "docs" / "results" / "beyond-allocation.csv"
RATIOS = (0.8, 0.9, 0.95)


def removed_fractions(dense, scores, ratio: float) -> dict[str, float]:
    pruned = copy.deepcopy(dense)
    ecprune.prune_by_importance(pruned, scores, ratio)
    return {name: float((pruned.get_submodule(name).weight_mask == 0).float().mean())
            for name in scores}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="*", default=list(BEYOND_MNIST.seeds))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1, as "
                        "the experiment's workers, which keeps the trained networks identical)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    split = load_mnist_split()
    data = TensorDataset(split.x_train, split.y_train)
    rows = []
    for seed in args.seeds:
        job = Job("", BEYOND_MNIST.architectures[0], seed)
        dense, _ = train_dense(BEYOND_MNIST, job, split)
        loss, _ = evaluate(StackedMLP.from_models([dense]), split.x_test, split.y_test,
                           BEYOND_MNIST.loss)
        print(f"seed {seed}: dense test loss {loss[0].item():.8g} (beyond-mnist.csv's dense row)")
        for allocation in ("refit", "global"):
            scores = ecprune.importance(dense, data, "ecp-refit", allocation=allocation)
            for ratio in RATIOS:
                for layer, fraction in removed_fractions(dense, scores, ratio).items():
                    rows.append({"seed": seed, "allocation": allocation, "ratio": ratio,
                                 "layer": layer, "removed_fraction": f"{fraction:.4f}"})
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with open(OUT, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print("| allocation | ratio | " + " | ".join(f"layer {n}" for n in scores) + " |")
    print("| --- | --- |" + " --- |" * len(scores))
    for allocation in ("refit", "global"):
        for ratio in RATIOS:
            means = [statistics.mean(float(r["removed_fraction"]) for r in rows
                                     if (r["allocation"], r["ratio"], r["layer"])
                                     == (allocation, ratio, name)) for name in scores]
            print(f"| {allocation} | {ratio} | " + " | ".join(f"{m:.3f}" for m in means) + " |")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
