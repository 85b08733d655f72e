"""How a loss reads the data's targets: integers are class indices (cross-entropy), floats
are values (squared error), one per output value."""

from __future__ import annotations

import torch


def loss_name(target: torch.Tensor) -> str:
    """``"cross_entropy"`` for integer (class-index) targets, else ``"mse"``."""
    return "mse" if target.is_floating_point() else "cross_entropy"


def regression_target(output: torch.Tensor, target: torch.Tensor, caller: str) -> torch.Tensor:
    """Float ``target`` in ``output``'s shape and dtype; an error naming both shapes when they
    do not hold the same number of values."""
    if target.numel() != output.numel():
        raise ValueError(f"{caller} compares float targets to the outputs value by value, but "
                         f"got targets of shape {tuple(target.shape)} for an output of shape "
                         f"{tuple(output.shape)}; expected one target per output value (or "
                         "integer class indices for cross-entropy).")
    return target.reshape(output.shape).to(output.dtype)
