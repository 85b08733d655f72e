"""Refuse a layer the autograd graph cannot see (behind ``.detach()`` or ``torch.no_grad()``).

Its sensitivities are identically zero, so ECP would predict no error and prune it first. A
layer whose every unit is truly inactive on the data (dead ReLUs) is zero too, and fine; the
two are told apart by perturbing the layer's output a little and watching the model's output.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .tape import forward

# Perturbation of the layer's output, relative to its largest value.
PERTURBATION = 1e-3


def check_visible(model: nn.Module, layers: dict[str, nn.Linear], blind: list[str],
                  inputs: torch.Tensor, output_fn: Callable | None) -> None:
    """ValueError naming the first layer of ``blind`` (zero sensitivities) whose output does
    change the model's output."""
    with torch.no_grad():
        _, reference = forward(model, inputs, output_fn)
        for name in blind:
            if _moves(model, layers[name], inputs, output_fn, reference):
                raise ValueError(
                    f"Linear layer {name!r} changes the model's output, but the output's "
                    "gradient does not reach it (its sensitivities are all zero: a .detach(), "
                    "torch.no_grad() or a functional use of its weight on the way), so its "
                    "importance cannot be computed. Let gradients flow through it, or exclude "
                    "it with 'layers='.")


def _moves(model: nn.Module, layer: nn.Linear, inputs: torch.Tensor,
           output_fn: Callable | None, reference: torch.Tensor) -> bool:
    generator = torch.Generator(device=inputs.device).manual_seed(0)

    def perturb(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(out.shape, generator=generator, dtype=out.dtype, device=out.device)
        return out + PERTURBATION * out.abs().max().clamp_min(1) * noise

    handle = layer.register_forward_hook(perturb)
    try:
        _, moved = forward(model, inputs, output_fn)
    finally:
        handle.remove()
    rounding = 100 * torch.finfo(reference.dtype).eps * reference.abs().max().clamp_min(1)
    return bool((moved - reference).abs().max() > rounding)
