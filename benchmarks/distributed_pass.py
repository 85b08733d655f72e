"""Time ECP's statistics pass on 1 process against N processes (torch.distributed, gloo).

Run by hand on an otherwise idle machine:

    python benchmarks/distributed_pass.py --samples 60000 --world-sizes 1 2

World size 1 runs in one process with all cores; N > 1 is launched with
``torchrun --standalone --nproc-per-node N`` (one thread per process, torchrun's default).
Every rank builds the same 784-64-64-10 PReLU network and the same random MNIST-shaped inputs;
rank 0 prints the median wall time of ``ecprune.importance(..., "ecp")`` as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import torch


def rank_main(samples: int, repeats: int) -> None:
    import torch.distributed as dist

    import ecprune

    if "RANK" in os.environ:
        dist.init_process_group("gloo")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(784, 64), torch.nn.PReLU(),
                                torch.nn.Linear(64, 64), torch.nn.PReLU(),
                                torch.nn.Linear(64, 10))
    x = torch.rand(samples, 784, generator=torch.Generator().manual_seed(1))
    times = []
    for _ in range(repeats):
        if dist.is_initialized():
            dist.barrier()
        start = time.perf_counter()
        ecprune.importance(model, x, "ecp", progress=False)
        times.append(time.perf_counter() - start)
    if ecprune.distributed.is_main_process():
        print(json.dumps({"world_size": ecprune.distributed.world()[1],
                          "threads_per_process": torch.get_num_threads(), "samples": samples,
                          "median_seconds": round(sorted(times)[len(times) // 2], 3)}))
    if dist.is_initialized():
        dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=60000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--world-sizes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rank-main", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rank_main:
        rank_main(args.samples, args.repeats)
        return
    print(f"# {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{time.strftime('%Y-%m-%d')}, load average {os.getloadavg()[0]:.2f}")
    worker = [__file__, "--rank-main", f"--samples={args.samples}", f"--repeats={args.repeats}"]
    for world in args.world_sizes:
        launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world}"]
        command = [sys.executable, *(launcher if world > 1 else []), *worker]
        print(subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip())


if __name__ == "__main__":
    main()
