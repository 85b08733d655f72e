"""Small demo on scikit-learn's bundled digits: ECP, ECP + refit, SparseGPT and magnitude pruning.

Trains a 64-32-32-10 PReLU network (Adam, 40 epochs, batch 64), then prunes copies of it at
ratios 0.3 to 0.95 with each method, without fine-tuning, and prints test loss and accuracy
(the lowest loss of each ratio starred) and the wall-clock seconds each method took. Every
method scores once (:func:`ecprune.importance`) and prunes every ratio from those scores
(:func:`ecprune.prune_by_importance`); ``ecp-refit`` and ``sparsegpt`` then update the kept
weights from the data, which is passed along.

Run: ``python -m ecprune.demo`` (about 10 seconds, on one CPU thread).
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
import torch.nn.functional as F
from torch import nn

import ecprune

METHODS = ("ecp", "ecp-refit", "sparsegpt", "magnitude")
RATIOS = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95)


def load_digits(seed: int) -> tuple[torch.Tensor, ...]:
    """Digits scaled to [0, 1], split 75/25 with ``seed``."""
    from sklearn.datasets import load_digits as sklearn_digits

    x, y = sklearn_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    y = torch.tensor(y, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    cut = int(0.75 * len(x))
    train, test = order[:cut], order[cut:]
    return x[train], y[train], x[test], y[test]


def build_model() -> nn.Sequential:
    """The demo's 64-32-32-10 PReLU network (default PyTorch initialisation)."""
    return nn.Sequential(nn.Linear(64, 32), nn.PReLU(), nn.Linear(32, 32), nn.PReLU(),
                         nn.Linear(32, 10))


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, seed: int) -> None:
    """Adam with default hyper-parameters, batch size 64, cross-entropy."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters())
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=generator).split(64):
            optimizer.zero_grad()
            F.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Test cross-entropy and accuracy."""
    logits = model(x)
    return F.cross_entropy(logits, y).item(), (logits.argmax(1) == y).float().mean().item()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=40)
    args = parser.parse_args(argv)
    # One thread: as fast for a network this small, and OpenMP threads spinning against other
    # jobs on a shared 2-core machine make it many times slower (measured 97 s against 15 s).
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    x_train, y_train, x_test, y_test = load_digits(args.seed)
    dense = build_model()
    train(dense, x_train, y_train, epochs=args.epochs, seed=args.seed)
    loss, acc = evaluate(dense, x_test, y_test)
    print(f"digits 64-32-32-10, seed {args.seed}: dense test loss {loss:.4f}, accuracy {acc:.4f}")
    # Untimed warm-up, so that one-time start-up costs do not land on the first method timed.
    ecprune.importance(dense, x_train[:256], "ecp", progress=False)
    results, scoring, pruning = {}, {}, {}  # (method, ratio) -> (loss, acc); method -> seconds
    for method in METHODS:
        start = time.perf_counter()
        scores = ecprune.importance(dense, x_train, method, seed=args.seed, progress=False)
        scoring[method] = time.perf_counter() - start
        pruning[method] = 0.0
        for ratio in RATIOS:  # data=: the weight updates of ecp-refit and sparsegpt read it
            model = copy.deepcopy(dense)
            start = time.perf_counter()
            ecprune.prune_by_importance(model, scores, ratio, data=x_train)
            pruning[method] += time.perf_counter() - start
            results[method, ratio] = evaluate(model, x_test, y_test)
    print("prune only (no fine-tuning); each cell: test loss / accuracy, * = lowest loss")
    print(f"{'ratio':>6} " + " ".join(f"{m:>19}" for m in METHODS))
    for ratio in RATIOS:
        best = min(METHODS, key=lambda m: results[m, ratio][0])
        cells = ["{:9.4f} / {:.3f}".format(*results[m, ratio]) + ("*" if m == best else " ")
                 for m in METHODS]
        print(f"{ratio:6.2f} " + " ".join(f"{c:>19}" for c in cells))
    print(f"\nwall-clock seconds: one scoring pass (importance), then prune_by_importance at all "
          f"{len(RATIOS)} ratios\n(selection, bias shifts and the weight updates on the data)")
    print(f"{'method':>10} {'scoring':>8} {'pruning':>8} {'total':>8}")
    for method in METHODS:
        print(f"{method:>10} {scoring[method]:8.3f} {pruning[method]:8.3f} "
              f"{scoring[method] + pruning[method]:8.3f}")


if __name__ == "__main__":
    main()
