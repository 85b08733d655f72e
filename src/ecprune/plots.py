"""Figures of the experiments (matplotlib, Agg backend), with ONE style table for the project.

Every figure draws a method with the colour and marker of :data:`STYLES`, so a method looks the
same in the MNIST, diffusion-sorption and beyond-the-paper figures.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from .atomic import write_file
from .experiments.summary import METRICS, Cell, Key, cells, phases, unique


@dataclass(frozen=True)
class Style:
    """How one method is drawn."""

    colour: str
    marker: str
    label: str


STYLES: dict[str, Style] = {
    "dense": Style("black", "", "dense"),
    "ecp": Style("#d62728", "o", "ECP"),
    "ecp-refit": Style("#e377c2", "h", "ECP + refit"),
    "nonlinear": Style("#9467bd", "D", "non-linear"),
    "magnitude": Style("#1f77b4", "s", "magnitude"),
    "gradient": Style("#2ca02c", "^", "gradient"),
    "random": Style("#7f7f7f", "x", "random"),
    "ecp-nocomp": Style("#ff7f0e", "v", "ECP score, no comp."),
    "magnitude-comp": Style("#17becf", "P", "magnitude + mean comp."),
    "fully-connected": Style("#8c564b", "*", "fully-connected (narrow)"),
    "sparsegpt": Style("#bcbd22", "<", "SparseGPT"),
    "wanda": Style("#393b79", ">", "Wanda"),
    "ecp-steps10": Style("#8b0000", "d", "ECP, 10 steps"),
    "ecp-refit-sensitivity": Style("#6a3d9a", "p", "ECP + weighted refit"),
    "ecp-refit-global": Style("#e6550d", "+", "ECP + refit, global counts"),
    "sparsegpt-refit": Style("#556b2f", "X", "SparseGPT + refit"),
    "ecp-refit-steps3": Style("#008080", "8", "ECP + refit, 3 steps"),
    "sparsegpt-refit-steps3": Style("#9acd32", "H", "SparseGPT + refit, 3 steps"),
}
# Methods not in the table get a colour of this palette chosen by a hash of their name.
FALLBACK = plt.get_cmap("tab20b")
# Log axes labelled 0.1, 0.2, 0.3, 0.5, 1, ... rather than 10^-1, 2 x 10^-1.
PLAIN = matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}")
MINOR = matplotlib.ticker.FuncFormatter(
    lambda value, _: f"{value:g}" if f"{value:.0e}"[0] in "235" else "")
# ``ecprune report --error-rate``: 1 - test accuracy, on a log axis (separates 0.97 from 0.95).
ERROR = "test_error"
LABELS = {**METRICS, ERROR: "test error (1 - accuracy)"}
# ECP is drawn over the baselines it often coincides with (non-linear, its own ablation).
ON_TOP = {"ecp": 3}


def style(method: str) -> Style:
    """The style of ``method`` (a stable fallback for methods not in :data:`STYLES`)."""
    if method in STYLES:
        return STYLES[method]
    colour = matplotlib.colors.to_hex(FALLBACK(zlib.crc32(method.encode()) % FALLBACK.N))
    return Style(colour, ".", method)


def _draw_method(ax, table: dict[Key, Cell], variant: str, arch: str, method: str,
                 phase: str) -> None:
    found = sorted((key[4], cell) for key, cell in table.items()
                   if key[:4] == (variant, arch, method, phase))
    if not found:
        return
    ratios = [ratio for ratio, _ in found]
    s = style(method)
    ax.fill_between(ratios, [c.low for _, c in found], [c.high for _, c in found],
                    color=s.colour, alpha=0.15, linewidth=0)
    ax.plot(ratios, [c.mean for _, c in found], color=s.colour, marker=s.marker,
            markersize=5, linewidth=1.3, label=s.label, zorder=ON_TOP.get(method, 2))


def _draw_dense(ax, table: dict[Key, Cell], variant: str, arch: str) -> None:
    dense = table.get((variant, arch, "dense", "dense", 0.0))
    if dense is None:
        return
    s = style("dense")
    ax.axhspan(dense.low, dense.high, color=s.colour, alpha=0.12, linewidth=0)
    ax.axhline(dense.mean, color=s.colour, linestyle="--", linewidth=1.2, label=s.label)


def metric_figure(rows: list[dict[str, str]], *, arch: str, metric: str, path: str | Path,
                  variants: Sequence[str] | None = None, log: bool | None = None) -> Path:
    """The paper's layout for one architecture: columns = prune only / prune + fine-tune (the
    phases present), rows = variants (e.g. noise levels); mean over seeds per method against
    the ratio, the band spans the seeds' min-max, the dense network as a dashed line with its
    band."""
    table = cells(rows, metric)
    variants = list(variants if variants is not None else unique(rows, "variant"))
    methods = [m for m in unique(rows, "method") if m != "dense"]
    titles = phases(rows)
    log = metric != "test_accuracy" if log is None else log
    fig, axes = plt.subplots(len(variants), len(titles),
                             figsize=(5.5 * len(titles) + 1.5, 4.2 * len(variants)),
                             squeeze=False)
    for row_axes, variant in zip(axes, variants, strict=True):
        for ax, phase in zip(row_axes, titles, strict=True):
            for method in methods:
                _draw_method(ax, table, variant, arch, method, phase)
            _draw_dense(ax, table, variant, arch)
            title = f"{arch}: {titles[phase]}" + (f" ({variant})" if variant else "")
            ax.set(title=title, xlabel="pruning ratio", ylabel=LABELS[metric])
            if log:
                ax.set_yscale("log")
                ax.yaxis.set_major_formatter(PLAIN)
                ax.yaxis.set_minor_formatter(MINOR)
            ax.grid(alpha=0.3, which="both" if log else "major")
    legend = {}
    for ax in axes.flat:
        legend.update(zip(*reversed(ax.get_legend_handles_labels()), strict=True))
    columns = min(5 if len(titles) > 1 else 3, len(legend))
    fig.legend(legend.values(), legend.keys(), loc="lower center", ncol=columns, frameon=False)
    rows_of_legend = -(-len(legend) // columns)
    fig.tight_layout(rect=(0, 0.05 * rows_of_legend / len(variants), 1, 1))
    return save_figure(fig, path)


def save_figure(fig: plt.Figure, path: str | Path) -> Path:
    """Write ``fig`` (format from the suffix) atomically, its folder created; close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return write_file(path, lambda handle: fig.savefig(handle, dpi=130,
                                                           format=path.suffix[1:]))
    finally:
        plt.close(fig)


def with_error_rate(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """The rows with ``test_error = 1 - test_accuracy`` where they have an accuracy."""
    return [{**row, ERROR: f"{1 - float(row['test_accuracy']):.6g}"}
            if row.get("test_accuracy", "") != "" else row for row in rows]


def experiment_figures(rows: list[dict[str, str]], out: str | Path, *,
                       error_rate: bool = False) -> list[Path]:
    """Every architecture's loss figure and, for classification, accuracy figure (with
    ``error_rate``: test error figure, log axis)."""
    paths = []
    shown = [m if not error_rate or m != "test_accuracy" else ERROR for m in METRICS]
    rows = with_error_rate(rows) if error_rate else rows
    for experiment in unique(rows, "experiment"):
        mine = [row for row in rows if row["experiment"] == experiment]
        metrics = [m for m in shown if any(row.get(m, "") != "" for row in mine)]
        for arch in unique(mine, "arch"):
            for metric in metrics:
                name = f"{experiment}_{arch}_{metric.removeprefix('test_')}.png"
                paths.append(metric_figure([r for r in mine if r["arch"] == arch], arch=arch,
                                           metric=metric, path=Path(out) / name))
    return paths


@dataclass(frozen=True)
class SnapshotRow:
    """One row of :func:`snapshot_figure`: data and predictions (n_times, n_points) on a grid."""

    title: str
    x: Sequence[float]
    times: Sequence[float]
    data: object
    predictions: dict[str, object]


def snapshot_figure(rows: Sequence[SnapshotRow], *, columns: Sequence[int],
                    path: str | Path, ylabel: str = "u") -> Path:
    """Data (dots) against predictions (lines) at the time indices ``columns``, one figure
    row per :class:`SnapshotRow`."""
    fig, axes = plt.subplots(len(rows), len(columns), figsize=(3.3 * len(columns),
                                                                2.8 * len(rows)),
                             squeeze=False, sharex=True)
    palette = plt.get_cmap("tab10")
    for row_axes, row in zip(axes, rows, strict=True):
        for ax, column in zip(row_axes, columns, strict=True):
            ax.plot(row.x, row.data[column], ".", color="black", markersize=3, label="data")
            for k, (label, values) in enumerate(row.predictions.items()):
                ax.plot(row.x, values[column], color=palette(k), linewidth=1.3, label=label)
            ax.set_title(f"{row.title}, t = {row.times[column]:g}", fontsize=9)
            ax.grid(alpha=0.3)
        row_axes[0].set_ylabel(ylabel)
    for ax in axes[-1]:
        ax.set_xlabel("x")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), frameon=False)
    fig.tight_layout(rect=(0, 0.06 / len(rows) + 0.02, 1, 1))
    return save_figure(fig, path)


Losses = dict[tuple[str, float], dict[int, list[float]]]  # (arch, noise) -> epochs -> per seed


def convergence_figure(tables: dict[str, Losses], archs: Sequence[str],
                       path: str | Path) -> Path:
    """Dense test loss against the training budget, log-log: one column per architecture, one
    row per metric of ``tables`` (e.g. ``test_loss``, ``test_loss_clean``), a line per noise
    level d (mean over seeds, band from min to max); on the noisy test loss, the noise floor
    d^2/3 is dotted in the line's colour."""
    noises = sorted({noise for table in tables.values() for _, noise in table})
    budgets = sorted({e for table in tables.values() for found in table.values() for e in found})
    palette = plt.get_cmap("viridis")
    fig, axes = plt.subplots(len(tables), len(archs), figsize=(5 * len(archs), 3.8 * len(tables)),
                             squeeze=False)
    for row_axes, (metric, table) in zip(axes, tables.items(), strict=True):
        for ax, arch in zip(row_axes, archs, strict=True):
            for k, noise in enumerate(noises):
                colour = palette(k / max(1, len(noises) - 1) * 0.85)
                found = table.get((arch, noise), {})
                epochs = sorted(found)
                if not epochs:
                    continue
                ax.fill_between(epochs, [min(found[e]) for e in epochs],
                                [max(found[e]) for e in epochs], color=colour, alpha=0.2,
                                linewidth=0)
                ax.plot(epochs, [sum(found[e]) / len(found[e]) for e in epochs], marker="o",
                        color=colour, markersize=4, label=f"d = {noise:g}")
                if metric == "test_loss" and noise > 0:
                    ax.axhline(noise**2 / 3, color=colour, linestyle=":", linewidth=1)
            ax.set(title=arch, xlabel="training epochs", ylabel=LABELS.get(metric, metric),
                   xscale="log", yscale="log")
            ax.set_xticks(budgets)
            ax.xaxis.set_major_formatter(PLAIN)
            ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
            ax.grid(alpha=0.3, which="both")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=max(1, len(labels)), frameon=False)
    fig.tight_layout(rect=(0, 0.06 / len(tables), 1, 1))
    return save_figure(fig, path)
