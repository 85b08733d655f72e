"""One rank of the multi-process tests in test_distributed.py (run as a script, not a test).

Usage: python distributed_worker.py RANK WORLD_SIZE PORT OUT_DIR SCENARIO
"""

from __future__ import annotations

import copy
import datetime
import os
import sys

import torch
import torch.distributed as dist

import ecprune


class Tokens(torch.nn.Module):
    """A per-token MLP on 4 tokens of 5 features, averaged over the tokens: several rows per
    sample, so the per-sample sensitivity engine runs."""

    def __init__(self):
        super().__init__()
        self.inp, self.out = torch.nn.Linear(5, 7), torch.nn.Linear(7, 3)

    def forward(self, x):
        return self.out(torch.tanh(self.inp(x.reshape(-1, 4, 5)))).mean(1)


def problem(scenario: str):
    """The same model and full data on every rank (and in the single-process reference)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.PReLU(), torch.nn.Linear(7, 6),
                                torch.nn.Tanh(), torch.nn.Linear(6, 3)).double()
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(41, 5, dtype=torch.float64, generator=generator) + 3.0
    if scenario == "tokens":
        model = Tokens().double()
        x = torch.randn(41, 20, dtype=torch.float64, generator=generator) + 3.0
    y = torch.randint(0, 3, (41,), generator=generator)
    if scenario == "fail":
        x[30, 2] = float("nan")  # lands in rank 1's shard only
    data = torch.utils.data.TensorDataset(x, y)
    if scenario == "iterable":
        data = list(zip(x.split(4), y.split(4), strict=True))
    return model, data


def results(model, data, scenario=""):
    """Scores, shifts and pruned parameters of every method."""
    out = {}
    for method in ecprune.METHODS:
        options = ecprune.methods.applicable(method, {"nonlinear_samples": 16})
        scores = ecprune.importance(model, data, method, chunk_size=4, **options)
        out[method] = {name: (r.score, r.bias_shift) for name, r in scores.items()}
    clone = copy.deepcopy(model)
    ecprune.prune(clone, data, 0.6, chunk_size=4)
    out["pruned"] = {k: v.clone() for k, v in clone.state_dict().items()}
    for key, options in PRUNINGS.items():
        if scenario == "tokens" and options.get("refit_weighting") == "sensitivity":
            continue  # needs one row per sample (a clear error otherwise)
        clone = copy.deepcopy(model)
        ecprune.prune(clone, data, 0.6, chunk_size=4, **options)
        out[key] = {k: v.clone() for k, v in clone.state_dict().items()}
    return out


# Multi-pass prunings: their own streamed sums (refit systems, Grams) are all-reduced too.
PRUNINGS = {
    "ecp-refit": {"method": "ecp-refit"},
    "ecp-refit-sensitivity": {"method": "ecp-refit", "refit_weighting": "sensitivity"},
    "sparsegpt": {"method": "sparsegpt", "block_size": 4},
    "ecp-steps": {"method": "ecp", "steps": 3},
}


def main() -> None:
    rank, world_size, port, out_dir, scenario = sys.argv[1:]
    rank, world_size = int(rank), int(world_size)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world_size, timeout=datetime.timedelta(seconds=20))
    model, data = problem(scenario)
    if scenario == "die" and rank == 1:
        os._exit(3)
    try:
        if scenario.startswith("mismatch"):  # the ranks disagree: both must fail, clearly
            if scenario == "mismatch-data" and rank == 1:
                data = torch.utils.data.TensorDataset(*(t[:-3] for t in data.tensors))
            ecprune.prune(model, data, 0.5 + (0.1 * rank if scenario == "mismatch-sparsity"
                                              else 0.0))
        torch.save(results(model, data, scenario), os.path.join(out_dir, f"rank{rank}.pt"))
    except Exception as err:
        print(f"rank {rank}: {type(err).__name__}: {err}", file=sys.stderr)
        sys.exit(2)
    finally:
        if scenario != "die":
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
