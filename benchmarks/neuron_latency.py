"""Inference latency of a network with fewer neurons against the dense, masked and CSR ones.

For 784-512-512-10 (PReLU, one slope per unit) and unit fractions 0.5 and 0.75:

- ``dense``: the network as trained (random weights here: the time depends on the shapes);
- ``neurons``: ``ecprune.prune_neurons(..., scope="layer")``, plain smaller ``nn.Linear`` layers;
- ``masked``: the dense network with as many weights per layer as the smaller one, removed at
  random with ``torch.nn.utils.prune`` masks (the reparametrisation's forward hook included);
- ``csr``: that masked network as ``ecprune.to_sparse`` CSR layers.

Each forward pass is timed with ``torch.utils.benchmark`` (median of blocked runs, the least of
``--repeats`` interleaved rounds, under ``torch.inference_mode``) at batch 1 and 256. Writes
JSON with the machine and the date to ``docs/benchmarks/neuron_latency.json``.

Run: ``.venv/bin/python benchmarks/neuron_latency.py --threads 1`` (about a minute); on a GPU
``--device cuda --out docs/benchmarks/neuron_latency_cuda.json`` (``benchmarks/device_checks.sh``).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
from pathlib import Path

import torch
from sparse_inference import cpu_name
from torch import nn
from torch.nn.utils import prune as torch_prune
from torch.utils import benchmark

import ecprune

WIDTHS = (784, 512, 512, 10)
FRACTIONS = (0.5, 0.75)
BATCHES = (1, 256)
SAMPLES = 2048  # inputs the pruning scores and compensates on


def build(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    layers = []
    for k in range(len(WIDTHS) - 1):
        layers.append(nn.Linear(WIDTHS[k], WIDTHS[k + 1]))
        if k < len(WIDTHS) - 2:
            layers.append(nn.PReLU(WIDTHS[k + 1]))
    return nn.Sequential(*layers).eval()


def masked_like(dense: nn.Sequential, small: nn.Sequential) -> nn.Sequential:
    """``dense`` with, per Linear layer, the weight count of ``small``'s, kept at random."""
    masked = copy.deepcopy(dense)
    for big, little in zip(masked, small, strict=True):
        if isinstance(big, nn.Linear):
            amount = big.weight.numel() - little.weight.numel()
            torch_prune.random_unstructured(big, "weight", amount=amount)
    return masked


def timed(models: dict[str, nn.Module], x: torch.Tensor, min_run_time: float,
          repeats: int) -> dict[str, float]:
    """Least of ``repeats`` medians per model, interleaved (other jobs only add time)."""
    best = dict.fromkeys(models, float("inf"))
    with torch.inference_mode():
        for _ in range(repeats):
            for name, model in models.items():
                timer = benchmark.Timer("model(x)", globals={"model": model, "x": x},
                                        num_threads=torch.get_num_threads())
                best[name] = min(best[name],
                                 timer.blocked_autorange(min_run_time=min_run_time).median)
    return best


def measure(min_run_time: float, repeats: int, device: str = "cpu") -> list[dict]:
    rows = []
    data = torch.randn(SAMPLES, WIDTHS[0], generator=torch.Generator().manual_seed(1))
    dense = build()
    on_device = copy.deepcopy(dense).to(device)
    for fraction in FRACTIONS:
        small = copy.deepcopy(dense)
        report = ecprune.prune_neurons(small, data, fraction, "ecp", scope="layer")
        masked = masked_like(dense, small)
        csr = ecprune.to_sparse(masked)
        kept = sum(int(m.weight_mask.sum()) for m in masked if hasattr(m, "weight_mask"))
        assert kept == report.after.macs  # a Linear's multiply-adds are its weights
        models = {"dense": on_device, "neurons": small.to(device), "masked": masked.to(device),
                  "csr": csr.to(device)}
        for batch in BATCHES:
            x = torch.randn(batch, WIDTHS[0], device=device)
            best = timed(models, x, min_run_time, repeats)
            row = {"fraction": fraction, "batch": batch, "widths": report.widths,
                   "weights_dense": report.before.macs, "weights_kept": report.after.macs,
                   **{f"{name}_us": round(seconds * 1e6, 1) for name, seconds in best.items()},
                   **{f"speedup_{name}": round(best["dense"] / best[name], 2)
                      for name in ("neurons", "masked", "csr")}}
            rows.append(row)
            print(f"fraction {fraction} batch {batch:>3}: " + ", ".join(
                f"{name} {seconds * 1e6:8.1f} us" for name, seconds in best.items()), flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: stable on a shared machine)")
    parser.add_argument("--min-run-time", type=float, default=0.2,
                        help="seconds per blocked measurement (default: 0.2)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="interleaved rounds per model; the least median is kept")
    parser.add_argument("--device", default="cpu",
                        help="torch device of the timed models (default: cpu; cuda on a GPU, "
                             "where the timer synchronises)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent
                        / "docs" / "benchmarks" / "neuron_latency.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    before = os.getloadavg()
    rows = measure(args.min_run_time, args.repeats, args.device)
    after = os.getloadavg()
    payload = {"benchmark": "neuron_latency", "network": "-".join(map(str, WIDTHS)),
               "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
               "machine": {"cpu": cpu_name(), "cores": os.cpu_count(),
                           "platform": platform.platform()},
               "torch": torch.__version__, "threads": args.threads, "device": args.device,
               "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
               "load_average": {"before": before[0], "after": after[0]}, "rows": rows}
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
