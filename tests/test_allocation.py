"""allocation="refit": refit error curves against least squares on materialised data
(torch.linalg.lstsq), and the dynamic programme against brute force."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from torch import nn

import ecprune
from conftest import bias_jacobians, layer_io, mlp
from ecprune.reconstruct import allocation
from ecprune.reconstruct.allocation import allocate, error_curve


def design(samples=60, n_in=5, seed=0):
    """Correlated inputs with one constant column, plus the ones column (float64)."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(samples, n_in, dtype=torch.float64, generator=g)
    a[:, 1] += 0.8 * a[:, 0]
    a[:, -1] = 0.5  # a dead input: collinear with the ones column
    return torch.cat([a, torch.ones(samples, 1, dtype=torch.float64)], 1)


def lstsq_error(x, w, keep, damping):
    """min_v ||x_K v - x w||^2 / N + lam ||v - w_K||^2 + lam ||w_R||^2, lam = damping * mean
    diag(x^T x / N), by lstsq on the stacked system [x_K / sqrt(N); sqrt(lam) I]."""
    n = len(x)
    lam = damping * (x.square().sum(0) / n).mean()
    xk = x[:, keep]
    stacked = torch.cat([xk / n**0.5, lam.sqrt() * torch.eye(xk.shape[1], dtype=x.dtype)])
    rhs = torch.cat([x @ w / n**0.5, lam.sqrt() * w[keep]])
    v = torch.linalg.lstsq(stacked, rhs[:, None], driver="gelsd").solution[:, 0]
    return (stacked @ v - rhs).square().sum() + lam * w[~keep].square().sum()


def removed_first(score, present, count):
    """The ``count`` weights removed first: absent ones, then the lowest scores (row-major ties)."""
    ranked = torch.where(present, score, -torch.inf).reshape(-1)
    removed = torch.zeros(score.numel(), dtype=torch.bool)
    removed[torch.argsort(ranked, stable=True)[:count]] = True
    return removed.reshape(score.shape)


def toy_layer(n_out=7, n_in=9, seed=1):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(n_out, n_in, dtype=torch.float64, generator=g)
    bias = torch.randn(n_out, dtype=torch.float64, generator=g)
    score = torch.rand(weight.shape, dtype=torch.float64, generator=g)
    present = torch.ones_like(weight, dtype=torch.bool)
    present[1, 2] = present[-1, 0] = False  # already pruned: the curve starts there
    row_weights = torch.rand(n_out, dtype=torch.float64, generator=g)
    row_weights[3] = 0.0  # a row that never reaches the output
    return weight, bias, score, present, row_weights


@pytest.mark.parametrize("damping", [0.0, 0.01, 0.5])
def test_error_curve_equals_least_squares_on_the_data(damping, monkeypatch):
    """At every count, sum_i E[s_i] * min_v ||x_K v - x w||^2 (+ ridge) by lstsq, the rows'
    removals those of the layer's score order; rows factorised in several batches."""
    monkeypatch.setattr(allocation, "SOLVE_BATCH", 200)
    x = design(n_in=9)
    weight, bias, score, present, row_weights = toy_layer()
    counts, errors = error_curve(x.T @ x / len(x), weight, score, present, row_weights, damping)
    assert counts.tolist() == list(range(2, weight.numel() + 1))
    rows = torch.cat([weight, bias[:, None]], 1)
    for count, error in zip(counts.tolist(), errors, strict=True):
        keep = torch.cat([~removed_first(score, present, count),
                          torch.ones(len(rows), 1, dtype=torch.bool)], 1)
        expected = sum(r * lstsq_error(x, w, k, max(damping, allocation.DAMPING_FLOOR))
                       for r, w, k in zip(row_weights, rows, keep, strict=True))
        torch.testing.assert_close(error, expected, rtol=1e-7, atol=1e-10)


def test_curve_rises_with_each_removal_and_ends_at_the_variance():
    x = design(seed=2)
    weight, bias, score, present, row_weights = toy_layer(n_out=4, n_in=5, seed=3)
    counts, errors = error_curve(x.T @ x / len(x), weight, score, present, row_weights,
                                 damping=0.0)
    assert counts[0] == 2 and counts[-1] == weight.numel()
    assert (errors.diff() >= 0).all()
    # Everything removed: each row is refit by its bias alone, its error the variance of u.
    u = x[:, :-1] @ weight.T + bias
    torch.testing.assert_close(errors[-1], (row_weights * u.var(0, correction=0)).sum(),
                               rtol=1e-6, atol=0)


def test_sampled_rows_scale_to_the_whole_layer(monkeypatch):
    """Identical rows with identical scores: at counts that strip every row alike, any sample of
    rows, scaled by rows / sample, gives the exact curve."""
    x = design(n_in=6, seed=4)
    g = torch.Generator().manual_seed(5)
    weight = torch.randn(1, 6, dtype=torch.float64, generator=g).expand(8, 6).clone()
    score = torch.rand(1, 6, dtype=torch.float64, generator=g).expand(8, 6).clone()
    present = torch.ones_like(weight, dtype=torch.bool)
    row_weights = torch.full((8,), 0.3, dtype=torch.float64)
    gram = x.T @ x / len(x)
    _, exact = error_curve(gram, weight, score, present, row_weights, 0.01)
    monkeypatch.setattr(allocation, "CURVE_ROWS", 3)
    for seed in range(3):
        _, sampled = error_curve(gram, weight, score, present, row_weights, 0.01, seed=seed)
        torch.testing.assert_close(sampled[::8], exact[::8], rtol=1e-10, atol=0)


def brute_force(curves, count):
    best = None
    ranges = [range(c[0][0], c[0][-1] + 1) for c in curves.values()]
    for choice in itertools.product(*ranges):
        if sum(choice) == count:
            cost = sum(c[1][k - c[0][0]] for c, k in zip(curves.values(), choice, strict=True))
            best = cost if best is None else min(best, cost)
    return best


@pytest.mark.parametrize("seed", range(6))
def test_allocation_is_the_brute_force_optimum(seed):
    g = torch.Generator().manual_seed(seed)
    curves = {}
    for name, (lowest, size) in zip("abc", [(0, 6), (2, 5), (1, 4)], strict=True):
        steps = torch.rand(size - lowest, generator=g, dtype=torch.float64)  # not convex
        errors = [0.0, *torch.cumsum(steps, 0).tolist()]
        curves[name] = (list(range(lowest, size + 1)), errors)
    for count in range(3, 16):
        counts = allocate(curves, count)
        assert sum(counts.values()) == count
        cost = sum(curves[n][1][k - curves[n][0][0]] for n, k in counts.items())
        assert cost == pytest.approx(brute_force(curves, count), abs=1e-12)


def test_coarse_budget_units_still_give_the_exact_count_within_bounds():
    curves = {"a": ([5, 50, 500], [0.0, 1.0, 9.0]), "b": ([0, 30, 300], [0.0, 0.5, 20.0])}
    for count in (5, 6, 77, 333, 799, 800):
        counts = allocate(curves, count, units=7)
        assert sum(counts.values()) == count
        assert 5 <= counts["a"] <= 500 and 0 <= counts["b"] <= 300
    with pytest.raises(ValueError, match="Cannot remove 4 weights"):
        allocate(curves, 4)


def test_refit_allocation_never_predicts_more_error_than_the_global_counts():
    """The counts minimise the summed curves: ECP's global counts, read off the same curves,
    are never better."""
    model = mlp([6, 9, 7, 3], nn.Tanh, seed=5)
    x = torch.randn(200, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    refit = ecprune.importance(model, x, "ecp-refit")
    for sparsity in (0.3, 0.6, 0.85):
        by_curves, by_ranking = copy.deepcopy(model), copy.deepcopy(model)
        ecprune.prune_by_importance(by_curves, refit, sparsity)
        ecprune.prune(by_ranking, x, sparsity, "ecp")

        def predicted(pruned):
            total = 0.0
            for name, (counts, errors) in refit.curves.items():
                removed = int((pruned.get_submodule(name).weight_mask == 0).sum())
                total += allocation._interpolate(counts, errors, torch.tensor([removed]))[0]
            return total

        assert predicted(by_curves) <= predicted(by_ranking) + 1e-12


def test_allocation_refit_is_for_ecp_refit_only():
    model = mlp([3, 4, 2], nn.Tanh, seed=0)
    x = torch.randn(16, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"allocation='refit' applies to .*'ecp-refit'.*'ecp'"):
        ecprune.prune(model, x, 0.5, "ecp", allocation="refit")
    with pytest.raises(ValueError, match="allocation"):
        ecprune.prune(model, x, 0.5, "ecp-refit", allocation="uniform")


def test_curves_weight_rows_by_the_mean_output_sensitivity():
    """The last point of a layer's curve (every weight removed, each row refit by its bias):
    ``sum_i E[s_i] * error_i``, with ``s_i = ||dy/du_i||^2`` from torch.func Jacobians and the
    errors from lstsq on the layer's materialised inputs."""
    model = mlp([5, 6, 4, 3], nn.Tanh, seed=9)
    x = torch.randn(50, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    curves = ecprune.importance(model, x, "ecp-refit", damping=0.0).curves
    for name in ("0", "2"):
        layer = model.get_submodule(name)
        inputs = layer_io(model, name, x)[0]
        data = torch.cat([inputs, torch.ones(len(inputs), 1, dtype=inputs.dtype)], 1)
        rows = torch.cat([layer.weight, layer.bias[:, None]], 1).detach()
        only_bias = torch.zeros(rows.shape[1], dtype=torch.bool)
        only_bias[-1] = True
        per_row = torch.stack([lstsq_error(data, w, only_bias, allocation.DAMPING_FLOOR)
                               for w in rows])
        mean_sensitivity = bias_jacobians(model, name, x).square().sum(1).mean(0)
        counts, errors = curves[name]
        assert counts[-1] == layer.weight.numel()
        torch.testing.assert_close(errors[-1],
                                   (mean_sensitivity * per_row).sum(), rtol=1e-6, atol=0)
