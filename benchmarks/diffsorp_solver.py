"""Accuracy and cost of the diffusion-sorption generator on PDEBench's full grid.

Solves samples 0..N-1 (1024 cells, 101 times) with the default BDF (timed in-process, then
again over the process pool into the default cache, which is the data the paper subset uses),
with BDF at tolerances tightened tenfold, with a tight BDF reference (rtol 1e-10) on a few
samples, and with PDEBench's default-tolerance RK45 on the first K samples. Prints a JSON
summary and writes it to benchmarks/results/diffsorp_solver.json.

Run: ``nice -n 10 python benchmarks/diffsorp_solver.py`` (about 10 minutes on 2 cores; the
RK45 and pool runs resume from the cache if interrupted).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from ecprune.data import diffusion_sorption

QUIET = {"progress": False, "cache": False, "workers": 1}


def timed(samples, **kwargs):
    start = time.perf_counter()
    data = diffusion_sorption(samples, **kwargs)
    return data, (time.perf_counter() - start) / len(samples)


def max_abs(a, b):
    return float(np.abs(a - b).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--rk45-samples", type=int, default=20)
    parser.add_argument("--reference-samples", type=int, default=5)
    parser.add_argument("--out", default="benchmarks/results/diffsorp_solver.json")
    args = parser.parse_args()
    samples, k, r = range(args.samples), range(args.rk45_samples), range(args.reference_samples)
    load_before = os.getloadavg()

    bdf, bdf_seconds = timed(samples, **QUIET)
    pool_start = time.perf_counter()
    cached = diffusion_sorption(samples)  # the default cache the paper subset reads
    pool_seconds = time.perf_counter() - pool_start
    tight = diffusion_sorption(samples, rtol=1e-7, atol=1e-10, progress=False, cache=False)
    reference = diffusion_sorption(r, rtol=1e-10, atol=1e-13, progress=False, cache=False)
    _, rk45_seconds = timed(range(1), method="RK45", **QUIET)
    rk45 = diffusion_sorption(k, method="RK45")
    rk45_ref = diffusion_sorption(r, method="RK45", progress=False)

    summary = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "load_average_1min_before_after": [round(load_before[0], 2),
                                           round(os.getloadavg()[0], 2)],
        "samples": args.samples,
        "bdf_seconds_per_trajectory_in_process": round(bdf_seconds, 4),
        "bdf_seconds_total_process_pool_incl_cache_writes": round(pool_seconds, 2),
        "bdf_cache_hits_in_pool_run": cached.cache_hits,
        "bdf_change_when_tolerances_tightened_tenfold": max_abs(tight.u, bdf.u),
        "bdf_error_vs_rtol_1e-10_reference": max_abs(bdf.u[: len(r)], reference.u),
        "rk45_seconds_per_trajectory_in_process": round(rk45_seconds, 2),
        "rk45_samples": args.rk45_samples,
        "rk45_vs_bdf_max_abs_difference": max_abs(rk45.u, bdf.u[: len(k)]),
        "rk45_vs_bdf_per_sample_max": [round(float(v), 5) for v in
                                       np.abs(rk45.u - bdf.u[: len(k)]).max(axis=(1, 2))],
        "rk45_error_vs_rtol_1e-10_reference": max_abs(rk45_ref.u, reference.u),
        "bdf_vs_pool_identical": bool(np.array_equal(cached.u, bdf.u)),
    }
    text = json.dumps(summary, indent=2)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
