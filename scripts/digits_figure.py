"""The README figure: ECP against the baselines on scikit-learn's digits, prune only.

Trains the demo's 64-32-32-10 PReLU network (``ecprune.demo``) once per seed, prunes copies at
each ratio with each method from one scoring pass, and plots test loss and accuracy (mean over
seeds, band from min to max) without fine-tuning. Writes the PNG and a CSV of every cell.

Run: ``.venv/bin/python scripts/digits_figure.py`` (about a minute on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import copy
import csv
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

import ecprune
from ecprune.demo import build_model, evaluate, load_digits, train

METHODS = ("ecp", "magnitude", "gradient", "random")
RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
OUT = Path(__file__).resolve().parent.parent / "docs" / "figures"


def run_seed(seed: int, epochs: int) -> list[dict]:
    """Rows (seed, method, ratio, loss, accuracy) for one trained network; ratio 0 is dense."""
    torch.manual_seed(seed)
    x_train, y_train, x_test, y_test = load_digits(seed)
    dense = build_model()
    train(dense, x_train, y_train, epochs=epochs, seed=seed)
    loss, accuracy = evaluate(dense, x_test, y_test)
    rows = [dict(seed=seed, method="dense", ratio=0.0, loss=loss, accuracy=accuracy)]
    data = TensorDataset(x_train, y_train)
    for method in METHODS:
        scores = ecprune.importance(dense, data, method, seed=seed, progress=False)
        for ratio in RATIOS:
            model = copy.deepcopy(dense)
            ecprune.prune_by_importance(model, scores, ratio)
            loss, accuracy = evaluate(model, x_test, y_test)
            rows.append(dict(seed=seed, method=method, ratio=ratio, loss=loss,
                             accuracy=accuracy))
    return rows


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 3.8), constrained_layout=True)
    for ax, key, label in ((axes[0], "loss", "test cross-entropy (log scale)"),
                           (axes[1], "accuracy", "test accuracy")):
        dense = torch.tensor([r[key] for r in rows if r["method"] == "dense"])
        ax.axhline(dense.mean().item(), color="black", linestyle="--", linewidth=1,
                   label="dense")
        for method in METHODS:
            values = torch.tensor([[r[key] for r in rows
                                    if r["method"] == method and r["ratio"] == ratio]
                                   for ratio in RATIOS])  # (ratios, seeds)
            line, = ax.plot(RATIOS, values.mean(1), marker="o", markersize=3, label=method)
            ax.fill_between(RATIOS, values.min(1).values, values.max(1).values,
                            color=line.get_color(), alpha=0.2)
        ax.set_xlabel("pruning ratio (fraction of weights removed)")
        ax.set_ylabel(label)
    axes[0].set_yscale("log")
    axes[1].legend(loc="lower left")
    seeds = len({r["seed"] for r in rows})
    figure.suptitle(f"digits, 64-32-32-10 PReLU, prune only (no fine-tuning); mean and range "
                    f"over {seeds} seeds")
    figure.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    rows = [row for seed in range(args.seeds) for row in run_seed(seed, args.epochs)]
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "ecp_vs_baselines_digits.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, args.out / "ecp_vs_baselines_digits.png")
    print(f"wrote {args.out / 'ecp_vs_baselines_digits.png'} and .csv")


if __name__ == "__main__":
    main()
