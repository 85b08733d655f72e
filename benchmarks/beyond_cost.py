"""Cost of the reconstructions, as ratios to one gradient pass measured in the same run.

Run by hand, ideally on an otherwise idle machine (ratios within one run are more robust than
seconds):

    python benchmarks/beyond_cost.py --samples 60000 --ratio 0.9 --repeats 3 --threads 1 \
        --out docs/benchmarks/beyond_cost.json
    python benchmarks/beyond_cost.py --width 1024 --samples 10000 --methods ecp ecp-refit \
        ecp-refit-global --out docs/benchmarks/beyond_cost_wide.json  # docs/performance.md's

A 784-W-W-10 PReLU network (W = 64: the MNIST architecture) on random MNIST-shaped inputs: the cost
of every method below depends on the shapes, not on the values. For each method it prints (and
with ``--out`` writes, with the machine and the date), as JSON, the median seconds of
``ecprune.prune`` on a fresh copy and the ratio to the median of one full-data gradient pass
(forward + backward with weight gradients, same chunking).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from statistics_common import machine, write_json

import ecprune

CHUNK = 4096
METHODS = {
    "ecp": {"method": "ecp"},
    "ecp-refit": {"method": "ecp-refit"},
    "ecp-refit-global": {"method": "ecp-refit", "allocation": "global"},
    "ecp-refit-sensitivity": {"method": "ecp-refit", "refit_weighting": "sensitivity"},
    "sparsegpt": {"method": "sparsegpt"},
    "wanda": {"method": "wanda"},
    "ecp-steps10": {"method": "ecp", "steps": 10},
    "ecp-refit-steps3": {"method": "ecp-refit", "steps": 3},
}


def network(width: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(784, width), torch.nn.PReLU(),
                               torch.nn.Linear(width, width), torch.nn.PReLU(),
                               torch.nn.Linear(width, 10))


def gradient_pass(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    start = time.perf_counter()
    for k in range(0, len(x), CHUNK):
        loss = torch.nn.functional.cross_entropy(model(x[k : k + CHUNK]), y[k : k + CHUNK],
                                                 reduction="sum")
        loss.backward()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=60000)
    parser.add_argument("--ratio", type=float, default=0.9)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--width", type=int, default=64, help="hidden width W (default: 64)")
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(args.samples, 784, generator=generator)
    y = torch.randint(0, 10, (args.samples,), generator=generator)
    model = network(args.width)
    gradient = statistics.median(gradient_pass(copy.deepcopy(model), x, y)
                                 for _ in range(args.repeats))
    rows = {"gradient_pass": {"seconds": gradient, "ratio": 1.0}}
    for name in args.methods:
        times = []
        for _ in range(args.repeats):
            clone = copy.deepcopy(model)
            start = time.perf_counter()
            ecprune.prune(clone, x, args.ratio, chunk_size=CHUNK, progress=False,
                          **METHODS[name])
            times.append(time.perf_counter() - start)
        seconds = statistics.median(times)
        rows[name] = {"seconds": seconds, "ratio": seconds / gradient}
    payload = {"machine": machine(), "samples": args.samples, "width": args.width,
               "ratio": args.ratio, "results": rows,
               "last_command": "python benchmarks/beyond_cost.py " + " ".join(sys.argv[1:])}
    print(json.dumps(payload, indent=1))
    if args.out:
        write_json(args.out, payload)


if __name__ == "__main__":
    main()
