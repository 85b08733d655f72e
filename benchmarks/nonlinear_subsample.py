"""Is the "nonlinear" baseline's ranking stable at its subsample size, and what does it cost?

Trains MNIST 784-64-64-10 (PReLU, Adam, 15 epochs, batch 128: the experiment's protocol),
scores it with ``nonlinear`` on subsamples of 256 ... 4096 training inputs (and 1024 with
another seed), and compares each ranking with the 4096-sample reference: Spearman correlation
of all scores, and the overlap of the pruned sets and the prune-only test loss at several ratios.
Also times the Sequential fast path against the general vmap path of ecprune.methods.nonlinear.

Run: ``python benchmarks/nonlinear_subsample.py --out benchmarks/results`` (about 10 minutes on
2 idle cores). Writes nonlinear_subsample.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
from datetime import UTC, datetime
from pathlib import Path

import torch
from scipy import stats

import ecprune
from ecprune import nonlinear
from ecprune.experiments.mnist import MNIST, load_mnist_split
from ecprune.experiments.stacked import StackedMLP, mlp
from ecprune.experiments.training import TrainSettings, evaluate, train

RATIOS = (0.5, 0.8, 0.9, 0.95)
SIZES = (256, 512, 1024, 2048)
REFERENCE = 4096


def trained_dense(split, seed: int) -> torch.nn.Sequential:
    stacked = StackedMLP.from_models([mlp((784, 64, 64, 10), seed=seed)])
    train(stacked, split.x_train, split.y_train,
          TrainSettings(epochs=MNIST.epochs, batch_size=MNIST.batch_size, loss=MNIST.loss,
                        seed=seed))
    return stacked.network(0)


def flat(scores: ecprune.Importances) -> torch.Tensor:
    return torch.cat([result.score.reshape(-1) for result in scores.values()]).double()


def pruned_set(scores: torch.Tensor, ratio: float) -> set[int]:
    count = round(ratio * len(scores))
    return set(torch.argsort(scores, stable=True)[:count].tolist())


def prune_loss(dense, scores: ecprune.Importances, ratio: float, split) -> float:
    model = copy.deepcopy(dense)
    ecprune.prune_by_importance(model, scores, ratio)
    losses, _ = evaluate(StackedMLP.from_models([model]), split.x_test, split.y_test,
                         "cross_entropy")
    return losses[0].item()


def score(dense, split, samples: int, seed: int) -> ecprune.Importances:
    return ecprune.importance(dense, split.x_train, "nonlinear", nonlinear_samples=samples,
                              seed=seed, progress=False)


def general_path_seconds(dense, split, samples: int) -> float:
    """Time of the general (vmap) path, with the Sequential fast path switched off."""
    original = nonlinear._chain_after
    nonlinear._chain_after = lambda model, layer: None
    try:
        return score(dense, split, samples, 0).seconds
    finally:
        nonlinear._chain_after = original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    split = load_mnist_split()
    dense = trained_dense(split, args.seed)
    reference = score(dense, split, REFERENCE, args.seed)
    ref_flat = flat(reference)
    runs = [(n, args.seed) for n in SIZES] + [(1024, args.seed + 1)]
    results = []
    for samples, seed in [*runs, (REFERENCE, args.seed)]:
        scores = reference if samples == REFERENCE else score(dense, split, samples, seed)
        values = flat(scores)
        results.append({
            "samples": samples, "seed": seed, "seconds": scores.seconds,
            "spearman": stats.spearmanr(values, ref_flat).statistic,
            "overlap": {r: len(pruned_set(values, r) & pruned_set(ref_flat, r))
                        / round(r * len(values)) for r in RATIOS},
            "prune_loss": {r: prune_loss(dense, scores, r, split) for r in RATIOS},
        })
    record = {"machine": f"{platform.processor() or platform.machine()}, "
                         f"{torch.get_num_threads()} torch threads",
              "date": datetime.now(UTC).isoformat(timespec="minutes"),
              "general_path_seconds_1024": general_path_seconds(dense, split, 1024),
              "results": results}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "nonlinear_subsample.json").write_text(json.dumps(record, indent=1))
    print(f"| samples (seed) | seconds | Spearman vs {REFERENCE} | "
          + " | ".join(f"overlap {r}" for r in RATIOS) + " | "
          + " | ".join(f"loss {r}" for r in RATIOS) + " |")
    print("|" + " --- |" * (3 + 2 * len(RATIOS)))
    for r in results:
        print(f"| {r['samples']} ({r['seed']}) | {r['seconds']:.1f} | {r['spearman']:.4f} | "
              + " | ".join(f"{r['overlap'][q]:.3f}" for q in RATIOS) + " | "
              + " | ".join(f"{r['prune_loss'][q]:.4f}" for q in RATIOS) + " |")
    print(f"general path, 1024 samples: {record['general_path_seconds_1024']:.1f} s")


if __name__ == "__main__":
    main()
