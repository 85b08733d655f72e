"""Time ECP's statistics pass against one gradient pass, the baselines and a GEMM.

For each model (see ``statistics_common.MODELS``), in the same run, on the same model and data,
with the same chunking: one full-data gradient pass (forward + backward with weight
gradients), ECP's statistics pass (chain engine; for comparison the autograd engine and, for
many outputs, exact against the Hutchinson default), the magnitude and gradient scores, and
the nonlinear baseline (per-weight cost measured on a spread of weights of every layer,
extrapolated to all of them; also run in full where that takes under a minute). Each time is
printed as a ratio to the gradient pass and as GFLOP/s (matrix-product flops counted by
``torch.utils.flop_counter``) against a GEMM rate measured in the same run.

Run: ``python benchmarks/statistics_pass.py [--models mnist ...]`` (about 15 minutes on 2 idle
cores); writes ``docs/benchmarks/statistics_pass.csv`` (rows of models not rerun are kept,
each row with its date, load, threads and niceness) and ``statistics_pass.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
from statistics_common import (
    CHUNK,
    MODELS,
    RESULTS,
    Opaque,
    count_flops,
    gemm_rate,
    gradient_pass,
    interleaved_times,
    machine,
    mlp,
    random_data,
    read_csv,
    write_csv,
    write_json,
)
from torch.utils.data import TensorDataset

import ecprune
from ecprune.engine.batching import iter_batches
from ecprune.engine.sensitivity import resolve_probes
from ecprune.engine.statistics import StatisticsRequest, collect_statistics
from ecprune.methods.nonlinear import brute_force_errors

NONLINEAR_FULL_SECONDS = 60.0  # run the public nonlinear criterion in full below this


def tasks_for(name: str, model, x, y, loss: str) -> dict:
    """The timed passes of one model, keyed by the label printed in the table."""
    data = TensorDataset(x, y)
    tasks = {
        "gradient pass": lambda: gradient_pass(model, x, y, loss),
        "ecp": lambda: ecprune.importance(model, x, "ecp", progress=False),
        "ecp, autograd engine": lambda: ecprune.importance(Opaque(model), x, "ecp",
                                                           progress=False),
        "magnitude": lambda: ecprune.importance(model, x, "magnitude", progress=False),
        "gradient": lambda: ecprune.importance(model, data, "gradient", progress=False),
    }
    if resolve_probes("auto", None, model[-1].out_features) is not None:
        tasks["ecp, exact"] = lambda: ecprune.importance(model, x, "ecp", progress=False,
                                                         sensitivity="exact")
    return tasks


def nonlinear_cost(model, x, *, weights: int, samples: int) -> dict:
    """Seconds and flops per weight of the brute-force baseline, layer by layer, on ``weights``
    evenly spread weights of each layer; extrapolated to every weight."""
    layers = {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    batches = iter_batches(x, chunk_size=CHUNK, device=x.device, dtype=x.dtype)
    stats = collect_statistics(model, layers, batches, StatisticsRequest())  # E[a] per layer
    total_seconds = total_flops = 0.0
    per_weight = {}
    for layer_name, layer in layers.items():
        weight = layer.weight.detach()
        keep = torch.linspace(0, weight.numel() - 1, min(weights, weight.numel())).long()
        subset = torch.zeros_like(weight).reshape(-1)
        subset[keep] = weight.reshape(-1)[keep]
        args = (model, layer_name, layer, subset.reshape(weight.shape),
                stats.mean_input(layer_name), x[:samples])
        start = time.perf_counter()
        brute_force_errors(*args, progress=False)
        seconds = (time.perf_counter() - start) / len(keep)
        flops = count_flops(lambda args=args: brute_force_errors(*args, progress=False))
        per_weight[layer_name] = seconds
        total_seconds += seconds * weight.numel()
        total_flops += flops / len(keep) * weight.numel()
    return {"seconds": total_seconds, "flops": total_flops, "per_weight_seconds": per_weight}


def bench_model(name: str, args) -> list[dict]:
    """Every row of one model; the GEMM rate and the load are taken just before its runs."""
    widths, samples, loss = MODELS[name]
    samples = args.samples or samples
    model = mlp(widths, seed=args.seed)
    x, y = random_data(widths, samples, loss, seed=args.seed)
    context = {"date": machine()["date"], "load": round(os.getloadavg()[0], 2),
               "threads": torch.get_num_threads(), "nice": os.nice(0)}
    rate = gemm_rate()
    tasks = tasks_for(name, model, x, y, loss)
    times = interleaved_times(tasks, args.repeats)
    flops = {label: count_flops(task) for label, task in tasks.items()}
    nonlinear = nonlinear_cost(model, x, weights=args.nonlinear_weights, samples=1024)
    times["nonlinear (extrapolated)"] = {"seconds": nonlinear["seconds"]}
    flops["nonlinear (extrapolated)"] = nonlinear["flops"]
    if nonlinear["seconds"] < NONLINEAR_FULL_SECONDS:
        start = time.perf_counter()
        ecprune.importance(model, x, "nonlinear", progress=False)
        times["nonlinear (full run)"] = {"seconds": time.perf_counter() - start}
        flops["nonlinear (full run)"] = nonlinear["flops"]
    base, cpu_base = times["gradient pass"]["seconds"], times["gradient pass"]["cpu_seconds"]
    n_weights = sum(m.weight.numel() for m in model if isinstance(m, torch.nn.Linear))
    rows = []
    for label, timing in times.items():
        seconds = timing["seconds"]
        rows.append({
            "model": "-".join(map(str, widths)), "samples": samples, "method": label,
            "seconds": round(seconds, 4),
            "median_seconds": round(timing.get("median_seconds", seconds), 4),
            "cpu_seconds": round(timing.get("cpu_seconds", 0), 4),
            "ratio": round(seconds / base, 3),
            "cpu_ratio": (round(timing["cpu_seconds"] / cpu_base, 3) if "cpu_seconds" in timing
                          else ""),
            "gflop": round(flops[label] / 1e9, 2),
            "gflops_per_s": round(flops[label] / seconds / 1e9, 1),
            "gemm_gflops_per_s": round(rate, 1),
            "gemm_fraction": round(flops[label] / seconds / 1e9 / rate, 3),
            "us_per_weight": (round(seconds / n_weights * 1e6, 2) if "nonlinear" in label
                              else ""),
            **context,
        })
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"{'model':<22}{'method':<26}{'seconds':>10}{'x grad':>9}{'x grad cpu':>11}"
          f"{'GFLOP/s':>9}{'of GEMM':>9}{'GEMM':>7}{'load':>6}")
    for row in rows:
        cpu = f"{row['cpu_ratio']:>11.2f}" if row["cpu_ratio"] != "" else " " * 11
        print(f"{row['model']:<22}{row['method']:<26}{row['seconds']:>10.3f}{row['ratio']:>9.2f}"
              f"{cpu}{row['gflops_per_s']:>9.1f}{row['gemm_fraction']:>9.2f}"
              f"{row['gemm_gflops_per_s']:>7.0f}{row['load']:>6.1f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--samples", type=int, default=None, help="override every model's")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--nonlinear-weights", type=int, default=64,
                        help="weights per layer timed for the nonlinear baseline")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's, one per core)")
    parser.add_argument("--output", type=Path, default=RESULTS / "statistics_pass",
                        help="path stem of the .csv and .json results")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    path = args.output.with_suffix(".csv")
    rows = read_csv(path)  # keep the other models' rows: rerun one model at a time
    for name in args.models:
        fresh = bench_model(name, args)
        rows = [r for r in rows if r["model"] != fresh[0]["model"]] + fresh
        print_table(fresh)
        write_csv(path, rows)
    write_json(args.output.with_suffix(".json"),
               {"machine": machine(), "last_command": "python benchmarks/statistics_pass.py "
                + " ".join(sys.argv[1:] if argv is None else argv)})


if __name__ == "__main__":
    main()
