"""refine="swaps": the swap objective from the Gram matrix against torch.linalg.lstsq residuals,
each accepted swap lowering the exact refit objective, and no single swap lowering it at the end
(brute force over all swaps of tiny rows)."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from torch import nn

import ecprune
from conftest import layer_io, mlp
from ecprune import methods
from ecprune.reconstruct.swaps import SWAP_RTOL, best_swaps, support_value, swap_gains

LINEARS = ("0", "2", "4")


def with_ones(a):
    return torch.cat([a, torch.ones(len(a), 1, dtype=a.dtype)], 1)


def objective(design, target, w0, lam, support):
    """min_{w off K = 0} ||X w - u||^2 + lam ||w - w0||^2 by lstsq on the stacked system."""
    a = design[:, support]
    stacked = torch.cat([a, lam ** 0.5 * torch.eye(a.shape[1], dtype=a.dtype)])
    rhs = torch.cat([target, lam ** 0.5 * w0[support]])
    w = torch.linalg.lstsq(stacked, rhs[:, None], driver="gelsd").solution[:, 0]
    return float((stacked @ w - rhs).square().sum() + lam * w0[~support].square().sum())


def row_problem(n=40, m=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    design = with_ones(torch.randn(n, m, dtype=torch.float64, generator=g)
                       @ torch.randn(m, m, dtype=torch.float64, generator=g))
    target = design @ torch.randn(m + 1, dtype=torch.float64, generator=g) + 0.3 * torch.randn(
        n, dtype=torch.float64, generator=g)
    w0 = torch.randn(m + 1, dtype=torch.float64, generator=g)
    return design, target, w0


def supports(m, k):
    """Every support of k weights of m, the bias (last) always in."""
    for chosen in itertools.combinations(range(m), k):
        support = torch.zeros(m + 1, dtype=torch.bool)
        support[list(chosen)] = True
        support[-1] = True
        yield support


@pytest.mark.parametrize("lam", [0.0, 0.7])
def test_the_objective_from_the_gram_matrix_equals_lstsq_residuals(lam):
    design, target, w0 = row_problem()
    gram, rhs = design.T @ design, design.T @ target + lam * w0
    constant = float(target.square().sum() + lam * w0.square().sum())
    for support in supports(6, 3):
        found = constant - support_value(gram, rhs, lam, support)
        assert found == pytest.approx(objective(design, target, w0, lam, support), rel=1e-10)


@pytest.mark.parametrize("lam", [0.0, 0.7])
def test_every_swap_gain_equals_the_change_of_the_lstsq_objective(lam):
    design, target, w0 = row_problem(seed=1)
    gram, rhs = design.T @ design, design.T @ target + lam * w0
    kept = next(itertools.islice(supports(6, 3), 4, None))
    kept_at, out_at = torch.nonzero(kept).squeeze(1), torch.nonzero(~kept).squeeze(1)
    eye = lam * torch.eye(len(kept_at), dtype=gram.dtype)
    fixed = torch.zeros(len(kept_at), dtype=torch.bool)
    fixed[-1] = True
    phi, gains = swap_gains(gram[kept_at][:, kept_at] + eye, gram[out_at][:, kept_at],
                            gram.diagonal()[out_at] + lam, rhs[kept_at], rhs[out_at], fixed)
    before = objective(design, target, w0, lam, kept)
    assert phi == pytest.approx(support_value(gram, rhs, lam, kept), rel=1e-12)
    assert (gains[:, -1] == -torch.inf).all()  # the bias never leaves
    for (q, i), (p, j) in itertools.product(enumerate(out_at), enumerate(kept_at[:-1])):
        swapped = kept.clone()
        swapped[j], swapped[i] = False, True
        change = objective(design, target, w0, lam, swapped) - before
        assert -float(gains[q, p]) == pytest.approx(change, rel=1e-8, abs=1e-9 * before)


@pytest.mark.parametrize(("seed", "k", "lam"), [(2, 2, 0.0), (3, 3, 0.0), (4, 4, 0.3)])
def test_each_swap_lowers_the_objective_and_none_is_left_at_the_end(seed, k, lam):
    design, target, w0 = row_problem(n=30, m=7, seed=seed)
    gram, rhs = design.T @ design, design.T @ target + lam * w0
    fixed = torch.zeros(8, dtype=torch.bool)
    fixed[-1] = True
    candidates = torch.ones(8, dtype=torch.bool)
    kept = next(supports(7, k))
    values = [objective(design, target, w0, lam, kept)]
    for _ in range(50):  # one swap at a time: each must lower the lstsq objective
        kept, done = best_swaps(gram, rhs, lam, kept, candidates, fixed, max_swaps=1)
        if not done:
            break
        values.append(objective(design, target, w0, lam, kept))
        assert values[-1] < values[-2]
    assert int(kept[:-1].sum()) == k and kept[-1]
    for other in supports(7, k):  # brute force: every single swap of the final support
        if int((other & ~kept).sum()) == 1:
            assert objective(design, target, w0, lam, other) >= values[-1] * (1 - 10 * SWAP_RTOL)
    final, _ = best_swaps(gram, rhs, lam, next(supports(7, k)), candidates, fixed, 50)
    assert torch.equal(final, kept)  # one call runs the same swaps


def test_the_budget_stops_the_swaps_and_candidates_bound_them():
    design, target, _ = row_problem(n=30, m=7, seed=2)
    gram, rhs = design.T @ design, design.T @ target
    fixed = torch.zeros(8, dtype=torch.bool)
    fixed[-1] = True
    kept = next(supports(7, 2))
    candidates = kept.clone()
    candidates[5] = True
    found, done = best_swaps(gram, rhs, 0.0, kept, candidates, fixed, max_swaps=3)
    assert done <= 1 and not (found & ~candidates).any() and int(found.sum()) == 3


@pytest.fixture
def net_and_data():
    model = mlp([5, 6, 5, 3], nn.PReLU, seed=3)
    x = torch.randn(90, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    return model, x


def test_ecp_refit_with_swaps_refits_exactly_and_leaves_no_improving_swap(net_and_data):
    dense, x = net_and_data
    plain, swapped = copy.deepcopy(dense), copy.deepcopy(dense)
    ecprune.prune(plain, x, 0.6, "ecp-refit", damping=0.0)
    ecprune.prune(swapped, x, 0.6, "ecp-refit", refine="swaps", damping=0.0, chunk_size=7)
    changed = 0
    for name in LINEARS:
        target = layer_io(dense, name, x)[1]
        design = with_ones(layer_io(swapped, name, x)[0])  # upstream layers are final
        layer, before = swapped.get_submodule(name), plain.get_submodule(name)
        # the layer and every row keep the counts of ecp-refit's selection
        assert torch.equal(layer.weight_mask.sum(1), before.weight_mask.sum(1))
        for i, keep in enumerate(layer.weight_mask.bool()):
            support = torch.cat([keep, torch.tensor([True])])
            found = torch.cat([layer.weight[i, keep], layer.bias[i, None]])
            expected = torch.linalg.lstsq(design[:, support], target[:, i, None],
                                          driver="gelsd").solution[:, 0]
            torch.testing.assert_close(design[:, support] @ found,
                                       design[:, support] @ expected, rtol=1e-9, atol=1e-10)
            best = (design[:, support] @ found - target[:, i]).square().sum()
            for j, q in itertools.product(torch.nonzero(keep).squeeze(1),
                                          torch.nonzero(~keep).squeeze(1)):
                other = support.clone()
                other[j], other[q] = False, True
                w = torch.linalg.lstsq(design[:, other], target[:, i, None]).solution
                assert (design[:, other] @ w[:, 0] - target[:, i]).square().sum() >= best * (
                    1 - 1e-8) - 1e-12
            changed += int((keep != before.weight_mask[i].bool()).any())
    assert changed > 0  # the swaps did something on this net


def test_swaps_never_raise_a_rows_error_over_the_ecp_selection(net_and_data):
    dense, x = net_and_data
    plain, swapped = copy.deepcopy(dense), copy.deepcopy(dense)
    ecprune.prune(plain, x, 0.5, "ecp-refit", layers=["0"], damping=0.0)
    ecprune.prune(swapped, x, 0.5, "ecp-refit", layers=["0"], refine="swaps", max_swaps=1,
                  damping=0.0)
    target = layer_io(dense, "0", x)[1]
    errors = [(x @ m[0].weight.T + m[0].bias - target).square().sum(0) for m in (plain, swapped)]
    assert (errors[1] <= errors[0] * (1 + 1e-9)).all() and (errors[1] < errors[0]).any()
    moved = (plain[0].weight_mask != swapped[0].weight_mask).sum(1)
    assert set(moved.tolist()) <= {0, 2}  # at most one swap per row


@pytest.mark.parametrize(("make", "match"), [
    (lambda: methods.ECPRefit(refine="swap"), r"'refine' parameter of ECPRefit must be one of 'none', 'swaps'. Got 'swap'"),
    (lambda: methods.get("ecp-refit", max_swaps=0), r"'max_swaps' parameter of get must be an int >= 1. Got 0"),
    (lambda: methods.get("ecp-admm", max_swaps=2.5), r"'max_swaps' parameter of get must be an int >= 1. Got 2.5"),
    (lambda: methods.ECPRefit(refine="swaps", weighting="sensitivity"), r"'refine' parameter of ECPRefit is 'swaps', which evaluates swaps on the plain least-squares refit, but refit_weighting='sensitivity'. Pass refit_weighting='plain' or refine='none'"),
])
def test_swap_options_are_validated(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_swap_options_belong_to_the_refitting_ecp_methods(net_and_data):
    model, x = net_and_data
    with pytest.raises(TypeError, match=r"refine='swaps' applies to method\(s\) \['ecp-refit', "
                                        r"'ecp-admm'\], not 'sparsegpt'"):
        ecprune.prune(model, x, 0.5, "sparsegpt", refine="swaps")
