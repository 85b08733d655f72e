"""Which ECP unit score ranks hidden units better: the joint shift of all the consumer's biases
or each row's own shift (the per-row sum of ECP's weight scores)?

For trained PReLU MLPs (MNIST 784-64-64-10 as in the paper, or scikit-learn's digits
64-32-32-10), per seed:

- every hidden unit is removed alone, for real, with each variant's own bias shift, and the
  output error ``E||y - y_dense||^2`` measured through the nonlinear network; the Spearman
  correlation of each score with the real error of its own removal says how well it ranks,
  and the real errors of the two shifts say which compensates better;
- ``prune_neurons(..., "ecp", shift=...)`` and ``"ecp-refit"`` at several fractions: relative
  output error and accuracy on the test set.

The last hidden layer feeds the (linear) output layer, where ``J = I`` and both variants are
the same formula; they differ in the layers before.

    .venv/bin/python benchmarks/neuron_scores.py --dataset mnist --seeds 3 --threads 1
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import nn

import ecprune
from ecprune.data import load_mnist
from ecprune.structured import score_units

FRACTIONS = (0.25, 0.5, 0.75)


def load(dataset: str):
    if dataset == "mnist":
        data = load_mnist()
        to = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
        return (to(data.x_train), torch.as_tensor(data.y_train).long(), to(data.x_test),
                torch.as_tensor(data.y_test).long(), [784, 64, 64, 10], 3)
    from sklearn.datasets import load_digits
    x, y = load_digits(return_X_y=True)
    x = torch.as_tensor(x / 16, dtype=torch.float32)
    y = torch.as_tensor(y).long()
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    return x[:1400], y[:1400], x[1400:], y[1400:], [64, 32, 32, 10], 30


def train(widths, x, y, epochs: int, seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    layers = []
    for k in range(len(widths) - 1):
        layers.append(nn.Linear(widths[k], widths[k + 1]))
        if k < len(widths) - 2:
            layers.append(nn.PReLU(widths[k + 1]))
    model = nn.Sequential(*layers)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(128):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            optimizer.step()
    return model.eval()


def single_removals(model, x, scored) -> dict[str, np.ndarray]:
    """Real output error of removing each unit alone with its shift: {group: (size,)}."""
    with torch.no_grad():
        dense = model(x)
    errors = {}
    for name, found in scored.scores.items():
        (consumer, shift), = found.shifts.items()
        layer = model.get_submodule(consumer)
        values = []
        for j in range(len(found.score)):
            pruned = copy.deepcopy(model)
            target = pruned.get_submodule(consumer)
            with torch.no_grad():
                target.weight[:, j] = 0
                target.bias += shift[:, j].to(layer.bias.dtype)
                values.append((pruned(x) - dense).square().sum(1).mean().item())
        errors[name] = np.array(values)
    return errors


def end_to_end(model, x, x_test, y_test, dense_test) -> list[dict]:
    rows = []
    for method, shift in (("ecp", "joint"), ("ecp", "rows"), ("ecp-refit", "joint"),
                          ("ecp-refit", "rows")):
        for fraction in FRACTIONS:
            pruned = copy.deepcopy(model)
            start = time.perf_counter()
            report = ecprune.prune_neurons(pruned, x, fraction, method, shift=shift)
            seconds = time.perf_counter() - start
            with torch.no_grad():
                out = pruned(x_test)
            rows.append({"method": method, "shift": shift, "fraction": fraction,
                         "widths": report.widths, "seconds": seconds,
                         "relative_test_error": ((out - dense_test).square().sum(1).mean()
                                                 / dense_test.square().sum(1).mean()).item(),
                         "test_accuracy": (out.argmax(1) == y_test).float().mean().item()})
    return rows


def run_seed(dataset, seed, samples) -> dict:
    x, y, x_test, y_test, widths, epochs = load(dataset)
    model = train(widths, x, y, epochs, seed)
    x_score = x[:samples]
    result = {"seed": seed, "layers": {}}
    scored = {shift: score_units(model, x_score, "ecp", shift=shift)
              for shift in ("joint", "rows")}
    real = {shift: single_removals(model, x_score, scored[shift]) for shift in scored}
    for name in scored["joint"].scores:
        entry = {}
        for shift in scored:
            score = scored[shift].scores[name].score.numpy()
            entry[shift] = {
                "spearman_with_own_removal": float(spearmanr(score, real[shift][name])[0]),
                "mean_real_error": float(real[shift][name].mean()),
                "mean_predicted_error": float(score.mean())}
        entry["joint_shift_beats_rows_shift"] = float(np.mean(real["joint"][name]
                                                              <= real["rows"][name]))
        result["layers"][name] = entry
    with torch.no_grad():
        dense_test = model(x_test)
    result["dense_test_accuracy"] = (dense_test.argmax(1) == y_test).float().mean().item()
    result["pruning"] = end_to_end(model, x_score, x_test, y_test, dense_test)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=["mnist", "digits"], default="mnist")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=10000,
                        help="training inputs the scores and the real removals use")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = [run_seed(args.dataset, seed, args.samples) for seed in range(args.seeds)]
    payload = {"benchmark": "neuron_scores", "dataset": args.dataset,
               "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
               "machine": platform.platform(), "processor": platform.processor(),
               "threads": args.threads, "torch": torch.__version__, "samples": args.samples,
               "seeds": results}
    out = args.out or Path(f"docs/benchmarks/neuron_scores_{args.dataset}.json")
    out.write_text(json.dumps(payload, indent=2) + "\n")
    for result in results:
        for name, entry in result["layers"].items():
            print(result["seed"], name, {k: v for k, v in entry.items()})
        for row in result["pruning"]:
            print(result["seed"], row["method"], row["shift"], row["fraction"],
                  f"{row['relative_test_error']:.4f}", f"{row['test_accuracy']:.4f}")


if __name__ == "__main__":
    main()
