"""SparseGPT / Optimal Brain Compression for ``nn.Linear`` layers: the ``"sparsegpt"`` method.

References: B. Hassibi and D. Stork, "Second order derivatives for network pruning: Optimal
Brain Surgeon", NeurIPS 1993; E. Frantar and D. Alistarh, "Optimal Brain Compression", NeurIPS
2022; E. Frantar and D. Alistarh, "SparseGPT: Massive language models can be accurately pruned
in one-shot", ICML 2023.

Each layer is pruned on its own quadratic problem: with ``x = [a, 1]`` the layer's inputs plus
the bias's ones column (the bias is a coordinate that is never removed but is updated) and
``H = E[x x^T] + damping * mean(diag) * I`` (``damping=0.01``, the paper's 1%), find a mask
and new rows minimising ``(w - w') H (w - w')^T`` per row. Removing ``w_q`` with the optimal
update of the other coordinates ``F`` of its row (OBS) costs ``w_q^2 / [H_F^-1]_qq`` and
changes the row by ``-w_q / [H_F^-1]_qq * H_F^-1[:, q]``.

SparseGPT visits the columns left to right and freezes each one once visited, so the update for
column ``q`` reaches the columns ``F = {q, q+1, ...}`` only. It reads off the upper Cholesky
factor ``U`` of ``H^-1`` (``H^-1 = U^T U``): the update is ``-(w_q / U_qq) U[q, q:]`` and the
saliency ``w_q^2 / U_qq^2``. Masks are chosen per block of ``block_size`` columns (128 in the
paper) from the saliencies at the start of the block, across all rows of the block ("adaptive
mask selection"); the block's accumulated updates reach the later columns in one GEMM.
Layers are pruned one after the other, from input to output, each on the inputs of the already
pruned upstream network, as in the paper.

Allocation **(choice)**: SparseGPT prunes every layer to the same sparsity, here
``scope="layer"``. With ``scope="global"`` (the default) the per-layer counts come from one
global ranking of the dense network's OBS costs scaled by ECP's mean output sensitivity of the
row, ``E[s_i] w_ij^2 / [H^-1]_jj`` (see :class:`ecprune.methods.SparseGPT`), so layers with
cheap weights lose more. Within a layer the removals are spread over the blocks in proportion to
the weights still present (cumulative rounding: the count is exact); weights already masked stay
removed and count.

Semi-structured N:M (the paper's section on it): at every column ``j`` with ``j % M == 0`` each
row removes the ``M - N`` lowest ``w^2 / U_jj^2`` of its columns ``j..j+M-1``, read from the
row's values at that point (updated by the removals to their left), weights already masked
first; blocks are rounded down to a multiple of ``M`` (at least ``M``) so that no group straddles
two, which leaves the result independent of the block size.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..engine.layers import effective_weight, keep_mask
from ..engine.statistics import ACCUMULATE_DTYPE, StatisticsRequest, collect_statistics
from ..masking.order import lowest
from ..masking.pattern import Pattern, group_removals
from .layerwise import BatchFactory, augmented_weight, damped, execution_order, write_layer


def _layer_hessian(gram: torch.Tensor, has_bias: bool, damping: float) -> torch.Tensor:
    """Damped ``H`` from ``sum [a,1]^T [a,1]`` (the ones row/column dropped without a bias)."""
    if not has_bias:
        gram = gram[:-1, :-1]
    return damped(gram, damping)


def _cholesky(matrix: torch.Tensor) -> torch.Tensor:
    factor, info = torch.linalg.cholesky_ex(matrix)
    if int(info) != 0:
        raise ValueError(
            "The layer's input Gram matrix is singular (a constant or duplicated input), so the "
            "OBS updates are undefined. Pass 'damping' > 0 (SparseGPT uses 0.01)."
        )
    return factor


def obs_saliency(weight: torch.Tensor, bias: torch.Tensor | None, gram: torch.Tensor,
                 damping: float) -> torch.Tensor:
    """OBS cost ``w_ij^2 / [H^-1]_jj`` of removing each weight alone, all other coordinates of
    its row (bias included) updated; ``H`` as in the module docstring, from ``gram``'s mean."""
    count = gram[-1, -1]  # the ones column's square: the number of samples
    inverse = torch.cholesky_inverse(_cholesky(
        _layer_hessian(gram / count, bias is not None, damping)))
    n_in = weight.shape[1]
    return weight.to(ACCUMULATE_DTYPE).square() / inverse.diagonal()[None, :n_in]


def block_quotas(present: torch.Tensor, prunable: torch.Tensor, count: int,
                 bounds: list[tuple[int, int]]) -> list[int]:
    """Removals per column block summing to ``count``: the weights already absent, plus the
    rest spread in proportion to each block's present prunable weights."""
    existing = [int((~present[:, a:b]).sum()) for a, b in bounds]
    available = torch.tensor([int((present & prunable)[:, a:b].sum()) for a, b in bounds])
    extra = count - sum(existing)
    total = max(1, int(available.sum()))
    cumulative = [0] + [round(extra * int(c) / total) for c in available.cumsum(0)]
    return [e + cumulative[k + 1] - cumulative[k] for k, e in enumerate(existing)]


def sparsegpt_rows(weight: torch.Tensor, present: torch.Tensor, prunable: torch.Tensor,
                   hessian: torch.Tensor, count: int, block_size: int,
                   pattern: Pattern | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT on rows ``weight`` (n_out, n) with ``hessian`` (n, n); returns the updated
    rows (float64, removed entries exactly 0) and the removal mask (n_out, n). With a
    ``pattern`` the masks are chosen per group instead (:func:`_group_masks`; ``count`` is
    unused) and the blocks hold whole groups."""
    rows = weight.to(ACCUMULATE_DTYPE).clone()
    n = rows.shape[1]
    upper = torch.linalg.cholesky(torch.cholesky_inverse(_cholesky(hessian)), upper=True)
    if pattern is not None:
        block_size = max(pattern.m, block_size // pattern.m * pattern.m)
    bounds = [(a, min(a + block_size, n)) for a in range(0, n, block_size)]
    quotas = (block_quotas(present, prunable, count, bounds) if pattern is None
              else [None] * len(bounds))
    removed = torch.zeros_like(present)
    for (a, b), quota in zip(bounds, quotas, strict=True):
        block, factor = rows[:, a:b], upper[a:b, a:b]
        chosen = (_block_masks(block, factor, present[:, a:b], prunable[:, a:b], quota)
                  if pattern is None else torch.zeros_like(present[:, a:b]))
        errors = torch.zeros_like(block)
        for j in range(b - a):
            if pattern is not None and j % pattern.m == 0 and prunable[:, a + j].all():
                group = slice(j, j + pattern.m)
                chosen[:, group] = _group_masks(block[:, group], factor.diagonal()[group],
                                                present[:, a:b][:, group], pattern)
            errors[:, j] = torch.where(chosen[:, j], block[:, j], 0) / factor[j, j]
            block[:, j:] -= errors[:, j, None] * factor[j, j:]
        block[chosen] = 0
        rows[:, b:] -= errors @ upper[a:b, b:]
        removed[:, a:b] = chosen
    return rows, removed


def _block_masks(block: torch.Tensor, factor: torch.Tensor, present: torch.Tensor,
                 prunable: torch.Tensor, quota: int) -> torch.Tensor:
    """The ``quota`` lowest ``w^2 / U_jj^2`` of a block, across its rows (weights already
    masked first): SparseGPT's adaptive mask selection."""
    saliency = block.square() / factor.diagonal().square()
    saliency = torch.where(prunable, saliency, torch.inf)
    return lowest(saliency.reshape(-1), present.reshape(-1), quota).reshape(block.shape)


def _group_masks(group: torch.Tensor, diagonal: torch.Tensor, present: torch.Tensor,
                 pattern: Pattern) -> torch.Tensor:
    """SparseGPT's N:M masks of one group of ``M`` columns (n_out, M), from its current values:
    the ``M - N`` lowest ``w^2 / U_jj^2`` of each row go (weights already masked first)."""
    saliency = group.square() / diagonal.square()
    return group_removals(saliency, present, pattern)


def sparsegpt_layer(name: str, layer: nn.Linear, gram: torch.Tensor, count: int, *,
                    damping: float, block_size: int, pattern: Pattern | None = None) -> None:
    """Prune ``layer`` in place to ``count`` removed weights (masked ones included), or to
    ``pattern``."""
    has_bias = layer.bias is not None
    rows = augmented_weight(effective_weight(layer), layer.bias if has_bias else None)
    present = keep_mask(layer)
    prunable = torch.ones_like(present)
    if has_bias:
        present = torch.cat([present, present.new_ones(len(present), 1)], 1)
        prunable = torch.cat([prunable, prunable.new_zeros(len(prunable), 1)], 1)
    hessian = _layer_hessian(gram / gram[-1, -1], has_bias, damping)
    updated, removed = sparsegpt_rows(rows, present, prunable, hessian, count, block_size,
                                      pattern)
    n_in = layer.in_features
    write_layer(name, layer, updated[:, :n_in], updated[:, n_in] if has_bias else None,
                ~removed[:, :n_in])


def sparsegpt_layers(model: nn.Module, layers: dict[str, nn.Linear], counts: dict[str, int],
                     batches: BatchFactory, *, damping: float = 0.01, block_size: int = 128,
                     output_fn: Callable | None = None, progress: bool | None = None,
                     grams: dict[str, torch.Tensor] | None = None,
                     pattern: Pattern | None = None) -> None:
    """Prune every layer to ``counts[name]`` removals (or to ``pattern``), one after the other
    from the input, each on the Gram matrix of its inputs in the network pruned so far (one
    pass each). ``grams`` (of a pass over the same data): the first layer to run, whose inputs
    no pruning upstream can change, uses its own and needs no pass."""
    request = StatisticsRequest(gram=True)
    for k, name in enumerate(execution_order(model, layers, batches, output_fn)):
        layer = layers[name]
        if grams is not None and k == 0:
            gram = grams[name]
        else:
            gram = collect_statistics(model, {name: layer}, batches(), request,
                                      output_fn=output_fn, progress=progress).layers[name].gram
        sparsegpt_layer(name, layer, gram, counts[name], damping=damping, block_size=block_size,
                        pattern=pattern)
