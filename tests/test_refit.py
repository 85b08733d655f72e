"""ecp-refit against closed-form least squares on materialised data (torch.linalg.lstsq)."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import ecprune
from conftest import bias_jacobians, layer_io, mlp
from ecprune.reconstruct.refit import refit_layers

LINEARS = ("0", "2", "4")


def trace(model, x):
    """Inputs and outputs of every Linear of ``model`` on ``x``, by hooks (no ecprune)."""
    seen = {name: layer_io(model, name, x) for name in LINEARS}
    return {n: v[0] for n, v in seen.items()}, {n: v[1] for n, v in seen.items()}


def with_ones(a):
    return torch.cat([a, torch.ones(len(a), 1, dtype=a.dtype)], 1)


def ecp_shifted(dense, pruned, x):
    """The dense model with the final masks and ECP's bias shifts only (computed here from the
    ECP importances of the dense model): the starting point of the refit."""
    shifted = copy.deepcopy(dense)
    scores = ecprune.importance(dense, x, "ecp")
    with torch.no_grad():
        for name in scores:
            if not hasattr(pruned.get_submodule(name), "weight_mask"):
                continue
            removed = pruned.get_submodule(name).weight_mask == 0
            layer = shifted.get_submodule(name)
            layer.bias += (scores[name].bias_shift * removed).sum(1)
            layer.weight[removed] = 0
    return shifted


@pytest.fixture
def net_and_data():
    model = mlp([4, 6, 5, 3], nn.PReLU, seed=3)
    x = torch.randn(80, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    return model, x


def test_refit_rows_equal_lstsq_on_the_materialised_data(net_and_data):
    dense, x = net_and_data
    pruned = copy.deepcopy(dense)
    ecprune.prune(pruned, x, 0.6, method="ecp-refit", damping=0.0, chunk_size=7)
    _, targets = trace(dense, x)
    inputs, _ = trace(pruned, x)  # upstream layers are final before a layer is refit
    full_rank_rows = 0
    for name in LINEARS:
        layer = pruned.get_submodule(name)
        design = with_ones(inputs[name])
        for i, keep in enumerate(layer.weight_mask.bool()):
            support = torch.cat([keep, torch.tensor([True])])
            a = design[:, support]
            expected = torch.linalg.lstsq(a, targets[name][:, i, None], driver="gelsd").solution[:, 0]
            found = torch.cat([layer.weight[i, keep], layer.bias[i, None]])
            # A fully pruned upstream unit is constant, collinear with the ones column: then only
            # the fitted values are unique (ecprune returns the minimum-norm solution).
            torch.testing.assert_close(a @ found, a @ expected, rtol=1e-9, atol=1e-10)
            if torch.linalg.matrix_rank(a, rtol=1e-6) == a.shape[1]:
                torch.testing.assert_close(found, expected, rtol=1e-9, atol=1e-10)
                full_rank_rows += 1
            assert (layer.weight[i, ~keep] == 0).all()
    assert full_rank_rows >= 8


def test_ridge_pulls_toward_the_ecp_shifted_row(net_and_data):
    """With damping, the row solves the augmented least squares [A; sqrt(lam) I] w = [u; sqrt(lam) w0],
    lam = damping * mean(diag(A^T A)) over the row's support."""
    dense, x = net_and_data
    damping = 0.05
    pruned = copy.deepcopy(dense)
    ecprune.prune(pruned, x, 0.6, method="ecp-refit", damping=damping, layers=["0"])
    start = ecp_shifted(dense, pruned, x)[0]
    design, target = with_ones(x), trace(dense, x)[1]["0"]
    layer = pruned[0]
    for i, keep in enumerate(layer.weight_mask.bool()):
        support = torch.cat([keep, torch.tensor([True])])
        a = design[:, support]
        lam = damping * a.square().sum(0).mean()
        w0 = torch.cat([start.weight[i, keep], start.bias[i, None]]).detach()
        stacked = torch.cat([a, lam.sqrt() * torch.eye(a.shape[1], dtype=a.dtype)])
        rhs = torch.cat([target[:, i], lam.sqrt() * w0])
        expected = torch.linalg.lstsq(stacked, rhs[:, None]).solution[:, 0]
        found = torch.cat([layer.weight[i, keep], layer.bias[i, None]])
        torch.testing.assert_close(found, expected, rtol=1e-9, atol=1e-11)


def test_sensitivity_weighted_refit_equals_weighted_lstsq(net_and_data):
    """Weights s_i(x) = ||dy/du_i||^2 of the network at the time of the refit: the masked, ECP
    shifted model (layers downstream not yet refit), from torch.func Jacobians."""
    dense, x = net_and_data
    pruned = copy.deepcopy(dense)
    ecprune.prune(pruned, x, 0.5, method="ecp-refit", damping=0.0, layers=["2"],
                  refit_weighting="sensitivity")
    before = ecp_shifted(dense, pruned, x)
    s = bias_jacobians(before, "2", x).square().sum(1)  # (N, n_layer)
    design, target = with_ones(trace(dense, x)[0]["2"]), trace(dense, x)[1]["2"]
    layer = pruned[2]
    for i, keep in enumerate(layer.weight_mask.bool()):
        support = torch.cat([keep, torch.tensor([True])])
        root = s[:, i, None].sqrt()
        expected = torch.linalg.lstsq(root * design[:, support], root * target[:, i, None]).solution[:, 0]
        found = torch.cat([layer.weight[i, keep], layer.bias[i, None]])
        torch.testing.assert_close(found, expected, rtol=1e-8, atol=1e-10)


@settings(max_examples=15, deadline=None)
@given(widths=st.lists(st.integers(1, 5), min_size=3, max_size=4), sparsity=st.floats(0.0, 0.9),
       damping=st.sampled_from([0.0, 0.01, 1.0]), seed=st.integers(0, 2**16))
def test_refit_pre_activation_error_never_exceeds_ecp_shift_alone(widths, sparsity, damping, seed):
    dense = mlp(widths, nn.Tanh, seed=seed)
    x = torch.randn(30, widths[0], dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    pruned = copy.deepcopy(dense)
    ecprune.prune(pruned, x, sparsity, method="ecp-refit", damping=damping)
    shifted = ecp_shifted(dense, pruned, x)
    for k in range(0, len(dense), 2):
        name = str(k)
        target, inputs = layer_io(dense, name, x)[1], layer_io(pruned, name, x)[0]
        refit, shift = pruned.get_submodule(name), shifted.get_submodule(name)
        refit_error = (inputs @ refit.weight.T + refit.bias - target).square().sum(0)
        shift_error = (inputs @ shift.weight.T + shift.bias - target).square().sum(0)
        assert (refit_error <= shift_error * (1 + 1e-9) + 1e-12).all()


def test_refit_streaming_in_chunks_equals_one_chunk(net_and_data):
    dense, x = net_and_data
    results = []
    for chunk_size in (1, 7, len(x)):
        model = copy.deepcopy(dense)
        ecprune.prune(model, x, 0.5, method="ecp-refit", chunk_size=chunk_size,
                      refit_weighting="sensitivity")
        results.append(model.state_dict())
    for other in results[1:]:
        for key, value in results[0].items():
            torch.testing.assert_close(other[key], value, rtol=1e-9, atol=1e-12)


def test_refit_importance_is_ecp_and_prune_by_importance_only_shifts(net_and_data):
    model, x = net_and_data
    refit = ecprune.importance(model, x, "ecp-refit", allocation="global")
    ecp = ecprune.importance(model, x, "ecp")
    assert refit.curves is None
    for name in ecp:
        assert torch.equal(refit[name].score, ecp[name].score)
        assert torch.equal(refit[name].bias_shift, ecp[name].bias_shift)
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    ecprune.prune_by_importance(a, refit, 0.5)
    ecprune.prune_by_importance(b, ecp, 0.5)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key])


def test_refit_allocation_keeps_ecp_order_within_each_layer(net_and_data):
    """allocation="refit" changes only how many weights each layer loses: within a layer the
    removed weights are the lowest ECP scores, with ECP's shifts."""
    model, x = net_and_data
    refit, ecp = ecprune.importance(model, x, "ecp-refit"), ecprune.importance(model, x, "ecp")
    assert set(refit.curves) == set(ecp)
    pruned = copy.deepcopy(model)
    ecprune.prune_by_importance(pruned, refit, 0.6)
    removed_total = 0
    for name in ecp:
        layer = pruned.get_submodule(name)
        removed = layer.weight_mask == 0
        removed_total += int(removed.sum())
        if removed.any() and (~removed).any():
            assert ecp[name].score[removed].max() <= ecp[name].score[~removed].min()
        shift = (ecp[name].bias_shift * removed).sum(1)
        torch.testing.assert_close(layer.bias, model.get_submodule(name).bias + shift)
    total = sum(model.get_submodule(name).weight.numel() for name in LINEARS)
    assert removed_total == round(0.6 * total)


def test_refit_keeps_masks_parameters_and_exact_count(net_and_data):
    model, x = net_and_data
    ids = {id(p) for p in model.parameters()}
    originals = {name: model.get_submodule(name).weight.detach().clone() for name in LINEARS}
    report = ecprune.prune(model, x, 0.7, method="ecp-refit")
    assert {id(p) for p in model.parameters()} == ids
    assert report.total - report.kept == round(0.7 * report.total)
    assert report.predicted_error is None
    for name in LINEARS:
        layer = model.get_submodule(name)
        removed = layer.weight_mask == 0
        assert torch.equal(layer.weight_orig[removed], originals[name][removed])
        assert not torch.equal(layer.weight_orig[~removed], originals[name][~removed])


def test_refit_of_a_bias_free_model_needs_add_bias(net_and_data):
    _, x = net_and_data
    model = torch.nn.Sequential(nn.Linear(4, 5, bias=False), nn.Tanh(), nn.Linear(5, 2)).double()
    with pytest.raises(ValueError, match=r"layers \['0'\] have no bias.*add_bias=True"):
        ecprune.prune(model, x, 0.5, method="ecp-refit")
    report = ecprune.prune(model, x, 0.5, method="ecp-refit", add_bias=True)
    assert model[0].bias is not None and report.total - report.kept == round(0.5 * report.total)


@pytest.mark.parametrize("method", ["ecp-refit", "sparsegpt-refit"])
def test_first_layer_reuses_the_scoring_gram_and_reads_no_data(net_and_data, method):
    """The first layer's inputs are the data whatever is pruned: its refit (and SparseGPT's
    update) from the scoring pass's Gram matrix equals one from a pass of its own, and the
    data are streamed once fewer."""
    dense, x = net_and_data
    pruned, reference = copy.deepcopy(dense), copy.deepcopy(dense)
    scores = ecprune.importance(pruned, x, method)
    assert set(scores.grams) == set(LINEARS)
    ecprune.prune_by_importance(pruned, scores, 0.6, data=x)  # SparseGPT's update needs the data
    layers = {name: pruned.get_submodule(name) for name in LINEARS}
    passes = []

    def batches():
        passes.append(1)
        return [ecprune.engine.batching.Batch(x, None)]

    results = []
    for grams in (scores.grams, None):
        model = copy.deepcopy(pruned)
        passes.clear()
        refit_layers(model, reference, {n: model.get_submodule(n) for n in layers}, batches,
                     damping=0.0, grams=grams)
        results.append((model, len(passes)))
    (with_gram, fewer), (with_pass, more) = results
    assert fewer == more - 1
    for key, value in with_pass.state_dict().items():
        torch.testing.assert_close(with_gram.state_dict()[key], value, rtol=1e-9, atol=1e-12)
