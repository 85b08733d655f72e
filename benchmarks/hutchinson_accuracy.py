"""How many Hutchinson probes does ECP need on a network with many outputs?

A field-to-field surrogate, 256-512-512-1024 with PReLU, is trained on the 1-D heat equation
``u_t = D u_xx`` on (0, 1) with zero boundary values: input the initial field on 256 points,
output the field at time T on 1024 points (exact sine-series solution; 32 modes with random
amplitudes decaying like 1/m). ECP scores the trained network on its training inputs exactly
and with ``probes`` Rademacher probes per sample (several seeds); for each we record the
Spearman rank correlation of all scores with the exact ones, the overlap of the pruned sets
at r = 0.5 and 0.9 (fraction of the exact set also removed), the pruned network's relative
output error on held-out inputs, and the time (taken as the cells run: see
``statistics_scaling.py`` for controlled timings).

Run: ``python benchmarks/hutchinson_accuracy.py`` (resumable: finished cells are kept in the
CSV); writes ``docs/benchmarks/hutchinson.csv`` and ``docs/figures/hutchinson_agreement.png``.
"""

from __future__ import annotations

import argparse
import copy
import math
import time

import numpy as np
import torch
from scipy.stats import spearmanr
from statistics_common import (
    RESULTS,
    ROOT,
    machine,
    mlp,
    pyplot,
    read_csv,
    save_figure,
    write_csv,
    write_json,
)
from torch.nn import functional as F

import ecprune

WIDTHS = [256, 512, 512, 1024]
MODES, DIFFUSIVITY, HORIZON = 32, 1.0, 1e-3
RATIOS = (0.5, 0.9)
FIELDS = ["samples", "probes", "seed", "seconds", "spearman"] + [
    f"{key}_{r}" for r in RATIOS for key in ("overlap", "error", "exact_error")]


def heat_fields(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Initial fields on 256 points and exact solutions at time HORIZON on 1024 points."""
    generator = torch.Generator().manual_seed(seed)
    modes = torch.arange(1, MODES + 1, dtype=torch.float64)
    amplitudes = torch.randn(count, MODES, generator=generator, dtype=torch.float64) / modes
    decay = torch.exp(-DIFFUSIVITY * (math.pi * modes) ** 2 * HORIZON)

    def field(points: int, coefficients: torch.Tensor) -> torch.Tensor:
        x = (torch.arange(points, dtype=torch.float64) + 0.5) / points
        return coefficients @ torch.sin(math.pi * modes[:, None] * x[None, :])

    return field(WIDTHS[0], amplitudes).float(), field(WIDTHS[-1], amplitudes * decay).float()


def trained_surrogate(x: torch.Tensor, y: torch.Tensor, *, epochs: int, seed: int):
    """Adam (default settings), batch 128, MSE; cached under .cache/ for reruns."""
    path = ROOT / ".cache" / f"heat_surrogate_{len(x)}_{epochs}_{seed}.pt"
    model = mlp(WIDTHS, seed=seed)
    if path.exists():
        model.load_state_dict(torch.load(path))
        return model
    optimizer = torch.optim.Adam(model.parameters())
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=generator).split(128):
            optimizer.zero_grad()
            F.mse_loss(model(x[batch]), y[batch]).backward()
            optimizer.step()
    path.parent.mkdir(exist_ok=True)
    torch.save(model.state_dict(), path)
    return model


def flat(scores: ecprune.Importances) -> np.ndarray:
    return torch.cat([r.score.reshape(-1) for r in scores.values()]).double().numpy()


def pruned(model, scores, ratio: float):
    copy_ = copy.deepcopy(model)
    ecprune.prune_by_importance(copy_, scores, ratio)
    return copy_


def masks(model) -> torch.Tensor:
    return torch.cat([m.weight_mask.reshape(-1) for m in model if hasattr(m, "weight_mask")])


def relative_error(model, reference, x: torch.Tensor) -> float:
    with torch.no_grad():
        dense = reference(x)
        return float((model(x) - dense).square().sum() / dense.square().sum())


def cell(model, x_train, x_test, exact, probes: int | None, seed: int) -> dict:
    """One estimate compared with the exact scores (probes=None: the exact row itself)."""
    start = time.perf_counter()
    scores = ecprune.importance(model, x_train, "ecp", progress=False, seed=seed,
                                sensitivity="exact" if probes is None else "hutchinson",
                                probes=probes)
    row = {"samples": len(x_train), "probes": probes or 0, "seed": seed,
           "seconds": round(time.perf_counter() - start, 3),
           "spearman": round(float(spearmanr(flat(exact), flat(scores)).statistic), 6)}
    for ratio in RATIOS:
        ours, reference = pruned(model, scores, ratio), pruned(model, exact, ratio)
        removed, removed_exact = masks(ours) == 0, masks(reference) == 0
        row[f"overlap_{ratio}"] = round(float((removed & removed_exact).sum()
                                              / removed_exact.sum()), 6)
        row[f"error_{ratio}"] = relative_error(ours, model, x_test)
        row[f"exact_error_{ratio}"] = relative_error(reference, model, x_test)
    return row


def run(args) -> list[dict]:
    path = RESULTS / "hutchinson.csv"
    rows = [{k: float(v) for k, v in row.items()} for row in read_csv(path)]
    done = {(int(r["samples"]), int(r["probes"]), int(r["seed"])) for r in rows}
    x, y = heat_fields(args.train + 2000, seed=args.seed)
    model = trained_surrogate(x[: args.train], y[: args.train], epochs=args.epochs,
                              seed=args.seed)
    x_test = x[args.train :]
    for samples in args.samples:
        x_train = x[:samples]
        plan = [(None, 0)] + [(p, s) for p in args.probes for s in range(args.seeds)]
        plan = [(p, s) for p, s in plan if (samples, p or 0, s) not in done]
        if not plan:
            continue
        exact = ecprune.importance(model, x_train, "ecp", progress=False, sensitivity="exact")
        for probes, seed in plan:
            rows.append(cell(model, x_train, x_test, exact, probes, seed))
            print(rows[-1], flush=True)
            write_csv(path, rows, FIELDS)
    if len(rows) == len(done):
        return rows  # nothing new: keep the metadata of the run that made the rows
    with torch.no_grad():
        test_error = float((model(x_test) - y[args.train :]).square().sum()
                           / y[args.train :].square().sum())
    write_json(RESULTS / "hutchinson.json",
               {"machine": machine(), "surrogate_relative_test_error": test_error,
                "command": "python benchmarks/hutchinson_accuracy.py", "args": vars(args)})
    return rows


def plot(rows: list[dict]) -> None:
    fig, axes = pyplot().subplots(1, 3, figsize=(14, 3.9))
    for samples, marker in zip(sorted({int(r["samples"]) for r in rows}), "os^", strict=False):
        mine = [r for r in rows if int(r["samples"]) == samples and r["probes"] > 0]
        exact = next(r for r in rows if int(r["samples"]) == samples and r["probes"] == 0)
        probes = sorted({int(r["probes"]) for r in mine})

        def series(key, mine=mine, probes=probes):
            values = [[r[key] for r in mine if r["probes"] == p] for p in probes]
            return np.array([np.mean(v) for v in values]), np.array([np.ptp(v) for v in values])

        label = f"N = {samples}"
        mean, spread = series("spearman")
        axes[0].errorbar(probes, 1 - mean, yerr=spread / 2, marker=marker, label=label)
        for ratio, style in zip(RATIOS, ("-", "--"), strict=True):
            mean, spread = series(f"overlap_{ratio}")
            axes[1].errorbar(probes, 1 - mean, yerr=spread / 2, marker=marker, ls=style,
                             label=f"{label}, r = {ratio}")
            mean, spread = series(f"error_{ratio}")
            axes[2].errorbar(probes, mean / exact[f"error_{ratio}"], yerr=spread / 2
                             / exact[f"error_{ratio}"], marker=marker, ls=style,
                             label=f"{label}, r = {ratio}")
    titles = ("1 - Spearman(estimate, exact)", "1 - overlap of pruned sets",
              "pruned output error / exact ECP's")
    for ax, title in zip(axes, titles, strict=True):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("probes per sample")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7)
    for ax in axes[:2]:
        ax.set_yscale("log")
    axes[2].axhline(1, color="gray", lw=0.8)
    fig.suptitle("Hutchinson sensitivities on a 256-512-512-1024 heat-equation surrogate "
                 "(mean over seeds, bars: range)", fontsize=11)
    save_figure(fig, "hutchinson_agreement.png")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--samples", type=int, nargs="+", default=[1000, 10_000],
                        help="training inputs the statistics use")
    parser.add_argument("--probes", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    plot(run(args))


if __name__ == "__main__":
    main()
