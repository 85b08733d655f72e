"""Unit scores, shifts, refits and OBS updates against float64 oracles that share no code with
ecprune: closed forms, least squares over the per-sample Jacobians (torch.func), torch.linalg
solves on materialised inputs, and real removals."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import ecprune
from conftest import bias_jacobians, mlp
from ecprune.structured import score_units

# Float64 throughout. Closed forms and least squares agree to rounding of sums over ~200
# samples of O(1) terms (~1e-13 relative); the minimum-norm solve of the joint shift goes
# through an eigendecomposition, a few orders of magnitude looser.
RTOL = 1e-9
ATOL = 1e-11


def inputs(n_in: int, n: int = 200, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, n_in, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def activations(model: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    """The input of layer ``name`` on ``x`` (a forward hook, no ecprune code)."""
    return _recorded(model, name, x, lambda args, out: args[0])


def _recorded(model, name, x, pick):
    seen = []

    def hook(module, args, out):
        seen.append(pick(args, out).detach())

    handle = model.get_submodule(name).register_forward_hook(hook)
    with torch.no_grad():
        model(x)
    handle.remove()
    return seen[0]


def close(actual, expected, rtol=RTOL, atol=ATOL):
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)


@pytest.mark.parametrize("shift", ["joint", "rows"])
def test_last_layer_unit_score_and_shift_are_flaps_fluctuation(shift):
    model = mlp([3, 5, 4], nn.Tanh, seed=1)
    x = inputs(3)
    scored = score_units(model, x, "ecp", shift=shift)
    a = activations(model, "2", x)
    weight = model[2].weight.detach()
    expected = weight.square().sum(0) * a.var(0, unbiased=False)
    close(scored.scores["0"].score, expected)
    close(scored.scores["0"].shifts["2"], weight * a.mean(0)[None, :])
    assert scored.shift == shift


def stacked_jacobians(model, consumers, x):
    """Per-sample Jacobian of the output by the consumers' biases, stacked: (N, n_y, rows)."""
    return torch.cat([bias_jacobians(model, name, x) for name in consumers], 2)


def linearised_oracle(jac, effects):
    """Least squares over samples: ``min_d sum_x ||J(x) d - J(x) g(x)||^2`` with ``J`` from
    :func:`stacked_jacobians` and ``g`` (N, rows) the stacked change of the consumers'
    pre-activations; returns ``(d*, error / N)``."""
    n, n_y, rows = jac.shape
    left = jac.reshape(n * n_y, rows)
    right = torch.einsum("nyr,nr->ny", jac, effects).reshape(-1)
    d = torch.linalg.lstsq(left, right[:, None], driver="gelsd").solution[:, 0]
    return d, (left @ d - right).square().sum() / n


def test_joint_unit_score_is_the_linearised_error_with_the_best_joint_shift():
    model = mlp([3, 4, 3, 2], nn.Tanh, seed=2)
    x = inputs(3)
    scored = score_units(model, x, "ecp", shift="joint")
    a = activations(model, "2", x)
    weight = model[2].weight.detach()
    jac = stacked_jacobians(model, ["2"], x)
    for j in range(4):
        d, error = linearised_oracle(jac, weight[:, j][None, :] * a[:, j, None])
        close(scored.scores["0"].score[j], error)
        close(scored.scores["0"].shifts["2"][:, j], d, rtol=1e-7, atol=1e-9)


def test_rows_unit_score_is_the_sum_of_each_rows_ecp_score():
    model = mlp([3, 4, 3, 2], nn.Tanh, seed=3)
    x = inputs(3)
    scored = score_units(model, x, "ecp", shift="rows")
    s = bias_jacobians(model, "2", x).square().sum(1)  # (N, rows): s_i(x)
    a = activations(model, "2", x)
    weight = model[2].weight.detach()
    es, esa, esa2 = s.mean(0), (s[:, :, None] * a[:, None]).mean(0), \
        (s[:, :, None] * a[:, None].square()).mean(0)
    expected = (weight.square() * (esa2 - esa.square() / es[:, None])).sum(0)
    close(scored.scores["0"].score, expected)
    close(scored.scores["0"].shifts["2"], weight * esa / es[:, None])


def test_joint_shift_beats_every_nearby_shift():
    model = mlp([3, 4, 3, 2], nn.Sigmoid, seed=4)
    x = inputs(3)
    scored = score_units(model, x, "ecp", shift="joint")
    jac = bias_jacobians(model, "2", x)
    a = activations(model, "2", x)
    weight = model[2].weight.detach()

    def objective(d, j):
        return torch.einsum("nyr,nr->ny", jac, d[None] - weight[:, j] * a[:, j, None]) \
            .square().sum(1).mean()

    generator = torch.Generator().manual_seed(0)
    for j in range(4):
        best = scored.scores["0"].shifts["2"][:, j]
        close(objective(best, j), scored.scores["0"].score[j])
        for _ in range(20):
            step = 1e-3 * torch.randn(3, dtype=torch.float64, generator=generator)
            assert objective(best + step, j) > objective(best, j)


class Residual(nn.Module):
    """``h = tanh(a x); h2 = h + tanh(b h); y = c h2 + d h2``: the rows of ``a`` and ``b`` are
    one group, consumed by ``b`` (whose own row of a unit goes with it), ``c`` and ``d``."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 4)
        self.c, self.d = nn.Linear(4, 2), nn.Linear(4, 2)

    def forward(self, x):
        h = torch.tanh(self.a(x))
        h2 = h + torch.tanh(self.b(h))
        return self.c(h2) + torch.sin(self.d(h2))


def test_a_residual_group_scores_its_units_over_every_consumer_but_their_own_rows():
    model = Residual().double()
    x = inputs(3, n=100)
    scored = score_units(model, x, "ecp", shift="joint", coupling="torch-pruning")
    (name, found), = scored.scores.items()
    assert name == "a"
    h, h2 = activations(model, "b", x), activations(model, "c", x)
    jac = stacked_jacobians(model, ["b", "c", "d"], x)
    for j in range(4):
        own = model.b.weight.detach()[:, j].clone()
        own[j] = 0  # row j of b goes with unit j
        effect = torch.cat([own * h[:, j, None], model.c.weight.detach()[:, j] * h2[:, j, None],
                            model.d.weight.detach()[:, j] * h2[:, j, None]], 1)
        _, error = linearised_oracle(jac, effect)
        close(found.score[j], error)


def test_a_tiny_unit_scores_its_real_removal_with_its_shift():
    model = mlp([3, 4, 3, 2], nn.Tanh, seed=6)
    with torch.no_grad():
        model[2].weight[:, 1] *= 1e-4  # unit 1 of the first hidden layer barely matters
    x = inputs(3)
    scored = score_units(model, x, "ecp", shift="joint")
    pruned = copy.deepcopy(model)
    with torch.no_grad():
        pruned[2].bias += scored.scores["0"].shifts["2"][:, 1]
        pruned[2].weight[:, 1] = 0
        real = (pruned(x) - model(x)).square().sum(1).mean()
    # The linearisation errs by the next order: ~1e-4 relative here.
    close(scored.scores["0"].score[1], real, rtol=1e-3, atol=0)


def refit_oracle(inputs_kept, target):
    """``[W, b]`` of the least squares of ``[a_K, 1] -> u`` (torch.linalg.lstsq)."""
    extended = torch.cat([inputs_kept, torch.ones(len(inputs_kept), 1, dtype=torch.float64)], 1)
    solution = torch.linalg.lstsq(extended, target, driver="gelsd").solution
    return solution[:-1].T, solution[-1]


def preactivations(model, name, x):
    return _recorded(model, name, x, lambda args, out: out)


def test_the_structured_refit_is_least_squares_toward_the_dense_preactivations():
    model = mlp([4, 6, 5, 3], nn.Tanh, seed=7)
    dense = copy.deepcopy(model)
    x = inputs(4, n=300)
    report = ecprune.prune_neurons(model, x, 0.4, "ecp-refit", scope="layer", damping=0.0)
    kept_rows = [u for u in range(5) if u not in report.groups["2"].removed]
    for name, rows in (("2", kept_rows), ("4", list(range(3)))):
        weight, bias = refit_oracle(activations(model, name, x),
                                    preactivations(dense, name, x)[:, rows])
        layer = model.get_submodule(name)
        close(layer.weight.detach(), weight, rtol=1e-8, atol=1e-10)
        close(layer.bias.detach(), bias, rtol=1e-8, atol=1e-10)


def test_obs_removal_equals_the_least_squares_refit_of_the_kept_columns():
    """OBS updates are exact for the quadratic: after removing any set of columns greedily, the
    consumer equals the least-squares refit of its kept columns on the same (dense) inputs."""
    model = mlp([4, 7, 3], nn.Tanh, seed=8)
    dense = copy.deepcopy(model)
    x = inputs(4, n=300)
    report = ecprune.prune_neurons(model, x, 0.5, "obs", damping=0.0)
    kept = [u for u in range(7) if u not in report.groups["0"].removed]
    weight, bias = refit_oracle(activations(dense, "2", x)[:, kept],
                                preactivations(dense, "2", x))
    # The inverse Hessian keeps a 1e-8 relative ridge (DAMPING_FLOOR) to stay definite.
    close(model[2].weight.detach(), weight, rtol=1e-6, atol=1e-7)
    close(model[2].bias.detach(), bias, rtol=1e-6, atol=1e-7)


def test_obs_removes_first_the_unit_whose_refit_costs_least():
    model = mlp([4, 6, 3], nn.Tanh, seed=9)
    x = inputs(4, n=300)
    scored = score_units(model, x, "obs", damping=0.0)
    a, u = activations(model, "2", x), preactivations(model, "2", x)
    costs = []
    for j in range(6):
        kept = [k for k in range(6) if k != j]
        weight, bias = refit_oracle(a[:, kept], u)
        costs.append((a[:, kept] @ weight.T + bias - u).square().sum(1).mean())
    assert int(torch.argmin(scored.scores["0"].score)) == int(torch.argmin(torch.stack(costs)))
    curve = scored.curves["0"][1]
    close(curve[1], min(costs), rtol=1e-6, atol=1e-9)


def test_refit_curves_are_the_refit_errors_of_removing_the_lowest_units():
    model = mlp([4, 6, 3], nn.Tanh, seed=10)
    x = inputs(4, n=300)
    scored = score_units(model, x, "ecp-refit", damping=0.0)
    counts, errors = scored.curves["0"]
    assert counts.tolist() == list(range(6))
    a, u = activations(model, "2", x), preactivations(model, "2", x)
    order = torch.argsort(scored.scores["0"].score, stable=True)
    for k in range(6):
        kept = sorted(set(range(6)) - set(order[:k].tolist()))
        weight, bias = refit_oracle(a[:, kept], u)
        residual = (a[:, kept] @ weight.T + bias - u).square().sum(1).mean()
        # last layer: E[s_i] = 1, so the curve is the plain refit error
        close(errors[k], residual, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("shift", ["joint", "rows"])
def test_chunks_of_1_7_and_all_samples_give_the_same_scores(shift):
    model = mlp([3, 5, 4, 2], nn.Tanh, seed=11)
    x = inputs(3, n=50)
    results = [score_units(model, x, "ecp", shift=shift, chunk_size=size) for size in (1, 7, 50)]
    for other in results[1:]:
        for name, found in results[0].scores.items():
            close(other.scores[name].score, found.score, rtol=1e-10, atol=1e-13)
            for consumer, shift_ in found.shifts.items():
                close(other.scores[name].shifts[consumer], shift_, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("shift", ["joint", "rows"])
def test_activations_far_from_zero_do_not_cancel(shift):
    """Hidden units at 1e6 +- 1: raw second moments would lose every digit of the variance."""
    torch.manual_seed(12)
    model = nn.Sequential(nn.Linear(3, 4), nn.Identity(), nn.Linear(4, 2)).double()
    with torch.no_grad():
        model[0].bias.fill_(1e6)
    x = inputs(3)
    scored = score_units(model, x, "ecp", shift=shift)
    a = activations(model, "2", x)
    weight = model[2].weight.detach()
    close(scored.scores["0"].score, weight.square().sum(0) * (a - a.mean(0)).square().mean(0),
          rtol=1e-6, atol=0)
