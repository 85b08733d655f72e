"""Masks, weights and reports of every method on one seeded model, saved before the Method-object
refactor (issue 14) so that ``test_method_pins.py`` can check that it changed nothing.

Regenerate only when a method's output is meant to change:
``.venv/bin/python tests/pin_methods.py`` (writes ``tests/data/method_pins.pt``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

import ecprune

PINS = Path(__file__).parent / "data" / "method_pins.pt"
# Every method of that time (later methods are pinned by their own tests).
PINNED_METHODS = ("ecp", "ecp-nocomp", "nonlinear", "magnitude", "gradient", "random",
                  "magnitude-comp", "ecp-refit", "sparsegpt", "sparsegpt-refit", "wanda")
# (label, method, steps, options): every method, plus the variants the experiments use.
CASES = [(name, name, 1, {}) for name in PINNED_METHODS] + [
    ("ecp-steps3", "ecp", 3, {}),
    ("ecp-refit-steps3", "ecp-refit", 3, {}),
    ("sparsegpt-refit-steps3", "sparsegpt-refit", 3, {}),
    ("ecp-refit-global", "ecp-refit", 1, {"allocation": "global"}),
    ("ecp-refit-sensitivity", "ecp-refit", 1, {"refit_weighting": "sensitivity"}),
    ("sparsegpt-block4", "sparsegpt", 1, {"block_size": 4, "damping": 0.05}),
    ("ecp-layer", "ecp", 1, {"scope": "layer"}),
    ("ecp-hutchinson", "ecp", 1, {"sensitivity": "hutchinson", "probes": 3}),
]
SPARSITY = 0.6


def pinned_model() -> nn.Sequential:
    """A seeded float64 8-10-9-3 PReLU / tanh network."""
    torch.manual_seed(1234)
    return nn.Sequential(nn.Linear(8, 10), nn.PReLU(), nn.Linear(10, 9), nn.Tanh(),
                         nn.Linear(9, 3)).double()


def pinned_data() -> TensorDataset:
    generator = torch.Generator().manual_seed(99)
    x = torch.randn(300, 8, dtype=torch.float64, generator=generator)
    y = torch.randint(0, 3, (300,), generator=generator)
    return TensorDataset(x, y)


def run_case(method: str, steps: int, options: dict) -> dict:
    """The pruned state dict and the report's numbers of one case."""
    model = pinned_model()
    options = dict(options)
    scope = options.pop("scope", None)
    report = ecprune.prune(model, pinned_data(), SPARSITY, method, scope, steps=steps,
                           chunk_size=128, **options)
    return {"state": {k: v.clone() for k, v in model.state_dict().items()},
            "kept": report.kept, "predicted_error": report.predicted_error,
            "thresholds": {name: layer.threshold for name, layer in report.layers.items()}}


def main() -> None:
    PINS.parent.mkdir(exist_ok=True)
    pins = {label: run_case(method, steps, options) for label, method, steps, options in CASES}
    torch.save(pins, PINS)
    print(f"wrote {len(pins)} cases to {PINS}")


if __name__ == "__main__":
    main()
