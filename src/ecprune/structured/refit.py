"""``"ecp-refit"`` for units: error curves for the per-group counts, then the consumers' refit.

**Refit.** Once units are gone, every consumer's kept columns ``K`` and bias are refit, layer by
layer from input to output, toward the **dense** network's pre-activations ``u`` on the inputs
``a`` of the network whose upstream layers are already pruned and refit:

    [W_K, b] = argmin sum_x ||[a_K(x), 1] [W_K, b]^T - u(x)||^2 + lambda ||[W_K, b] - start||^2

with ``start`` the layer after ECP's bias shifts and ``lambda = damping * mean(diag G)``
(:func:`ecprune.reconstruct.layerwise.ridge`). Every row shares the support ``K``, so it is one
Gram matrix ``G = sum [a_K, 1]^T [a_K, 1]`` and one solve with ``n_rows`` right-hand sides per
layer (the weight-level refit, :mod:`ecprune.reconstruct.refit`, solves each row on its own).

**Curves.** Removing the ``k`` lowest-ECP units of a group, a consumer refit on its dense inputs
(``H = E[[a, 1][a, 1]^T] + lambda I``) keeps the error ``sum_i E[s_i] w_iR^T [(H^-1)_RR]^-1 w_iR``
over the removed columns ``R`` (OBS), in output units through ECP's ``E[s_i]``. Since every row
loses the same columns in the same order, one Cholesky factor ``L`` of ``(H^-1)`` restricted to
the group's columns in removal order gives the whole curve: with ``Z = L^-1 W_R^T``, removing
the ``k`` first costs ``sum_i E[s_i] (Z_1i^2 + ... + Z_ki^2)``. The curves of all groups go to
:func:`ecprune.reconstruct.allocation.allocate` (Optimal Brain Compression's dynamic
programme).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..engine.statistics import ACCUMULATE_DTYPE, with_ones
from ..engine.tape import eval_mode, stream
from ..masking.order import removal_order
from ..reconstruct.allocation import DAMPING_FLOOR
from ..reconstruct.layerwise import BatchFactory, execution_order, ridge, solve_spd
from ..reconstruct.refit import dense_preactivations
from .groups import UnitGroup, consumer_weight
from .selection import MIN_KEPT
from .shrink import planned_drops, write_weights


def inverse_hessian(gram: torch.Tensor, damping: float) -> torch.Tensor:
    """``(G + lambda I)^-1`` of a mean Gram matrix ``G`` (ones column last), float64."""
    damping = max(damping, DAMPING_FLOOR)
    eye = torch.eye(len(gram), dtype=gram.dtype, device=gram.device)
    return torch.cholesky_inverse(torch.linalg.cholesky(gram + ridge(gram, damping) * eye))


def refit_curve(group: UnitGroup, score: torch.Tensor, weights: dict[str, torch.Tensor],
                grams: dict[str, torch.Tensor], sens: dict[str, torch.Tensor],
                damping: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(counts, errors)`` of the group for ``k = 0 .. size - MIN_KEPT`` removals in the order
    of ``score`` (module docstring); ``grams`` and ``sens`` are means over the data."""
    order = removal_order(score, torch.ones_like(score, dtype=torch.bool))
    increments = torch.zeros(group.size, dtype=ACCUMULATE_DTYPE)
    for consumer in group.consumers:
        name = consumer.module
        where = torch.full((group.size,), -1, dtype=torch.int64)
        where[consumer.units] = torch.arange(len(consumer.units))
        ranks = torch.nonzero(where[order] >= 0).squeeze(1)  # ranks of units this layer sees
        local = where[order][ranks]
        inverse = inverse_hessian(grams[name], damping)
        columns = consumer.positions[local]
        factor = torch.linalg.cholesky(inverse[columns][:, columns])
        weight = consumer_weight(group, consumer, weights[name].to(ACCUMULATE_DTYPE))[:, local]
        z = torch.linalg.solve_triangular(factor, weight.T, upper=False)  # (m, n_rows)
        increments.index_add_(0, ranks, (z.square() * sens[name][None, :]).sum(1).cpu())
    counts = torch.arange(group.size - MIN_KEPT + 1)
    errors = torch.cat([increments.new_zeros(1), torch.cumsum(increments, 0)])
    return counts, errors[: len(counts)]


def refit_consumer(model: nn.Module, reference: nn.Module, name: str, rows: torch.Tensor,
                   columns: torch.Tensor, batches: BatchFactory, *, damping: float,
                   current: torch.Tensor | None = None, output_fn: Callable | None = None,
                   progress: bool | None = None) -> None:
    """Refit columns ``columns`` and the bias of consumer ``name`` of ``model`` toward the
    dense pre-activations ``rows`` of the same layer of ``reference`` (module docstring).
    ``current``: the rows of ``model``'s layer that are refit (default: all, in order)."""
    layer = model.get_submodule(name)
    current = torch.arange(layer.out_features) if current is None else current
    device = layer.weight.device
    size = len(columns) + 1
    gram = torch.zeros(size, size, dtype=ACCUMULATE_DTYPE, device=device)
    cross = torch.zeros(size, len(rows), dtype=ACCUMULATE_DTYPE, device=device)
    with eval_mode(reference):
        for batch, tape, _, _ in stream(model, {name: layer}, batches(), differentiable=False,
                                        output_fn=output_fn, progress=progress,
                                        desc=f"refit {name}"):
            extended = with_ones(tape.inputs[name][:, columns])
            target = dense_preactivations(reference, name, batch.inputs, output_fn)[:, rows]
            gram += extended.T @ extended
            cross += extended.T @ target
    weight = layer.weight.detach().to(ACCUMULATE_DTYPE)
    bias = layer.bias.detach().to(weight.dtype)
    start = torch.cat([weight[current][:, columns], bias[current, None]], 1).T
    lam = ridge(gram, damping)
    eye = torch.eye(size, dtype=gram.dtype, device=device)
    solution = solve_spd(gram + lam * eye, cross + lam * start, definite=damping > 0)
    weight[current[:, None], columns[None, :]] = solution[:-1].T
    bias[current] = solution[-1]
    write_weights(layer, weight, bias)


def refit_consumers(model: nn.Module, reference: nn.Module, groups: dict[str, UnitGroup],
                    chosen: dict[str, torch.Tensor], batches: BatchFactory, *, damping: float,
                    shrink: bool, output_fn: Callable | None = None,
                    progress: bool | None = None) -> None:
    """Refit every consumer of ``groups`` in execution order, after the units ``chosen`` went
    (``shrink``: for real; else as zeros, whose columns stay zero)."""
    drops = planned_drops(groups, chosen)
    names = list(dict.fromkeys(c.module for g in groups.values() for c in g.consumers))
    layers = {name: model.get_submodule(name) for name in names}
    for name in execution_order(model, layers, batches, output_fn):
        dense = reference.get_submodule(name)
        rows = _kept(dense.out_features, drops.get((name, 0)))
        if shrink:
            columns, current = torch.arange(layers[name].in_features), None
        else:  # removed rows and columns are still there, as zeros: they stay zero
            columns, current = _kept(dense.in_features, drops.get((name, 1))), rows
        refit_consumer(model, reference, name, rows, columns, batches, damping=damping,
                       current=current, output_fn=output_fn, progress=progress)


def _kept(size: int, dropped: torch.Tensor | None) -> torch.Tensor:
    keep = torch.ones(size, dtype=torch.bool)
    if dropped is not None:
        keep[dropped] = False
    return torch.nonzero(keep).squeeze(1)
