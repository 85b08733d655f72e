"""ecp-admm: the schedule and the projection, exact counts, a planted support recovered, and the
final refit on ADMM's support equal to torch.linalg.lstsq on the materialised rows."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import ecprune
from conftest import layer_io, mlp
from ecprune import methods
from ecprune.reconstruct.admm import admm_supports, input_variances, project, removal_schedule

LINEARS = ("0", "2", "4")


def with_ones(a):
    return torch.cat([a, torch.ones(len(a), 1, dtype=a.dtype)], 1)


def test_the_removals_grow_cubically_to_the_target_then_stay():
    target = torch.tensor([0, 5, 40, 100])
    steps = removal_schedule(target, 20)
    assert len(steps) == 20 and all(torch.equal(s, target) for s in steps[14:])
    stacked = torch.stack(steps)
    assert (stacked.diff(dim=0) >= 0).all() and (stacked <= target).all()
    # the cubic's first step takes 1 - (1 - 1/15)^3 of the target
    assert steps[0].tolist() == [0, 1, 7, 19]
    assert torch.equal(removal_schedule(target, 1)[0], target)


def test_the_projection_keeps_the_largest_scaled_candidates_with_exact_counts():
    point = torch.tensor([[3.0, -1.0, 2.0, 0.5], [1.0, 2.0, 3.0, 4.0]], dtype=torch.float64)
    factors = torch.tensor([[1.0, 10.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    candidates = torch.tensor([[True, True, True, True], [True, True, True, False]])
    keep = project(point, factors, candidates, torch.tensor([2, 1]))
    # row 0: scores 9, 10, 4, 0.25 -> drop the two lowest; row 1: 4 is no candidate
    assert keep.tolist() == [[True, True, False, False], [False, True, True, False]]


def test_admm_recovers_a_planted_sparse_support_with_exact_counts():
    g = torch.Generator().manual_seed(0)
    n, m, rows = 400, 12, 5
    a = torch.randn(n, m, dtype=torch.float64, generator=g)
    a = a + 0.6 * a[:, [0]]  # correlated inputs: magnitude of the dense fit is not enough
    truth = torch.zeros(rows, m + 1, dtype=torch.float64)
    planted = torch.zeros(rows, m, dtype=torch.bool)
    for i in range(rows):
        chosen = torch.randperm(m, generator=g)[:4]
        planted[i, chosen] = True
        truth[i, chosen] = torch.randn(4, dtype=torch.float64, generator=g).sign() * (
            1 + torch.rand(4, dtype=torch.float64, generator=g))
    truth[:, -1] = torch.randn(rows, dtype=torch.float64, generator=g)
    x = with_ones(a)
    u = x @ truth.T
    start = torch.linalg.lstsq(x, u).solution.T + 0.3 * torch.randn(rows, m + 1, generator=g,
                                                                     dtype=torch.float64)
    candidates = torch.ones(rows, m, dtype=torch.bool)
    keep = admm_supports(x.T @ x, x.T @ u, start, candidates, torch.full((rows,), m - 4),
                         rho=1.0, iterations=40)
    assert torch.equal(keep.sum(1), torch.full((rows,), 4))
    assert torch.equal(keep, planted)


def test_admm_never_keeps_a_weight_that_is_not_a_candidate():
    g = torch.Generator().manual_seed(1)
    x = with_ones(torch.randn(100, 8, dtype=torch.float64, generator=g))
    u = torch.randn(100, 3, dtype=torch.float64, generator=g)
    candidates = torch.rand(3, 8, generator=g) > 0.3
    removals = (candidates.sum(1) // 2).clamp_min(0)
    keep = admm_supports(x.T @ x, x.T @ u, torch.zeros(3, 9, dtype=torch.float64), candidates,
                         removals, rho=0.5, iterations=7)
    assert not (keep & ~candidates).any()
    assert torch.equal(keep.sum(1), candidates.sum(1) - removals)


def test_inputs_constant_up_to_rounding_are_treated_as_constant():
    """A layer whose inputs lost every weight upstream sees the same values for every sample,
    with ``E[x^2] - E[x]^2`` left at rounding level (hypothesis found seed 18389 of
    test_loss_objective): ``D`` is then all ones, as for exactly constant inputs, and
    ``H + rho D`` factorises (it raised before)."""
    g = torch.Generator().manual_seed(2)
    level = torch.rand(1, 5, dtype=torch.float64, generator=g)
    exact = with_ones(level.expand(60, 5))
    rounded = exact.clone()
    rounded[:, :-1] += 1e-17 * torch.randn(60, 5, dtype=torch.float64, generator=g)
    hessian = rounded.T @ rounded / 60
    assert (hessian.diagonal()[:-1] - hessian[-1, :-1].square()).abs().max() > 0
    assert torch.equal(input_variances(hessian), torch.ones(5, dtype=torch.float64))
    u = torch.randn(60, 3, dtype=torch.float64, generator=g)
    start = torch.randn(3, 6, dtype=torch.float64, generator=g)
    candidates, removals = torch.ones(3, 5, dtype=torch.bool), torch.full((3,), 3)
    keeps = [admm_supports(x.T @ x, x.T @ u, start, candidates, removals, rho=0.3, iterations=9)
             for x in (exact, rounded)]
    assert torch.equal(keeps[0], keeps[1])
    assert torch.equal(keeps[1].sum(1), torch.full((3,), 2))


@pytest.fixture
def net_and_data():
    model = mlp([6, 7, 5, 3], nn.PReLU, seed=3)
    x = torch.randn(120, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    return model, x


def test_the_final_refit_on_admms_support_equals_lstsq_on_the_materialised_rows(net_and_data):
    dense, x = net_and_data
    pruned, refit = copy.deepcopy(dense), copy.deepcopy(dense)
    ecprune.prune(pruned, x, 0.6, "ecp-admm", damping=0.0, chunk_size=11)
    ecprune.prune(refit, x, 0.6, "ecp-refit", damping=0.0)
    full_rank_rows = 0
    for name in LINEARS:
        target = layer_io(dense, name, x)[1]
        design = with_ones(layer_io(pruned, name, x)[0])  # upstream layers are final
        layer = pruned.get_submodule(name)
        # ECP's counts: per layer from the refit allocation, per row from ECP's selection
        assert torch.equal(layer.weight_mask.sum(1), refit.get_submodule(name).weight_mask.sum(1))
        for i, keep in enumerate(layer.weight_mask.bool()):
            support = torch.cat([keep, torch.tensor([True])])
            a = design[:, support]
            expected = torch.linalg.lstsq(a, target[:, i, None], driver="gelsd").solution[:, 0]
            found = torch.cat([layer.weight[i, keep], layer.bias[i, None]])
            torch.testing.assert_close(a @ found, a @ expected, rtol=1e-9, atol=1e-10)
            if torch.linalg.matrix_rank(a, rtol=1e-6) == a.shape[1]:
                torch.testing.assert_close(found, expected, rtol=1e-8, atol=1e-10)
                full_rank_rows += 1
            assert (layer.weight[i, ~keep] == 0).all()
    assert full_rank_rows >= 8


def test_ecp_admm_keeps_exact_counts_parameters_and_prunes_by_importance_alike(net_and_data):
    dense, x = net_and_data
    pruned, by_scores = copy.deepcopy(dense), copy.deepcopy(dense)
    ids = {id(p) for p in pruned.parameters()}
    report = ecprune.prune(pruned, x, 0.7, "ecp-admm", refine="swaps")
    assert report.total - report.kept == round(0.7 * report.total) and report.method == "ecp-admm"
    assert {id(p) for p in pruned.parameters()} == ids
    scores = ecprune.importance(by_scores, x, "ecp-admm", refine="swaps")
    ecprune.prune_by_importance(by_scores, scores, 0.7, data=x)
    for key, value in pruned.state_dict().items():
        assert torch.equal(value, by_scores.state_dict()[key]), key


@pytest.mark.parametrize(("make", "error", "match"), [
    (lambda: methods.ECPADMM(iterations=0), ValueError, r"'admm_iterations' parameter of ECPADMM must be an int >= 1. Got 0"),
    (lambda: methods.get("ecp-admm", admm_rho=0.0), ValueError, r"'admm_rho' parameter of get must be a finite float > 0. Got 0.0"),
    (lambda: methods.get("ecp-admm", admm_rho=float("inf")), ValueError, r"'admm_rho' parameter of get must be a finite float >= 0. Got inf"),
    (lambda: methods.ECPADMM(weighting="sensitivity"), ValueError, r"'refit_weighting' parameter of ECPADMM must be 'plain': ADMM solves the plain least-squares problem. Got 'sensitivity'"),
    (lambda: methods.get("ecp-admm", refit_weighting="plain"), TypeError, r"refit_weighting='plain' applies to method\(s\) \['ecp-refit', 'sparsegpt-refit'\], not 'ecp-admm'"),
])
def test_admm_options_are_validated(make, error, match):
    with pytest.raises(error, match=match):
        make()
