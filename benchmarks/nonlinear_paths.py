"""CPU time of the "nonlinear" baseline: the Sequential fast path against the general vmap path.

Scores a 784-64-64-10 PReLU network (untrained: the cost does not depend on the weights) on
``--samples`` MNIST training inputs with each path, alternating ``--repeats`` times, and reports
process CPU seconds (robust to other jobs on the machine, unlike wall time).

Run: ``python benchmarks/nonlinear_paths.py --samples 1024 --threads 1``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

import ecprune
from ecprune import nonlinear
from ecprune.experiments.mnist import load_mnist_split
from ecprune.experiments.stacked import mlp


def cpu_seconds(model, x, samples: int, *, fast: bool = True, method: str = "nonlinear") -> float:
    """Process CPU seconds of one scoring; ``fast=False`` forces the general vmap path."""
    original = nonlinear._chain_after
    if not fast:
        nonlinear._chain_after = lambda model, layer: None
    try:
        start = time.process_time()
        ecprune.importance(model, x, method, nonlinear_samples=samples, progress=False)
        return time.process_time() - start
    finally:
        nonlinear._chain_after = original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x = load_mnist_split().x_train
    model = mlp((784, 64, 64, 10), seed=0)
    times = {"fast": [], "general": []}
    for _ in range(args.repeats):
        for path in times:
            times[path].append(cpu_seconds(model, x, args.samples, fast=path == "fast"))
    record = {"machine": platform.processor() or platform.machine(), "threads": args.threads,
              "samples": args.samples, "date": datetime.now(UTC).isoformat(timespec="minutes"),
              "cpu_seconds": times}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "nonlinear_paths.json").write_text(json.dumps(record, indent=1))
    best = {path: min(values) for path, values in times.items()}
    print(f"784-64-64-10, {args.samples} samples, {args.threads} thread(s), CPU seconds "
          f"(best of {args.repeats}): fast {best['fast']:.1f}, general {best['general']:.1f}, "
          f"ratio {best['general'] / best['fast']:.1f}x")


if __name__ == "__main__":
    main()
