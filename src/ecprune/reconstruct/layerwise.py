"""Pieces shared by the layer-by-layer reconstructions (:mod:`ecprune.reconstruct.refit`,
:mod:`ecprune.reconstruct.sparsegpt`): the order in which layers run, the Tikhonov damping of a Gram
matrix, a positive-definite solve, and writing a reconstructed layer back into its masks.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable

import torch
from torch import nn

from ..engine.batching import Batch
from ..engine.layers import keep_mask
from ..engine.statistics import ACCUMULATE_DTYPE
from ..engine.tape import LayerTape, eval_mode, forward
from ..masking.apply import apply_pruning

BatchFactory = Callable[[], Iterable[Batch]]
# Eigenvalues of a Gram matrix below this fraction of the largest count as zero: singular values
# of the data below 1e-6 of the largest, well above float64 rounding of the normal equations.
RANK_RTOL = 1e-12


def execution_order(model: nn.Module, layers: dict[str, nn.Linear], batches: BatchFactory,
                    output_fn: Callable[[object], torch.Tensor] | None) -> list[str]:
    """Names of ``layers`` in the order the forward pass calls them (one input of the data)."""
    first = next(iter(batches()), None)
    if first is None:
        raise ValueError("The 'data' parameter holds no samples; expected at least one input.")
    with torch.no_grad(), eval_mode(model), LayerTape(layers, differentiable=False) as tape:
        forward(model, first.inputs[:1], output_fn)
    return list(tape.calls)


def detached_copy(model: nn.Module) -> nn.Module:
    """``copy.deepcopy(model)`` that also works after a forward with gradients through pruned
    layers, whose ``weight`` is then a non-leaf tensor that deepcopy refuses."""
    memo = {id(module.weight): module.weight.detach().clone() for module in model.modules()
            if hasattr(module, "weight_orig") and isinstance(module.weight, torch.Tensor)}
    return copy.deepcopy(model, memo)


def ridge(gram: torch.Tensor, damping: float) -> torch.Tensor:
    """``damping * mean(diag G)``: the relative Tikhonov term of SparseGPT (1% there).

    Added to the diagonal it makes the Gram matrix positive definite when inputs are constant
    or collinear (dead pixels, dead units), at a relative cost of about ``damping`` in the fit.
    """
    return damping * gram.diagonal().mean()


def damped(gram: torch.Tensor, damping: float) -> torch.Tensor:
    """``G + ridge(G, damping) * I``."""
    eye = torch.eye(len(gram), dtype=gram.dtype, device=gram.device)
    return gram + ridge(gram, damping) * eye


def solve_spd(matrix: torch.Tensor, rhs: torch.Tensor, *, definite: bool) -> torch.Tensor:
    """Solve ``matrix x = rhs`` for a symmetric positive semi-definite ``matrix``.

    ``definite`` (a ridge was added): Cholesky. Otherwise the minimum-norm least-squares
    solution, dropping eigenvalues below ``RANK_RTOL`` times the largest: a constant input
    (e.g. a fully pruned upstream unit) is collinear with the ones column, and Cholesky may then
    "succeed" on rounding noise and return huge cancelling coefficients.
    """
    if definite:
        return torch.cholesky_solve(rhs, torch.linalg.cholesky(matrix))
    return torch.linalg.pinv(matrix, hermitian=True, rtol=RANK_RTOL) @ rhs


def write_layer(name: str, layer: nn.Linear, weight: torch.Tensor, bias: torch.Tensor | None,
                keep: torch.Tensor) -> None:
    """Mask ``~keep`` (``torch.nn.utils.prune`` masks) and store ``weight`` at the kept
    positions of ``weight_orig`` and ``bias`` in the bias; removed positions keep their
    original values in ``weight_orig``, as PyTorch's pruning does."""
    apply_pruning({name: layer}, {name: keep_mask(layer) & ~keep}, {})
    with torch.no_grad():
        layer.weight_orig.copy_(torch.where(keep, weight.to(layer.weight_orig.dtype),
                                            layer.weight_orig))
        if bias is not None:
            layer.bias.copy_(bias.to(layer.bias.dtype))
        layer.weight = layer.weight_orig * layer.weight_mask


def augmented_weight(weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``[W, b]`` in float64 (the bias as the coefficient of the ones column), or ``W``."""
    weight = weight.to(ACCUMULATE_DTYPE)
    if bias is None:
        return weight
    return torch.cat([weight, bias.detach().to(ACCUMULATE_DTYPE)[:, None]], 1)

