"""Small demo on scikit-learn's bundled digits: ECP against magnitude and random pruning.

Trains a 64-32-32-10 PReLU network (Adam, 40 epochs, batch 64), then prunes copies of it at a
few ratios with each method, without fine-tuning, and prints test loss and accuracy.

Run: ``python -m ecprune.demo`` (about 10 seconds on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import copy

import torch
import torch.nn.functional as F
from torch import nn

import ecprune

METHODS = ("ecp", "magnitude", "random")
RATIOS = (0.3, 0.5, 0.7, 0.8, 0.9)


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
    torch.manual_seed(args.seed)
    x_train, y_train, x_test, y_test = load_digits(args.seed)
    dense = build_model()
    train(dense, x_train, y_train, epochs=args.epochs, seed=args.seed)
    loss, acc = evaluate(dense, x_test, y_test)
    print(f"digits 64-32-32-10, seed {args.seed}: dense test loss {loss:.4f}, accuracy {acc:.4f}")
    print("prune only (no fine-tuning); each cell: test loss / accuracy")
    print(f"{'ratio':>6} " + " ".join(f"{m:>18}" for m in METHODS))
    scores = {m: ecprune.importance(dense, x_train, m, seed=args.seed) for m in METHODS}
    for ratio in RATIOS:
        cells = []
        for method in METHODS:
            model = copy.deepcopy(dense)
            ecprune.prune_by_importance(model, scores[method], ratio)
            loss, acc = evaluate(model, x_test, y_test)
            cells.append(f"{loss:9.4f} / {acc:.3f}")
        print(f"{ratio:6.2f} " + " ".join(f"{c:>18}" for c in cells))


if __name__ == "__main__":
    main()
