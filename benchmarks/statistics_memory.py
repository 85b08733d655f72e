"""Peak memory of the statistics pass against the number of samples.

Each measurement runs in a fresh subprocess: it builds the model, streams seeded random chunks
from a generator (so the data set itself is never resident), and reports the growth of the
resident set during the pass: peak RSS (``getrusage`` ``ru_maxrss``) minus the RSS just
before it (with a fixed glibc mmap threshold, see ``CHILD_ENV``). ECP's memory should be
O(|W| + chunk x width): the same for 10k and 60k samples.

Run: ``python benchmarks/statistics_memory.py`` (a few minutes); writes
``docs/benchmarks/statistics_memory.csv``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import torch
from statistics_common import CHUNK, MODELS, RESULTS, Opaque, gradient_pass, mlp, write_csv

import ecprune

PASSES = ("gradient pass", "ecp", "ecp, autograd engine", "gradient")
# glibc raises its mmap threshold after each large free, after which freed chunk buffers stay
# in a growing heap: RSS then grows with the number of chunks whatever the code does. A fixed
# threshold returns every large buffer to the system, so RSS tracks live memory.
CHILD_ENV = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(2**17)}


def _rss_mib() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def _stream(widths, samples, loss, seed):
    """Seeded random (inputs, targets) chunks, generated as they are consumed."""
    generator = torch.Generator().manual_seed(seed)
    for start in range(0, samples, CHUNK):
        n = min(CHUNK, samples - start)
        x = torch.rand(n, widths[0], generator=generator)
        y = (torch.randint(0, widths[-1], (n,), generator=generator) if loss == "cross_entropy"
             else torch.randn(n, widths[-1], generator=generator))
        yield x, y


def child(model_name: str, samples: int, which: str) -> dict:
    widths, _, loss = MODELS[model_name]
    model = mlp(widths)
    ecprune.importance(model, torch.rand(8, widths[0]), "ecp")  # load every code path once
    before = _rss_mib()
    stream = _stream(widths, samples, loss, seed=0)
    if which == "gradient pass":
        for x, y in stream:
            gradient_pass(model, x, y, loss)
    elif which == "gradient":
        ecprune.importance(model, stream, "gradient", progress=False)
    else:
        net = Opaque(model) if which == "ecp, autograd engine" else model
        ecprune.importance(net, (x for x, _ in stream), "ecp", progress=False)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"model": "-".join(map(str, widths)), "samples": samples, "pass": which,
            "rss_before_mib": round(before, 1), "peak_growth_mib": round(peak - before, 1)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mnist", "wide"], choices=list(MODELS))
    parser.add_argument("--samples", nargs="+", type=int, default=[10_000, 60_000])
    parser.add_argument("--child", nargs=3, metavar=("MODEL", "SAMPLES", "PASS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.child[2])))
        return
    rows = []
    for model_name in args.models:
        for which in PASSES:
            for samples in args.samples:
                out = subprocess.run([sys.executable, __file__, "--child", model_name,
                                      str(samples), which], check=True, capture_output=True,
                                     text=True, env=CHILD_ENV).stdout
                rows.append(json.loads(out.strip().splitlines()[-1]))
                print(rows[-1])
    write_csv(RESULTS / "statistics_memory.csv", rows)


if __name__ == "__main__":
    main()
