"""The figure of docs/neurons.md: neuron pruning by ecprune and by Torch-Pruning's importances,
the width-reduced network trained from scratch and unstructured ECP-refit at the same weights.

One row per network of the results CSVs of ``ecprune reproduce neurons`` and
``neurons-diffsorp``, prune only (left) and after fine-tuning (right): the test accuracy for
MNIST, the test loss (log axis) for diffusion-sorption, against the fraction of hidden units
removed; mean over the seeds present, band from min to max, the dense network dashed.

Run: ``.venv/bin/python scripts/neurons_figure.py docs/results/neurons/neurons.csv
docs/results/neurons/neurons-diffsorp.csv --out docs/figures/neurons.png``.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from ecprune.atomic import write_file
from ecprune.experiments.store import read_rows

# label -> (colour, line style, marker): ecprune solid, Torch-Pruning dashed, baselines apart.
STYLES = {
    "ecp": ("tab:red", "-", "o"), "ecp-refit": ("tab:pink", "-", "o"),
    "obs": ("tab:olive", "-", "s"), "magnitude": ("tab:blue", "-", "s"),
    "random": ("tab:gray", "-", "x"), "tp-magnitude": ("tab:cyan", "--", "^"),
    "tp-taylor": ("tab:green", "--", "^"), "tp-hessian": ("tab:orange", "--", "^"),
    "weights-ecp-refit": ("black", ":", "d"), "fully-connected": ("tab:brown", "-.", "*"),
}


def _series(rows, arch, phase, metric):
    values = defaultdict(list)
    for row in rows:
        if row["arch"] == arch and row["phase"] == phase and row[metric]:
            values[(row["method"], float(row["ratio"]))].append(float(row[metric]))
    return values


def _panel(ax, rows, arch, phase, metric):
    values = _series(rows, arch, phase, metric)
    for method, (colour, style, marker) in STYLES.items():
        points = sorted((r, v) for (m, r), v in values.items() if m == method)
        if not points:
            continue
        ratios = [r for r, _ in points]
        ax.fill_between(ratios, [min(v) for _, v in points], [max(v) for _, v in points],
                        color=colour, alpha=0.12, linewidth=0)
        ax.plot(ratios, [sum(v) / len(v) for _, v in points], color=colour, linestyle=style,
                marker=marker, markersize=4, label=method)
    dense = _series(rows, arch, "dense", metric).get(("dense", 0.0))
    if dense:
        ax.axhline(sum(dense) / len(dense), color="black", linestyle="--", linewidth=0.8,
                   label="dense")
    seeds = len({row["seed"] for row in rows if row["arch"] == arch})
    title = "prune only" if phase == "prune" else "+ fine-tune (3 epochs; FC: from scratch)"
    ax.set_title(f"{arch}: {title} ({seeds} seed{'s' * (seeds > 1)})", fontsize=9)
    ax.set_xlabel("fraction of hidden units removed")
    ax.set_ylabel("test accuracy" if metric == "test_accuracy" else "test loss (MSE)")
    if metric == "test_loss":
        ax.set_yscale("log")
    ax.grid(alpha=0.3)


def figure(paths: list[Path], out: Path) -> Path:
    panels = []
    for path in paths:
        rows = read_rows(path)
        metric = "test_accuracy" if any(row["test_accuracy"] for row in rows) else "test_loss"
        panels += [(rows, arch, metric) for arch in dict.fromkeys(row["arch"] for row in rows)]
    fig, axes = plt.subplots(len(panels), 2, figsize=(11, 3.2 * len(panels)), squeeze=False)
    for (rows, arch, metric), pair in zip(panels, axes, strict=True):
        for ax, phase in zip(pair, ("prune", "finetune"), strict=True):
            _panel(ax, rows, arch, phase, metric)
    handles, labels = axes[0][1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=6, fontsize=8)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        return write_file(out, lambda handle: fig.savefig(handle, dpi=110, format="png"))
    finally:
        plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path, help="results CSVs")
    parser.add_argument("--out", type=Path, default=Path("docs/figures/neurons.png"))
    args = parser.parse_args()
    print(f"wrote {figure(args.results, args.out)}")


if __name__ == "__main__":
    main()
