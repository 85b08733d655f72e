"""Scoring cost on the diffusion-sorption data: ECP against the "nonlinear" baseline.

The paper claims the non-linear criterion (remove each weight alone, rerun the network) costs
about |W| times ECP's scoring. Both architectures (untrained: the cost does not depend on the
weights) are scored on the same ``--samples`` training inputs by ECP, by "nonlinear" with its
Sequential fast path (the one the experiment uses) and with the general vmap path (one
forward pass per weight), and by ECP on all 51,200 training rows as in the experiment; process
CPU seconds, best of ``--repeats`` after one warm-up round (robust to other jobs on the
machine, unlike wall time).

Run: ``python benchmarks/diffsorp_scoring.py --samples 1024 --threads 1``.
"""

from __future__ import annotations

import argparse
import json
import platform
from datetime import UTC, datetime
from pathlib import Path

import torch
from nonlinear_paths import cpu_seconds

from ecprune.experiments.config import arch_name, weight_count
from ecprune.experiments.diffsorp import ARCHITECTURES, load_diffsorp_split
from ecprune.experiments.stacked import mlp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x_all = load_diffsorp_split("noise=0").x_train
    x = x_all[:args.samples]
    runs = {"ecp": (x, False), "nonlinear": (x, False), "nonlinear-general": (x, True),
            "ecp-all-rows": (x_all, False)}
    record = {"machine": platform.processor() or platform.machine(), "threads": args.threads,
              "samples": args.samples, "all_rows": len(x_all),
              "date": datetime.now(UTC).isoformat(timespec="minutes"), "architectures": {}}
    for widths in ARCHITECTURES:
        model = mlp(widths, seed=0)
        times = {name: [] for name in runs}
        for name, (data, general) in runs.items():  # warm-up, not recorded
            cpu_seconds(model, data, len(data), method=name.split("-")[0], fast=not general)
        for _ in range(args.repeats):
            for name, (data, general) in runs.items():
                method = name.split("-")[0]
                times[name].append(cpu_seconds(model, data, len(data), method=method,
                                               fast=not general))
        best = {name: min(values) for name, values in times.items()}
        record["architectures"][arch_name(widths)] = {
            "weights": weight_count(widths), "cpu_seconds": times, "best": best}
        ratio = {name: best[name] / best["ecp"] for name in best}
        print(f"{arch_name(widths)} (|W| = {weight_count(widths)}), {args.samples} samples, "
              f"CPU s (best of {args.repeats}): ecp {best['ecp']:.3f}, nonlinear "
              f"{best['nonlinear']:.2f} ({ratio['nonlinear']:.0f}x), general path "
              f"{best['nonlinear-general']:.2f} ({ratio['nonlinear-general']:.0f}x); ecp on "
              f"all {len(x_all)} rows {best['ecp-all-rows']:.3f}")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "diffsorp_scoring.json").write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
