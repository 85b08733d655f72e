"""Where fine-tuning time goes: K pruned networks one by one vs. one stacked model.

For K masked 784-64-64-10 PReLU networks (the MNIST fine-tuning job of one seed: 7 methods x
10 ratios = 70), times ``STEPS`` Adam steps at batch 128 of

- ``loop``: each network alone, ``nn.Sequential`` with ``torch.nn.utils.prune`` masks and
  ``torch.optim.Adam`` (its default foreach kernels), one after another;
- ``stacked``: the K networks as one :class:`~ecprune.experiments.stacked.StackedMLP`, with the
  fused Adam the experiments use;
- ``stacked-foreach``: the same with foreach Adam, to show what fusing the optimizer buys.

Run: ``python benchmarks/stacked_training.py --threads 1`` (a minute or two). Prints the time
per step of all K networks and per MNIST epoch (469 steps) in process CPU seconds (robust to
other jobs on the machine; with one thread, wall time on an idle core).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.utils import prune as torch_prune

from ecprune.experiments.stacked import StackedMLP, mlp, stacked_losses

WIDTHS = (784, 64, 64, 10)
BATCH, STEPS_PER_EPOCH = 128, 469


def masked_models(count: int) -> list[torch.nn.Sequential]:
    models = []
    for k in range(count):
        model = mlp(WIDTHS, seed=k)
        for layer in model[::2]:
            torch_prune.random_unstructured(layer, "weight", amount=0.1 + 0.8 * k / count)
        models.append(model)
    return models


def time_loop(models, x, y, steps: int) -> float:
    optimizers = [torch.optim.Adam(m.parameters()) for m in models]
    start = time.process_time()
    for model, optimizer in zip(models, optimizers, strict=True):
        for step in range(steps):
            batch = slice(step * BATCH, (step + 1) * BATCH)
            optimizer.zero_grad()
            F.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
    return (time.process_time() - start) / steps


def time_stacked(models, x, y, steps: int, *, fused: bool) -> float:
    stacked = StackedMLP.from_models(models)
    optimizer = torch.optim.Adam(stacked.parameters(), fused=fused, foreach=not fused or None)
    start = time.process_time()
    for step in range(steps):
        batch = slice(step * BATCH, (step + 1) * BATCH)
        optimizer.zero_grad(set_to_none=True)
        stacked_losses(stacked(x[batch]), y[batch], "cross_entropy").sum().backward()
        optimizer.step()
    return (time.process_time() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", type=int, default=70)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(BATCH * args.steps, WIDTHS[0], generator=generator)
    y = torch.randint(0, WIDTHS[-1], (BATCH * args.steps,), generator=generator)
    seconds = {
        "loop": time_loop(masked_models(args.networks), x, y, args.steps),
        "stacked": time_stacked(masked_models(args.networks), x, y, args.steps, fused=True),
        "stacked-foreach": time_stacked(masked_models(args.networks), x, y, args.steps,
                                        fused=False),
    }
    record = {"machine": platform.processor() or platform.machine(),
              "threads": torch.get_num_threads(), "networks": args.networks,
              "date": datetime.now(UTC).isoformat(timespec="minutes"),
              "seconds_per_step_of_all_networks": seconds}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "stacked_training.json").write_text(json.dumps(record, indent=1))
    print(f"{args.networks} networks {'-'.join(map(str, WIDTHS))}, batch {BATCH}, "
          f"{torch.get_num_threads()} threads")
    for name, value in seconds.items():
        print(f"{name:16} {1e3 * value:8.1f} ms/step  {value * STEPS_PER_EPOCH:7.1f} s/epoch  "
              f"speed-up vs loop {seconds['loop'] / value:5.1f}x")


if __name__ == "__main__":
    main()
