"""How many weights each layer loses when the kept weights are refit: ``allocation="refit"``.

ECP's global ranking adds up single-weight errors with only the bias moving. Once every kept
weight is refit (:mod:`ecprune.refit`) that sum no longer predicts which layer can lose more:
on MNIST 784-64-64-10 it removes too much of the first layer (docs/beyond.md). Following the
non-uniform compression of Optimal Brain Compression (E. Frantar and D. Alistarh, NeurIPS 2022,
which solves it by dynamic programming over per-layer error curves), every layer gets an error
curve ``e_l(k)`` at a grid of removal counts ``k``: the ``k`` lowest ECP scores of the layer
removed, every row refit by damped least squares toward its own pre-activations, and the rows'
errors weighted by their mean output sensitivity ``E[s_i]`` (ECP's, so the curves of different
layers are in the same output units). Dynamic programming then picks the counts, summing to the
budget, with the least ``sum_l e_l(k_l)``, the curves linear between grid points.

A row ``w`` (``[W_i, b_i]``) refit on its kept columns ``K`` (the bias always kept), with
``H = G + lambda I`` (``G = E[x x^T]``, ``x = [a, 1]``, ``lambda`` as in :func:`ridge`), has the
error ``min_{v: v_R = 0} (v - w)^T H (v - w)`` over the removed columns ``R``. Two closed forms
give it, and the cheaper is used: ``w^T H w - t_K^T H_KK^-1 t_K`` with ``t = H w`` (a system of
size ``|K|``) or OBS's ``w_R^T [(H^-1)_RR]^-1 w_R`` (size ``|R|``). The curves need only ``G``,
gathered in the scoring pass: no data pass of their own.
"""

from __future__ import annotations

import math

import torch

from .compensation import _lowest
from .layers import keep_mask
from .layerwise import ridge

# Grid points per layer curve: kept fractions geometric from 1 to one weight per row, then 0.
CURVE_POINTS = 24
# Budget units of the dynamic programme (the counts are exact again afterwards).
BUDGET_UNITS = 2000
# The curves need H positive definite: a damping of 0 becomes this (dead inputs cost nothing).
DAMPING_FLOOR = 1e-8
# Entries of the (rows, width, width) batch of systems solved at once.
SOLVE_BATCH = 2**24


def _batched_rows(width: int) -> int:
    return max(1, SOLVE_BATCH // max(1, width * width))


def _kept_side(hessian: torch.Tensor, rows: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``w^T H w - t_K^T H_KK^-1 t_K`` per row, the kept columns gathered (padded) per row."""
    width = int(keep.sum(1).max())
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, :width]
    valid = torch.gather(keep, 1, order).to(hessian.dtype)
    target = torch.gather(rows @ hessian, 1, order) * valid
    matrix = hessian[order[:, :, None], order[:, None, :]] * valid[:, :, None] * valid[:, None, :]
    matrix = matrix + torch.diag_embed(1 - valid)  # padding: identity rows, zero right-hand side
    solved = torch.cholesky_solve(target[:, :, None], torch.linalg.cholesky(matrix))[:, :, 0]
    return ((rows @ hessian) * rows).sum(1) - (target * solved).sum(1)


def _removed_side(inverse: torch.Tensor, rows: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """OBS: ``w_R^T [(H^-1)_RR]^-1 w_R`` per row, the removed columns gathered per row."""
    removed = ~keep
    width = int(removed.sum(1).max())
    if width == 0:
        return rows.new_zeros(len(rows))
    order = torch.argsort(keep.to(torch.int8), dim=1, stable=True)[:, :width]
    valid = torch.gather(removed, 1, order).to(inverse.dtype)
    weights = torch.gather(rows, 1, order) * valid
    matrix = inverse[order[:, :, None], order[:, None, :]] * valid[:, :, None] * valid[:, None, :]
    matrix = matrix + torch.diag_embed(1 - valid)
    solved = torch.cholesky_solve(weights[:, :, None], torch.linalg.cholesky(matrix))[:, :, 0]
    return (weights * solved).sum(1)


def refit_errors(gram: torch.Tensor, rows: torch.Tensor, keep: torch.Tensor,
                 damping: float) -> torch.Tensor:
    """Error of every row refit on its kept columns (see the module docstring).

    ``gram``: ``E[x x^T]`` (n, n) with the ones column last; ``rows``: ``[W, b]`` (r, n);
    ``keep``: (r, n) bool, the bias column True. Float64 in, float64 out.
    """
    hessian = gram + ridge(gram, max(damping, DAMPING_FLOOR)) * torch.eye(
        len(gram), dtype=gram.dtype, device=gram.device)
    kept, removed = int(keep.sum(1).max()), int((~keep).sum(1).max())
    if removed <= kept:
        inverse = torch.cholesky_inverse(torch.linalg.cholesky(hessian))
        side, matrix, width = _removed_side, inverse, removed
    else:
        side, matrix, width = _kept_side, hessian, kept
    step = _batched_rows(width)
    return torch.cat([side(matrix, rows[a:a + step], keep[a:a + step])
                      for a in range(0, len(rows), step)])


def curve_counts(present: torch.Tensor) -> list[int]:
    """Removal counts of one layer's grid: from the weights already absent to all of them, the
    kept counts geometric down to one weight per row, then none."""
    total, kept = present.numel(), int(present.sum())
    if kept == 0:
        return [total]
    fractions = torch.logspace(0, -math.log10(max(1, present.shape[1])), CURVE_POINTS,
                               dtype=torch.float64)
    counts = {total - round(kept * float(f)) for f in fractions} | {total}
    return sorted(counts)


def error_curve(gram: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                score: torch.Tensor, present: torch.Tensor, row_weights: torch.Tensor,
                damping: float) -> tuple[list[int], list[float]]:
    """``(counts, errors)``: ``sum_i row_weights[i] * refit error of row i`` with the ``k``
    lowest ``score`` of the layer removed (weights already absent first), for each ``k`` of
    :func:`curve_counts`. ``gram`` is the mean ``E[x x^T]`` with the ones column last."""
    rows = torch.cat([weight, bias[:, None]], 1).to(gram.dtype)
    ones = present.new_ones(len(present), 1)
    counts = curve_counts(present)
    errors = []
    for count in counts:
        removed = _lowest(score.reshape(-1), present.reshape(-1), count).reshape(present.shape)
        keep = torch.cat([~removed, ones], 1)
        errors.append(float((row_weights.to(gram.dtype) * refit_errors(gram, rows, keep,
                                                                       damping)).sum()))
    return counts, errors


def allocate(curves: dict[str, tuple[list[int], list[float]]], count: int,
             units: int = BUDGET_UNITS) -> dict[str, int]:
    """Removals per layer, summing to ``count``, minimising ``sum_l e_l(k_l)``.

    ``curves[name] = (counts, errors)``: ``e_l`` at increasing counts, the first being the
    weights already absent (the least ``k_l``) and the last the layer's size; linear between.
    The dynamic programme runs on ``units`` budget units (exact when ``count <= units``); the
    counts are then nudged to sum to ``count``, the cheapest marginal change first.
    """
    names = list(curves)
    lowest = {name: curves[name][0][0] for name in names}
    highest = {name: curves[name][0][-1] for name in names}
    if not sum(lowest.values()) <= count <= sum(highest.values()):
        raise ValueError(f"Cannot remove {count} weights: the layers allow "
                         f"{sum(lowest.values())} to {sum(highest.values())}.")
    unit = max(1, math.ceil((count - sum(lowest.values())) / units))
    budget = (count - sum(lowest.values())) // unit
    best = torch.full((budget + 1,), torch.inf, dtype=torch.float64)
    best[0] = 0.0
    choices = []
    for name in names:
        counts, errors = curves[name]
        steps = torch.arange(min(budget, (highest[name] - lowest[name]) // unit) + 1)
        cost = _interpolate(counts, errors, lowest[name] + steps * unit)
        spent = torch.arange(budget + 1)[:, None] - steps[None, :]  # (budget + 1, options)
        total = torch.where(spent >= 0, best[spent.clamp_min(0)] + cost[None, :], torch.inf)
        best, choice = total.min(1)
        choices.append(choice)
    left, result = budget, {}
    for name, choice in zip(reversed(names), reversed(choices), strict=True):
        result[name] = lowest[name] + int(choice[left]) * unit
        left -= int(choice[left])
    return _nudge(result, curves, count)


def _interpolate(counts: list[int], errors: list[float], at: torch.Tensor) -> torch.Tensor:
    x = torch.tensor(counts, dtype=torch.float64)
    y = torch.tensor(errors, dtype=torch.float64)
    at = at.to(torch.float64)
    right = torch.searchsorted(x, at).clamp(1, len(x) - 1) if len(x) > 1 else None
    if right is None:
        return y.expand(len(at)).clone()
    left = right - 1
    fraction = (at - x[left]) / (x[right] - x[left])
    return y[left] + fraction * (y[right] - y[left])


def _nudge(result: dict[str, int], curves: dict, count: int) -> dict[str, int]:
    """Move the unit rounding one weight at a time where the curve's slope is least costly."""
    def slope(name: str, direction: int) -> float:
        k = result[name]
        at = torch.tensor([k, k + direction])
        values = _interpolate(*curves[name], at)
        return float(direction * (values[1] - values[0]))

    while (missing := count - sum(result.values())) != 0:
        direction = 1 if missing > 0 else -1
        movable = [name for name in result
                   if curves[name][0][0] <= result[name] + direction <= curves[name][0][-1]]
        name = min(movable, key=lambda n: slope(n, direction))
        room = curves[name][0][-1] - result[name] if direction > 0 \
            else result[name] - curves[name][0][0]
        result[name] += direction * min(abs(missing), room)
    return result


def refit_curves(statistics, layers: dict, weights: dict[str, torch.Tensor],
                 scores: dict[str, torch.Tensor], damping: float) -> dict:
    """:func:`error_curve` of every layer from one pass's statistics (``gram`` and the
    sensitivities), the rows weighted by ``E[s_i]``. A layer without a bias counts as one with
    a zero bias (the refit fits one after ``add_bias=True``)."""
    count = statistics.count
    curves = {}
    for name, layer in layers.items():
        stats, weight = statistics.layers[name], weights[name].detach()
        bias = weight.new_zeros(len(weight)) if layer.bias is None else layer.bias.detach()
        curves[name] = error_curve(stats.gram / count, weight, bias, scores[name],
                                   keep_mask(layer), stats.sens_sum / count, damping)
    return curves
