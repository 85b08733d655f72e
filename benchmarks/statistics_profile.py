"""Where the time of ECP's statistics pass goes: torch.profiler, by operator and shape.

Profiles one ``ecprune.importance(model, x, "ecp")`` call on 784-64-64-10 with 60,000 random
inputs after a warm-up call, and a gradient pass for comparison, with one thread (a single
thread keeps the shares readable on a loaded machine). Prints the top operators and writes
them to ``docs/benchmarks/statistics_profile.txt``.

Run: ``python benchmarks/statistics_profile.py [--threads N] [--engine chain|autograd]``.
"""

from __future__ import annotations

import argparse

import torch
from statistics_common import MODELS, RESULTS, Opaque, gradient_pass, machine, mlp, random_data
from torch.profiler import ProfilerActivity, profile

import ecprune


def profiled(task, rows: int) -> str:
    task()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        task()
    return prof.key_averages(group_by_input_shape=True).table(
        sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=32,
        max_shapes_column_width=60)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--engine", choices=["chain", "autograd"], default="chain")
    parser.add_argument("--rows", type=int, default=20)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    widths, samples, loss = MODELS["mnist"]
    model = mlp(widths)
    x, y = random_data(widths, samples, loss)
    net = model if args.engine == "chain" else Opaque(model)
    report = [f"# {machine()}", f"# ecp, {args.engine} engine, {args.threads} thread(s)",
              profiled(lambda: ecprune.importance(net, x, "ecp", progress=False), args.rows),
              "# gradient pass", profiled(lambda: gradient_pass(model, x, y, loss), 8)]
    text = "\n".join(report)
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"statistics_profile_{args.engine}.txt").write_text(text + "\n")


if __name__ == "__main__":
    main()
