"""How many weights each layer loses when the kept weights are refit: ``allocation="refit"``.

ECP's global ranking adds up single-weight errors with only the bias moving. Once every kept
weight is refit (:mod:`ecprune.reconstruct.refit`) that sum no longer predicts which layer can
lose more: on MNIST 784-64-64-10 it removes too much of the first layer (docs/beyond.md).
Following the
non-uniform compression of Optimal Brain Compression (E. Frantar and D. Alistarh, NeurIPS 2022,
dynamic programming over per-layer error curves), every layer gets an error curve ``e_l(k)``
at every removal count ``k``: the ``k`` lowest ECP scores of the layer removed, every row refit
by damped least squares toward its own pre-activations, the rows' errors weighted by their mean
output sensitivity ``E[s_i]`` (ECP's, so that the curves of all layers are in output units).
Dynamic programming then picks the counts, summing to the budget, with the least
``sum_l e_l(k_l)``.

A row ``w`` (``[W_i, b_i]``) refit on its kept columns (the bias always kept), with
``H = G + lambda I`` (``G = E[x x^T]``, ``x = [a, 1]``, ``lambda`` as in :func:`ridge`), has the
error ``min_{v: v_R = 0} (v - w)^T H (v - w) = w_R^T [(H^-1)_RR]^-1 w_R`` (OBS) over its removed
columns ``R``. The removals of a row are nested as ``k`` grows (they follow the layer's score
order), so with ``L`` the Cholesky factor of ``H^-1`` restricted to the weight columns in the
row's removal order and ``z = L^-1 w``, removing the first ``r`` costs ``z_1^2 + ... + z_r^2``
(SparseGPT's observation): one factorisation per row gives the row's whole curve, and the
layer's curve is the cumulative sum of ``E[s_i] z^2`` over the layer's removal order. Only
``G`` is needed, gathered in the scoring pass: the curves read no data.

Cost: one ``n_in``-sized Cholesky per row. Layers with more than ``CURVE_ROWS`` rows use a seeded
uniform sample of that many rows, their increments scaled by ``rows / CURVE_ROWS`` (an unbiased
estimate of the curve at every ``k``).
"""

from __future__ import annotations

import math

import torch

from ..engine.layers import keep_mask
from ..masking.order import removal_order
from .layerwise import ridge

# Rows per layer whose curves are computed exactly; larger layers are sampled.
CURVE_ROWS = 128
# Budget units of the dynamic programme (the counts are exact again afterwards).
BUDGET_UNITS = 2000
# The curves need H positive definite: a damping of 0 becomes this (dead inputs cost nothing).
DAMPING_FLOOR = 1e-8
# Entries of the (rows, n, n) batch of factorisations done at once.
SOLVE_BATCH = 2**24


def row_increments(inverse: torch.Tensor, rows: torch.Tensor,
                   orders: torch.Tensor) -> torch.Tensor:
    """``z^2`` of each row (r, m): the error added by removing each next column of its
    removal order ``orders`` (r, m), from the weight block ``inverse`` (m, m) of ``H^-1``."""
    step = max(1, SOLVE_BATCH // max(1, inverse.shape[0] ** 2))
    out = []
    for a in range(0, len(rows), step):
        order = orders[a:a + step]
        permuted = inverse[order[:, :, None], order[:, None, :]]
        factor = torch.linalg.cholesky(permuted)
        weights = torch.gather(rows[a:a + step], 1, order)[:, :, None]
        out.append(torch.linalg.solve_triangular(factor, weights, upper=False)[:, :, 0].square())
    return torch.cat(out)


def error_curve(gram: torch.Tensor, weight: torch.Tensor, score: torch.Tensor,
                present: torch.Tensor, row_weights: torch.Tensor, damping: float, *,
                seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(counts, errors)``: for every ``k`` from the weights already absent to all of them,
    ``sum_i row_weights[i] * refit error of row i`` with the ``k`` first weights of
    :func:`~ecprune.masking.order.removal_order` removed. ``gram`` is ``E[x x^T]`` with the ones
    column last, so the bias is refit with the kept weights (a layer without one is refit as if
    it had a zero bias, which ``add_bias=True`` adds)."""
    n_out, n_in = weight.shape
    hessian = gram + ridge(gram, max(damping, DAMPING_FLOOR)) * torch.eye(
        len(gram), dtype=gram.dtype, device=gram.device)
    inverse = torch.cholesky_inverse(torch.linalg.cholesky(hessian))[:n_in, :n_in]
    order = removal_order(score.reshape(-1), present.reshape(-1))
    row_of, column_of = order // n_in, order % n_in
    position = torch.empty_like(order)  # each weight's place in its row's removal order
    position[order] = _rank_within_rows(row_of, n_out)
    orders = torch.empty((n_out, n_in), dtype=order.dtype, device=order.device)
    orders[row_of, position[order]] = column_of
    rows = _sampled_rows(n_out, seed, weight.device)
    increments = torch.zeros(n_out, n_in, dtype=gram.dtype, device=gram.device)
    increments[rows] = row_increments(inverse, weight.to(gram.dtype)[rows], orders[rows])
    scale = row_weights.to(gram.dtype) * n_out / len(rows)
    marginal = (scale[:, None] * increments)[row_of, position[order]]  # in removal order
    errors = torch.cat([marginal.new_zeros(1), torch.cumsum(marginal, 0)])
    start = int((~present).sum())
    return torch.arange(start, n_out * n_in + 1), errors[start:]


def _rank_within_rows(row_of: torch.Tensor, n_out: int) -> torch.Tensor:
    """For a sequence of row indices, how many earlier entries share each entry's row."""
    by_row = torch.argsort(row_of, stable=True)
    counts = torch.bincount(row_of, minlength=n_out)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(row_of)
    rank[by_row] = torch.arange(len(row_of), device=row_of.device) - starts[row_of[by_row]]
    return rank


def _sampled_rows(n_out: int, seed: int, device: torch.device) -> torch.Tensor:
    if n_out <= CURVE_ROWS:
        return torch.arange(n_out, device=device)
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(n_out, generator=generator)[:CURVE_ROWS].sort().values.to(device)


def allocate(curves: dict[str, tuple], count: int, units: int = BUDGET_UNITS) -> dict[str, int]:
    """Removals per layer, summing to ``count``, minimising ``sum_l e_l(k_l)``.

    ``curves[name] = (counts, errors)``: ``e_l`` at increasing counts, the first being the
    weights already absent (the least ``k_l``) and the last the layer's size; linear between.
    The dynamic programme runs on ``units`` budget units (exact when ``count <= units``); the
    remainder, less than a unit, goes where the curves' slopes make it cheapest.
    """
    names = list(curves)
    lowest = {name: int(curves[name][0][0]) for name in names}
    highest = {name: int(curves[name][0][-1]) for name in names}
    if not sum(lowest.values()) <= count <= sum(highest.values()):
        raise ValueError(f"Cannot remove {count} weights: the layers allow "
                         f"{sum(lowest.values())} to {sum(highest.values())}.")
    unit = max(1, math.ceil((count - sum(lowest.values())) / units))
    budget = (count - sum(lowest.values())) // unit
    best = torch.full((budget + 1,), torch.inf, dtype=torch.float64)
    best[0] = 0.0
    choices = []
    for name in names:
        steps = torch.arange(min(budget, (highest[name] - lowest[name]) // unit) + 1)
        cost = _interpolate(*curves[name], lowest[name] + steps * unit)
        spent = torch.arange(budget + 1)[:, None] - steps[None, :]  # (budget + 1, options)
        total = torch.where(spent >= 0, best[spent.clamp_min(0)] + cost[None, :], torch.inf)
        best, choice = total.min(1)
        choices.append(choice)
    left = int(torch.nonzero(torch.isfinite(best)).max())  # the whole budget unless it overflows
    result = {}
    for name, choice in zip(reversed(names), reversed(choices), strict=True):
        result[name] = lowest[name] + int(choice[left]) * unit
        left -= int(choice[left])
    return _nudge(result, curves, count)


def _interpolate(counts, errors, at: torch.Tensor) -> torch.Tensor:
    """``errors`` at ``at``, linear between ``counts`` (increasing)."""
    x = torch.as_tensor(counts, dtype=torch.float64).cpu()
    y = torch.as_tensor(errors, dtype=torch.float64).cpu()
    at = torch.as_tensor(at, dtype=torch.float64)
    if len(x) == 1:
        return y.expand(len(at)).clone()
    right = torch.searchsorted(x, at).clamp(1, len(x) - 1)
    left = right - 1
    fraction = (at - x[left]) / (x[right] - x[left])
    return y[left] + fraction * (y[right] - y[left])


def _nudge(result: dict[str, int], curves: dict, count: int) -> dict[str, int]:
    """Add (or take back) the weights ``result`` lacks for ``count``, each time all of them at
    the layer whose curve rises least (falls most) there, within the layers' bounds."""
    def slope(name: str, direction: int) -> float:
        k = result[name]
        values = _interpolate(*curves[name], torch.tensor([k, k + direction]))
        return float(direction * (values[1] - values[0]))

    while (missing := count - sum(result.values())) != 0:
        direction = 1 if missing > 0 else -1
        bounds = {name: (int(curves[name][0][0]), int(curves[name][0][-1])) for name in result}
        movable = [name for name in result
                   if bounds[name][0] <= result[name] + direction <= bounds[name][1]]
        name = min(movable, key=lambda n: slope(n, direction))
        room = bounds[name][1] - result[name] if direction > 0 else result[name] - bounds[name][0]
        result[name] += direction * min(abs(missing), room)
    return result


def refit_curves(statistics, layers: dict, weights: dict[str, torch.Tensor],
                 scores: dict[str, torch.Tensor], damping: float, *, seed: int = 0) -> dict:
    """:func:`error_curve` of every layer from one pass's statistics (``gram`` and the
    sensitivities): the Gram matrix per sample, its rows weighted by their mean output
    sensitivity (``E[s_i]`` with one row per sample; with several, the mean over rows)."""
    count = statistics.count
    return {name: error_curve(stats.gram / count, weights[name].detach(), scores[name],
                              keep_mask(layer), stats.row_sensitivity / stats.rows, damping,
                              seed=seed)
            for name, layer in layers.items() for stats in [statistics.layers[name]]}
