"""The paper's brute-force "Non-linear" baseline, vectorised.

For every weight ``W_ij`` still present: remove it, shift ``b_i`` by the mean signal
``W_ij E[a_j]``, and measure ``E_x ||y - y_pruned||^2`` exactly through the nonlinear network.
The pre-activation ``u_i`` then changes by ``-W_ij (a_j(x) - E[a_j])``; a block of such
perturbations is pushed through the network at once with ``torch.func.vmap`` over a forward
hook, so the layers upstream of the perturbed one run once per block, not once per weight.
Models that vmap cannot run (in-place writes into unbatched tensors) fall back to tiling the
inputs. Cost: ``|W| x samples x`` (downstream forward), hence the expectation over a seeded
subsample of the data.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.func import vmap
from tqdm.auto import tqdm

from .statistics import LayerTape, eval_mode, forward

# Elements of the perturbation block (weights x samples x layer width) pushed through at once.
BLOCK_ELEMENTS = 2**22


def _perturbed_outputs(model: nn.Module, layer: nn.Linear, samples: torch.Tensor,
                       deltas: torch.Tensor, output_fn) -> torch.Tensor:
    """Outputs (K, n, n_out) with ``deltas[k]`` (n, n_out_layer) added to the layer's output."""

    def run(delta: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        handle = layer.register_forward_hook(lambda module, args, out: out + delta)
        try:
            output = model(inputs)
            output = output if output_fn is None else output_fn(output)
            return output.reshape(len(inputs), -1)
        finally:
            handle.remove()

    try:
        return vmap(run, in_dims=(0, None))(deltas, samples)
    except RuntimeError:
        k, n = deltas.shape[:2]
        tiled = samples.repeat(k, *([1] * (samples.ndim - 1)))
        return run(deltas.reshape(k * n, -1), tiled).reshape(k, n, -1)


def brute_force_errors(
    model: nn.Module,
    name: str,
    layer: nn.Linear,
    weight: torch.Tensor,
    mean_input: torch.Tensor,
    samples: torch.Tensor,
    *,
    output_fn: Callable[[object], torch.Tensor] | None = None,
    progress: bool | None = None,
) -> torch.Tensor:
    """``E ||y - y_pruned||^2`` over ``samples`` for removing each weight of ``layer`` alone.

    Returns a tensor shaped like ``weight``; weights already zero score 0.
    """
    with torch.no_grad(), eval_mode(model):
        with LayerTape({name: layer}, differentiable=False) as tape:
            dense = forward(model, samples, output_fn)[1]
        centred = tape.inputs[name] - mean_input.to(samples.dtype)  # (n, n_in)
        n, n_out_layer = len(samples), layer.out_features
        flat = torch.nonzero(weight.reshape(-1)).squeeze(1)
        errors = torch.zeros(weight.numel(), dtype=weight.dtype, device=weight.device)
        block = max(1, BLOCK_ELEMENTS // (n * n_out_layer))
        for start in tqdm(range(0, len(flat), block), desc=f"nonlinear {name}", unit="block",
                          disable=None if progress is None else not progress, leave=False):
            index = flat[start : start + block]
            rows, cols = index // weight.shape[1], index % weight.shape[1]
            deltas = torch.zeros(len(index), n, n_out_layer, dtype=weight.dtype,
                                 device=weight.device)
            removed_signal = weight[rows, cols, None] * centred[:, cols].T  # (K, n)
            deltas[torch.arange(len(index)), :, rows] = -removed_signal
            outputs = _perturbed_outputs(model, layer, samples, deltas, output_fn)
            errors[index] = (outputs - dense).square().sum(-1).mean(-1)
    return errors.reshape(weight.shape)
