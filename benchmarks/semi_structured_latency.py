"""CUDA latency of 2:4 semi-structured layers (``ecprune.to_semi_structured``) against dense ones.

A 4096-4096-4096-4096 MLP (ReLU, float16) pruned to 2:4 by magnitude (``ecprune.prune(...,
pattern="2:4")``), run as the masked dense model and as ``to_semi_structured(model)``, at batch
1, 256 and 4096, each forward timed as in ``neuron_latency.py`` (``torch.utils.benchmark``, which
synchronises CUDA; least median of ``--repeats`` interleaved rounds, ``torch.inference_mode``). The
outputs of the two are compared (largest absolute difference, float16 rounding expected).
Writes JSON with the GPU and the date. Needs a CUDA GPU of compute capability 8.0 or more:
this is a device check (``benchmarks/device_checks.sh``), not run in CI.

Run: ``python benchmarks/semi_structured_latency.py --out docs/benchmarks/semi_structured.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

import torch
from neuron_latency import timed
from torch import nn

import ecprune

WIDTH, DEPTH = 4096, 3
BATCHES = (1, 256, 4096)


def build(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for k in range(DEPTH):
        layers.append(nn.Linear(WIDTH, WIDTH))
        if k < DEPTH - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).eval()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min-run-time", type=float, default=0.2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent
                        / "docs" / "benchmarks" / "semi_structured.json")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("semi_structured_latency.py needs a CUDA GPU (compute capability 8.0+).")
    model = build()
    data = torch.randn(64, WIDTH)
    ecprune.prune(model, data, None, "magnitude", pattern="2:4")
    dense = ecprune.bake_masks(model).cuda().half()
    sparse = ecprune.to_semi_structured(dense)
    rows = []
    for batch in BATCHES:
        x = torch.randn(batch, WIDTH, device="cuda", dtype=torch.float16)
        with torch.inference_mode():
            difference = (dense(x) - sparse(x)).abs().max().item()
        best = timed({"dense": dense, "sparse": sparse}, x, args.min_run_time, args.repeats)
        t_dense, t_sparse = best["dense"], best["sparse"]
        rows.append({"batch": batch, "dense_us": round(t_dense * 1e6, 1),
                     "semi_structured_us": round(t_sparse * 1e6, 1),
                     "speedup": round(t_dense / t_sparse, 2), "max_abs_difference": difference})
        print(f"batch {batch:>4}: dense {t_dense * 1e6:9.1f} us, 2:4 {t_sparse * 1e6:9.1f} us "
              f"({t_dense / t_sparse:.2f}x), max |difference| {difference:.3g}", flush=True)
    payload = {"benchmark": "semi_structured_latency",
               "network": f"{WIDTH}x{DEPTH} Linear, float16, 2:4 by magnitude",
               "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
               "gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
