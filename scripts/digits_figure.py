"""The README figure: ECP, ECP + refit, SparseGPT and magnitude pruning on scikit-learn's digits.

Trains the demo's 64-32-32-10 PReLU network (``ecprune.demo``) once per seed and prunes copies
at each ratio with each method (and two thin grey baselines, ``gradient`` and ``random``),
without fine-tuning, as ``make demo`` does: every method scores once and prunes every ratio from
those scores with :func:`ecprune.prune_by_importance`, given the data for the weight updates of
``ecp-refit`` and ``sparsegpt``. Plots test loss and accuracy (mean over seeds, band from min to
max) and writes a CSV of every cell, with ``seconds``: the wall clock to get that pruned network
from the dense one (scoring included), of which ``scoring_seconds`` is the scoring pass shared
by all ratios of the method and seed; for the dense rows, ``seconds`` is the training time.

Run: ``.venv/bin/python scripts/digits_figure.py`` (about 30 seconds, on one CPU thread).
"""

from __future__ import annotations

import argparse
import copy
import csv
import time
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

import ecprune
from ecprune.demo import build_model, evaluate, load_digits, train
from ecprune.plots import STYLES

METHODS = ("ecp", "ecp-refit", "sparsegpt", "magnitude")
BASELINES = ("gradient", "random")  # drawn as thin grey lines
RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
GREY = "0.6"
OUT = Path(__file__).resolve().parent.parent / "docs" / "figures"


def run_seed(seed: int, epochs: int) -> list[dict]:
    """Rows (seed, method, ratio, loss, accuracy, seconds, scoring_seconds) for one trained
    network; ratio 0 is dense."""
    torch.manual_seed(seed)
    x_train, y_train, x_test, y_test = load_digits(seed)
    dense = build_model()
    start = time.perf_counter()
    train(dense, x_train, y_train, epochs=epochs, seed=seed)
    loss, accuracy = evaluate(dense, x_test, y_test)
    rows = [dict(seed=seed, method="dense", ratio=0.0, loss=loss, accuracy=accuracy,
                 seconds=time.perf_counter() - start, scoring_seconds="")]
    data = TensorDataset(x_train, y_train)  # gradient needs the targets; the others ignore them
    # Untimed warm-up, so that one-time start-up costs do not land on the first method timed.
    ecprune.importance(dense, x_train[:256], "ecp", progress=False)
    for method in METHODS + BASELINES:
        start = time.perf_counter()
        scores = ecprune.importance(dense, data, method, seed=seed, progress=False)
        scoring = time.perf_counter() - start
        for ratio in RATIOS:  # data=: the weight updates of ecp-refit and sparsegpt read it
            model = copy.deepcopy(dense)
            start = time.perf_counter()
            ecprune.prune_by_importance(model, scores, ratio, data=data)
            seconds = scoring + time.perf_counter() - start
            loss, accuracy = evaluate(model, x_test, y_test)
            rows.append(dict(seed=seed, method=method, ratio=ratio, loss=loss,
                             accuracy=accuracy, seconds=seconds,
                             scoring_seconds=scoring))
    return rows


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 4.4), constrained_layout=True)
    for ax, key, label in ((axes[0], "loss", "test cross-entropy (log scale)"),
                           (axes[1], "accuracy", "test accuracy")):
        dense = torch.tensor([r[key] for r in rows if r["method"] == "dense"])
        ax.axhline(dense.mean().item(), color="black", linestyle="--", linewidth=1,
                   label="dense")
        for method in BASELINES + METHODS:  # baselines first, underneath
            values = torch.tensor([[r[key] for r in rows
                                    if r["method"] == method and r["ratio"] == ratio]
                                   for ratio in RATIOS])  # (ratios, seeds)
            style = STYLES[method]
            colour, marker, name = style.colour, style.marker, style.label
            if method in BASELINES:
                colour = GREY
                ax.plot(RATIOS, values.mean(1), color=colour, linewidth=0.9, marker=marker,
                        markersize=3, label=name, zorder=1)
                continue
            ax.plot(RATIOS, values.mean(1), color=colour, marker=marker, markersize=4,
                    linewidth=1.6, label=name, zorder=3)
            ax.fill_between(RATIOS, values.min(1).values, values.max(1).values, color=colour,
                            alpha=0.15, linewidth=0, zorder=2)
        ax.set_xlabel("pruning ratio (fraction of weights removed)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    handles, labels = axes[1].get_legend_handles_labels()
    order = [*range(len(BASELINES) + 1, len(labels)), 0, *range(1, len(BASELINES) + 1)]
    figure.legend([handles[i] for i in order], [labels[i] for i in order],
                  loc="outside lower center", ncol=len(labels), frameon=False)
    seeds = len({r["seed"] for r in rows})
    figure.suptitle(f"digits, 64-32-32-10 PReLU, prune only (no fine-tuning); mean and range "
                    f"over {seeds} seeds")
    figure.savefig(path, dpi=120)


def summary(rows: list[dict]) -> None:
    """Mean test loss and accuracy per method and ratio, and seconds per method over all
    ratios (mean over seeds), as the README's caption quotes them."""
    seeds = sorted({r["seed"] for r in rows})

    def mean(method: str, ratio: float, key: str) -> float:
        values = [r[key] for r in rows if r["method"] == method and r["ratio"] == ratio]
        return sum(values) / len(values)

    methods = METHODS + BASELINES
    print(f"dense: loss {mean('dense', 0.0, 'loss'):.4f}, accuracy "
          f"{mean('dense', 0.0, 'accuracy'):.4f}; mean over {len(seeds)} seeds, loss / accuracy")
    print(f"{'ratio':>6} " + " ".join(f"{m:>16}" for m in methods))
    for ratio in RATIOS:
        print(f"{ratio:6.2f} " + " ".join(
            f"{mean(m, ratio, 'loss'):7.4f} / {mean(m, ratio, 'accuracy'):.3f}"
            for m in methods))
    print(f"seconds per seed over all {len(RATIOS)} ratios (scoring once + pruning each ratio):")
    for method in methods:
        cells = [r for r in rows if r["method"] == method]
        prune = sum(r["seconds"] - (r["scoring_seconds"] or 0.0) for r in cells)
        scoring = sum({r["seed"]: r["scoring_seconds"] or 0.0 for r in cells}.values())
        print(f"{method:>10} {(scoring + prune) / len(seeds):7.3f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # as in ecprune.demo: steadier times on a shared machine
    rows = [row for seed in range(args.seeds) for row in run_seed(seed, args.epochs)]
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "ecp_vs_baselines_digits.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, args.out / "ecp_vs_baselines_digits.png")
    summary(rows)
    print(f"wrote {args.out / 'ecp_vs_baselines_digits.png'} and .csv")


if __name__ == "__main__":
    main()
