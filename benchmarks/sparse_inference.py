"""Dense against sparse (CSR) inference time of pruned MLPs, recorded in docs/sparse-inference.md.

For each network, sparsity and batch size: prune every Linear layer to the sparsity (random
unstructured masks, ``torch.nn.utils.prune``; the time of a CSR product depends on the number
of nonzeros, not on which weights were kept), then time the whole forward pass of the dense
pruned model and of ``ecprune.to_sparse(model)`` with ``torch.utils.benchmark`` (median of
blocked runs, the least of five interleaved, no autograd). Prints a markdown table and writes a CSV.

Run: ``.venv/bin/python benchmarks/sparse_inference.py`` (about two minutes).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import itertools
import os
import platform
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune
from torch.utils import benchmark

import ecprune

NETWORKS = {"784-1024-1024-10": (784, 1024, 1024, 10), "784-64-64-10": (784, 64, 64, 10),
            "784-32-32-10": (784, 32, 32, 10)}
SPARSITIES = (0.0, 0.5, 0.7, 0.9, 0.95, 0.99)
BATCHES = (1, 256)


def build(widths: tuple[int, ...], sparsity: float, seed: int) -> nn.Sequential:
    """A PReLU MLP with every Linear pruned to ``sparsity`` at random, masks baked in."""
    torch.manual_seed(seed)
    layers = []
    for k, (n_in, n_out) in enumerate(itertools.pairwise(widths)):
        layers.append(nn.Linear(n_in, n_out))
        if k < len(widths) - 2:
            layers.append(nn.PReLU(n_out))
    model = nn.Sequential(*layers).eval()
    for layer in model:
        if isinstance(layer, nn.Linear) and sparsity > 0:
            torch_prune.random_unstructured(layer, "weight", amount=sparsity)
            torch_prune.remove(layer, "weight")
    return model


def seconds(models: dict[str, nn.Module], x: torch.Tensor, min_run_time: float,
            repeats: int) -> dict[str, float]:
    """Per model, the least of ``repeats`` medians, the models interleaved: on a shared machine
    other jobs only add time, so the minimum is the least disturbed estimate."""
    best = dict.fromkeys(models, float("inf"))
    with torch.inference_mode():
        for _ in range(repeats):
            for name, model in models.items():
                timer = benchmark.Timer("model(x)", globals={"model": model, "x": x},
                                        num_threads=torch.get_num_threads())
                median = timer.blocked_autorange(min_run_time=min_run_time).median
                best[name] = min(best[name], median)
    return best


def measure(min_run_time: float, repeats: int) -> list[dict]:
    rows = []
    for name, widths in NETWORKS.items():
        for sparsity in SPARSITIES:
            dense = build(widths, sparsity, seed=0)
            sparse = ecprune.to_sparse(dense)
            for batch in BATCHES:
                x = torch.randn(batch, widths[0])
                with torch.inference_mode():
                    torch.testing.assert_close(sparse(x), dense(x), rtol=1e-4, atol=1e-4)
                timed = seconds({"dense": dense, "sparse": sparse}, x, min_run_time, repeats)
                dense_s, sparse_s = timed["dense"], timed["sparse"]
                rows.append(dict(network=name, sparsity=sparsity, batch=batch,
                                 dense_us=round(dense_s * 1e6, 1),
                                 sparse_us=round(sparse_s * 1e6, 1),
                                 speedup=round(dense_s / sparse_s, 2)))
                print(f"{name:>17} sparsity {sparsity:4.2f} batch {batch:>3}: dense "
                      f"{dense_s * 1e6:9.1f} us, sparse {sparse_s * 1e6:9.1f} us, "
                      f"x{dense_s / sparse_s:.2f}", flush=True)
    return rows


def markdown(rows: list[dict]) -> str:
    """One row per network and batch size; each cell: dense / sparse microseconds (speed-up)."""
    lines = ["| network | batch | " + " | ".join(f"sparsity {s}" for s in SPARSITIES) + " |",
             "| --- | ---: | " + " | ".join("---:" for _ in SPARSITIES) + " |"]
    for name in NETWORKS:
        for batch in BATCHES:
            cells = [f"{r['dense_us']:.0f} / {r['sparse_us']:.0f} (x{r['speedup']:.2f})"
                     for r in rows if r["network"] == name and r["batch"] == batch]
            lines.append(f"| {name} | {batch} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: stable on a shared machine)")
    parser.add_argument("--min-run-time", type=float, default=0.1,
                        help="seconds per blocked measurement (default: 0.1)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="interleaved measurements per model; the least is kept")
    parser.add_argument("--csv", type=Path,
                        default=Path(__file__).resolve().parent.parent / "docs"
                        / "sparse-inference.csv")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    before = os.getloadavg()
    rows = measure(args.min_run_time, args.repeats)
    after = os.getloadavg()
    print(f"\n{datetime.date.today()}, {cpu_name()}, {os.cpu_count()} cores, torch "
          f"{torch.__version__}, {args.threads} thread(s), load average {before[0]:.2f} before "
          f"and {after[0]:.2f} after\n")
    print(markdown(rows))
    with args.csv.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main()
