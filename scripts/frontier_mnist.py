"""Issue 19's one-shot frontier on MNIST 784-64-64-10, prune only: ``ecp-refit``, ``ecp-refit``
in 3 steps and ``sparsegpt`` against the methods that optimise the mask (``ecp-admm``,
``refine="swaps"``) and the network's output (``objective="network"``).

Trains each seed's dense network as ``ecprune reproduce beyond-mnist`` does (15 epochs of Adam,
batch 128), prunes a copy per (label, ratio) with ``ecprune.prune`` on the whole training set,
and prints the test accuracy and loss, the seconds and the cost in gradient passes (the seconds
divided by one gradient pass over the training set, median of 3, measured in the same run).

Run: ``.venv/bin/python scripts/frontier_mnist.py --seeds 0 1 2 3 4`` (one thread; add
``--cache DIR`` to keep the dense networks between runs). ``--csv PATH`` writes every cell;
``--summarize A.csv B.csv`` prints the table of several runs (e.g. one per seed).
"""

from __future__ import annotations

import argparse
import copy
import csv
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

import ecprune
from ecprune.experiments.beyond import BEYOND_MNIST
from ecprune.experiments.job import Job, train_dense
from ecprune.experiments.mnist import load_mnist_split
from ecprune.experiments.stacked import mlp
from ecprune.experiments.training import gradient_pass_seconds

# label: (method, steps, options)
LABELS = {
    "ecp-refit": ("ecp-refit", 1, {}),
    "ecp-refit-steps3": ("ecp-refit", 3, {}),
    "sparsegpt": ("sparsegpt", 1, {}),
    "ecp-refit-swaps": ("ecp-refit", 1, {"refine": "swaps"}),
    "ecp-admm": ("ecp-admm", 1, {}),
    "ecp-admm-swaps": ("ecp-admm", 1, {"refine": "swaps"}),
    "ecp-refit-network": ("ecp-refit", 1, {"objective": "network"}),
    "ecp-admm-network": ("ecp-admm", 1, {"objective": "network"}),
    "ecp-admm-swaps-network": ("ecp-admm", 1, {"refine": "swaps", "objective": "network"}),
    "ecp-admm-swaps-steps3": ("ecp-admm", 3, {"refine": "swaps"}),
}
DEFAULT_LABELS = ["ecp-refit", "ecp-refit-steps3", "sparsegpt", "ecp-refit-swaps", "ecp-admm",
                  "ecp-admm-swaps", "ecp-admm-swaps-network"]
RATIOS = (0.9, 0.95)


@torch.no_grad()
def test_metrics(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Test accuracy and mean cross-entropy."""
    logits = torch.cat([model(chunk) for chunk in x.split(4096)])
    return (float((logits.argmax(1) == y).double().mean()),
            float(F.cross_entropy(logits.double(), y)))


def dense_network(seed: int, split, cache: Path | None) -> torch.nn.Module:
    widths = BEYOND_MNIST.architectures[0]
    path = None if cache is None else cache / f"mnist-{'-'.join(map(str, widths))}-{seed}.pt"
    if path is not None and path.exists():
        model = mlp(widths, seed=seed)
        model.load_state_dict(torch.load(path, weights_only=True))
        return model
    model, _ = train_dense(BEYOND_MNIST, Job("", widths, seed), split)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
    return model


def parse_value(text: str) -> object:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="*", default=[0])
    parser.add_argument("--ratios", type=float, nargs="*", default=list(RATIOS))
    parser.add_argument("--labels", nargs="*", default=DEFAULT_LABELS, choices=list(LABELS))
    parser.add_argument("--option", action="append", default=[],
                        help="KEY=VALUE added to every new method's options (tuning)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache", type=Path, default=None)
    parser.add_argument("--csv", type=Path, default=None)
    parser.add_argument("--summarize", type=Path, nargs="*", default=None,
                        help="only print the table of these CSVs (several runs, e.g. one per "
                        "seed)")
    args = parser.parse_args()
    if args.summarize:
        rows = []
        for path in args.summarize:
            with open(path) as handle:
                rows += [{k: parse_value(v) for k, v in row.items()}
                         for row in csv.DictReader(handle)]
        summarize(rows, sorted({row["ratio"] for row in rows}))
        return
    torch.set_num_threads(args.threads)
    extra = dict(item.split("=", 1) for item in args.option)
    split = load_mnist_split()
    data = TensorDataset(split.x_train, split.y_train)
    rows = []
    for seed in args.seeds:
        dense = dense_network(seed, split, args.cache)
        unit = gradient_pass_seconds(dense, split.x_train, split.y_train, "cross_entropy")
        accuracy, loss = test_metrics(dense, split.x_test, split.y_test)
        print(f"seed {seed}: dense accuracy {accuracy:.4f} loss {loss:.4f}; "
              f"gradient pass {unit:.3f} s", flush=True)
        for label in args.labels:
            method, steps, options = LABELS[label]
            if label not in ("ecp-refit", "ecp-refit-steps3", "sparsegpt"):
                options = {**options, **{k: parse_value(v) for k, v in extra.items()}}
            for ratio in args.ratios:
                pruned = copy.deepcopy(dense)
                start = time.perf_counter()
                ecprune.prune(pruned, data, ratio, method, steps=steps, progress=False,
                              **options)
                seconds = time.perf_counter() - start
                accuracy, loss = test_metrics(pruned, split.x_test, split.y_test)
                row = {"seed": seed, "label": label, "ratio": ratio, "accuracy": accuracy,
                       "loss": loss, "seconds": seconds, "passes": seconds / unit}
                rows.append(row)
                print(f"  {label:32s} r={ratio:<5} acc {accuracy:.4f} loss {loss:.4f} "
                      f"{seconds:6.2f} s {seconds / unit:6.1f} passes", flush=True)
    summarize(rows, args.ratios)
    if args.csv is not None:
        with open(args.csv, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


def summarize(rows: list[dict], ratios: list[float]) -> None:
    seeds = sorted({row["seed"] for row in rows})
    print(f"\nMean over seeds {seeds}: test accuracy (loss) [gradient passes]")
    print("| label | " + " | ".join(f"r = {r}" for r in ratios) + " |")
    print("| --- |" + " --- |" * len(ratios))
    for label in dict.fromkeys(row["label"] for row in rows):
        cells = []
        for ratio in ratios:
            found = [row for row in rows if row["label"] == label and row["ratio"] == ratio]
            mean = {key: statistics.mean(row[key] for row in found)
                    for key in ("accuracy", "loss", "passes")}
            cells.append(f"{mean['accuracy']:.4f} ({mean['loss']:.4f}) [{mean['passes']:.1f}]")
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
