"""Accuracy and cost of the diffusion-sorption generator on PDEBench's full grid.

Solves samples 0..N-1 (1024 cells, 101 times) with the default BDF (timed in-process, then
over the two-process pool into a temporary cache, then read back from it),
with BDF at tolerances tightened tenfold, with a tight BDF reference (rtol 1e-10) on a few
samples, with PDEBench's default-tolerance RK45 on the first K samples, and on a 16x finer
grid for two samples (the spatial discretisation error of PDEBench's scheme). Prints a JSON
summary and writes it to benchmarks/results/diffsorp_solver.json.

Run: ``nice -n 10 python benchmarks/diffsorp_solver.py`` (about 12 minutes on 2 cores; the
RK45 runs resume from the default cache if interrupted).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import tempfile
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


def spatial_error(bdf, n_fine: int) -> dict:
    """Distance of the 1024-cell solution to one on ``n_fine`` cells (interpolated to the
    coarse centres), over all stored values and over the paper subset."""
    samples = bdf.samples[:2]
    fine = diffusion_sorption(samples, n_cells=n_fine, progress=False, cache=False)
    coarse = bdf.u[: len(samples)]
    error = np.abs(coarse - np.stack([[np.interp(bdf.x, fine.x, row) for row in sample]
                                      for sample in fine.u]))
    return {"reference_cells": n_fine, "samples": list(samples),
            "max_all_times": float(error.max()),
            "max_paper_subset": float(error[:, 10::10, ::16].max()),
            "max_at_t_500": float(error[:, -1].max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--rk45-samples", type=int, default=20)
    parser.add_argument("--reference-samples", type=int, default=5)
    parser.add_argument("--fine-cells", type=int, default=16384)
    parser.add_argument("--out", default="benchmarks/results/diffsorp_solver.json")
    args = parser.parse_args()
    samples, k, r = range(args.samples), range(args.rk45_samples), range(args.reference_samples)
    load_before = os.getloadavg()

    bdf, bdf_seconds = timed(samples, **QUIET)
    with tempfile.TemporaryDirectory() as cache_dir:
        pool = {"cache_dir": cache_dir, "progress": False}
        cached, pool_seconds = timed(samples, **pool)  # solve + write, two processes
        loaded, load_seconds = timed(samples, **pool)
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
        "bdf_seconds_per_trajectory_2_processes_incl_cache_write": round(pool_seconds, 4),
        "bdf_seconds_per_trajectory_cache_hit": round(load_seconds, 5),
        "cache_hits_first_second_call": [cached.cache_hits, loaded.cache_hits],
        "bdf_change_when_tolerances_tightened_tenfold": max_abs(tight.u, bdf.u),
        "bdf_error_vs_rtol_1e-10_reference": max_abs(bdf.u[: len(r)], reference.u),
        "rk45_seconds_per_trajectory_in_process": round(rk45_seconds, 2),
        "rk45_samples": args.rk45_samples,
        "rk45_vs_bdf_max_abs_difference": max_abs(rk45.u, bdf.u[: len(k)]),
        "rk45_vs_bdf_per_sample_max": [round(float(v), 5) for v in
                                       np.abs(rk45.u - bdf.u[: len(k)]).max(axis=(1, 2))],
        "rk45_error_vs_rtol_1e-10_reference": max_abs(rk45_ref.u, reference.u),
        "bdf_pool_and_cache_identical_to_in_process": bool(
            np.array_equal(cached.u, bdf.u) and np.array_equal(loaded.u, bdf.u)),
        "rk45_vs_bdf_rms_paper_subset": float(np.sqrt(np.mean(
            (rk45.u - bdf.u[: len(k)])[:, 10::10, ::16] ** 2))),
        "rk45_minus_bdf_mean": float(np.mean(rk45.u - bdf.u[: len(k)])),
        "spatial_error_of_1024_cells": spatial_error(bdf, args.fine_cells),
    }
    text = json.dumps(summary, indent=2)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
