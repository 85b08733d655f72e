"""Shared pieces of the statistics-pass benchmarks: models, data, timers, machine facts.

Not a test: these scripts are run by hand and write under ``docs/``.
"""

from __future__ import annotations

import csv
import datetime
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "benchmarks"
FIGURES = ROOT / "docs" / "figures"
CHUNK = 4096  # ecprune's default chunk_size, used by every timed pass

# name: (widths, samples, loss). Inputs are random (see docs/performance.md): the time of a
# dense pass does not depend on the values.
MODELS = {
    "mnist": ([784, 64, 64, 10], 60_000, "cross_entropy"),
    "wide": ([784, 1024, 1024, 10], 60_000, "cross_entropy"),
    "pde": ([68, 64, 32, 32, 16, 16, 1], 64_000, "mse"),
    "many": ([256, 512, 512, 1024], 10_000, "mse"),
}


def mlp(widths: list[int], *, seed: int = 0) -> nn.Sequential:
    """Linear layers with PReLU between them (the paper's architectures), float32."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for k in range(len(widths) - 1):
        layers.append(nn.Linear(widths[k], widths[k + 1]))
        if k < len(widths) - 2:
            layers.append(nn.PReLU())
    return nn.Sequential(*layers)


class Opaque(nn.Module):
    """The same function behind a forward ecprune cannot see through: the autograd engine."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def random_data(widths: list[int], samples: int, loss: str, *, seed: int = 0):
    """Inputs uniform in [0, 1) and targets (class labels or Gaussian fields)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(samples, widths[0], generator=generator)
    if loss == "cross_entropy":
        y = torch.randint(0, widths[-1], (samples,), generator=generator)
    else:
        y = torch.randn(samples, widths[-1], generator=generator)
    return x, y


def gradient_pass(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str,
                  chunk: int = CHUNK) -> None:
    """One full-data pass of forward + backward with weight gradients, in ``chunk`` chunks."""
    loss_fn = F.cross_entropy if loss == "cross_entropy" else F.mse_loss
    model.zero_grad(set_to_none=True)
    for start in range(0, len(x), chunk):
        out = model(x[start : start + chunk])
        loss_fn(out, y[start : start + chunk], reduction="sum").backward()


def interleaved_times(tasks: dict[str, Callable[[], object]], repeats: int) -> dict[str, dict]:
    """Wall and CPU seconds of each task, run in turn ``repeats`` times after one warm-up
    round (interleaving spreads load changes over all tasks). ``seconds`` is the fastest run
    (other processes only ever add time), ``median_seconds`` the median."""
    for task in tasks.values():
        task()
    wall: dict[str, list[float]] = {name: [] for name in tasks}
    cpu: dict[str, list[float]] = {name: [] for name in tasks}
    for _ in range(repeats):
        for name, task in tasks.items():
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            task()
            wall[name].append(time.perf_counter() - start_wall)
            cpu[name].append(time.process_time() - start_cpu)
    return {name: {"seconds": min(wall[name]), "median_seconds": statistics.median(wall[name]),
                   "cpu_seconds": min(cpu[name])} for name in tasks}


def count_flops(task: Callable[[], object]) -> float:
    """Floating-point operations of the matrix products ``task`` runs (torch's counter)."""
    with FlopCounterMode(display=False) as counter:
        task()
    return float(counter.get_total_flops())


def gemm_rate(m: int = 128, k: int = 784, n: int = 4480, repeats: int = 20) -> float:
    """Best GFLOP/s of a float32 (m x k) @ (k x n) product on this machine, now."""
    a, b = torch.rand(m, k), torch.rand(k, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * m * k * n / best / 1e9


def machine() -> dict:
    """Facts that put the numbers in context, including the load when they were taken."""
    cpu = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average": [round(value, 2) for value in os.getloadavg()],
    }


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")


def read_csv(path: Path) -> list[dict]:
    """Rows of a results CSV (strings), or none if it does not exist yet."""
    if not path.exists():
        return []
    with open(path) as handle:
        return list(csv.DictReader(handle))


def write_csv(path: Path, rows: list[dict], fields: list[str] | None = None) -> None:
    """Rewrite the whole CSV (scripts call it after every finished cell: resumable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields or list(rows[-1]))
        writer.writeheader()
        writer.writerows(rows)


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, name: str) -> None:
    fig.tight_layout()
    FIGURES.mkdir(parents=True, exist_ok=True)
    fig.savefig(FIGURES / name, dpi=120)
