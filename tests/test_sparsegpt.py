"""SparseGPT / OBS against the closed-form OBS update and brute-force least squares."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import ecprune
from conftest import bias_jacobians
from ecprune.reconstruct.sparsegpt import block_quotas, sparsegpt_layers, sparsegpt_rows


def layer_and_data(n_in=4, n_out=3, n=50, seed=0):
    torch.manual_seed(seed)
    layer = nn.Linear(n_in, n_out).double()
    x = torch.randn(n, n_in, dtype=torch.float64, generator=torch.Generator().manual_seed(seed + 1))
    x = x + torch.linspace(-1, 1, n_in, dtype=torch.float64)  # non-zero means: the bias matters
    return layer, x


def hessian(x, damping):
    """E[[x, 1][x, 1]^T] + damping * mean(diag) * I, built here from the data."""
    design = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    h = design.T @ design / len(x)
    return h + damping * h.diagonal().mean() * torch.eye(len(h), dtype=x.dtype)


def rows_of(layer):
    return torch.cat([layer.weight, layer.bias[:, None]], 1).detach()


@pytest.mark.parametrize("damping", [0.0, 0.01])
def test_removing_one_first_column_weight_is_the_obs_update(damping):
    layer, x = layer_and_data()
    with torch.no_grad():
        layer.weight[1, 0] = 1e-3  # the cheapest weight, in column 0
    before = rows_of(layer)
    ecprune.prune(layer, x, 1 / 12, method="sparsegpt", damping=damping)
    assert int((layer.weight_mask == 0).sum()) == 1 and layer.weight_mask[1, 0] == 0
    inverse = torch.linalg.inv(hessian(x, damping))
    expected = before.clone()
    expected[1] -= before[1, 0] / inverse[0, 0] * inverse[:, 0]
    torch.testing.assert_close(rows_of(layer), expected, rtol=1e-9, atol=1e-12)


def test_a_later_column_updates_only_the_columns_after_it():
    """SparseGPT freezes visited columns: removing w_q updates F = {q, ..., bias} by the OBS
    formula on H restricted to F."""
    layer, x = layer_and_data()
    q = 2
    with torch.no_grad():
        layer.weight[0, q] = 1e-3
    before = rows_of(layer)
    ecprune.prune(layer, x, 1 / 12, method="sparsegpt", scope="layer")
    assert layer.weight_mask[0, q] == 0
    inverse = torch.linalg.inv(hessian(x, 0.01)[q:, q:])
    expected = before.clone()
    expected[0, q:] -= before[0, q] / inverse[0, 0] * inverse[:, 0]
    torch.testing.assert_close(rows_of(layer), expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("damping", [0.0, 0.05])
def test_obs_saliency_is_the_brute_force_increase_of_the_reconstruction_error(damping):
    """For the output layer s_i = 1, so the score is w_q^2 / [H^-1]_qq: the smallest increase of
    (w - w') H (w - w')^T over rows w' with w'_q = 0, found here by least squares on the data,
    stacked with sqrt(lambda) I rows for the damping."""
    layer, x = layer_and_data()
    scores = ecprune.importance(layer, x, "sparsegpt", damping=damping)[""].score
    design = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1) / len(x) ** 0.5
    lam = damping * design.square().sum(0).mean()
    stacked = torch.cat([design, lam.sqrt() * torch.eye(design.shape[1], dtype=x.dtype)])
    rows = rows_of(layer)
    for i in range(rows.shape[0]):
        target = stacked @ rows[i]
        for q in range(x.shape[1]):
            others = [j for j in range(rows.shape[1]) if j != q]
            fit = torch.linalg.lstsq(stacked[:, others], target[:, None], driver="gelsd").solution
            increase = (stacked[:, others] @ fit[:, 0] - target).square().sum()
            torch.testing.assert_close(scores[i, q], increase, rtol=1e-8, atol=1e-14)


def test_score_is_the_obs_cost_times_the_mean_output_sensitivity():
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    x = torch.randn(30, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    score = ecprune.importance(model, x, "sparsegpt")["0"].score
    obs = ecprune.importance(model[0], x, "sparsegpt")[""].score  # alone, its output is u: s = 1
    mean_s = bias_jacobians(model, "0", x).square().sum(1).mean(0)
    torch.testing.assert_close(score, mean_s[:, None] * obs, rtol=1e-9, atol=0)


@settings(max_examples=40, deadline=None)
@given(n_out=st.integers(1, 4), n_in=st.integers(1, 9), block=st.integers(1, 5),
       fraction=st.floats(0, 1), seed=st.integers(0, 2**16))
def test_sparsegpt_rows_remove_exactly_count_and_keep_masked_and_bias(n_out, n_in, block, fraction,
                                                                     seed):
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(n_out, n_in + 1, dtype=torch.float64, generator=generator)
    data = torch.randn(20, n_in + 1, dtype=torch.float64, generator=generator)
    data[:, -1] = 1
    h = data.T @ data / 20 + 0.01 * torch.eye(n_in + 1, dtype=torch.float64)
    present = torch.rand(n_out, n_in + 1, generator=generator) > 0.3
    present[:, -1] = True
    prunable = torch.ones_like(present)
    prunable[:, -1] = False
    existing = int((~present).sum())
    count = existing + round(fraction * (n_out * n_in - existing))
    rows, removed = sparsegpt_rows(weight, present, prunable, h, count, block)
    assert int(removed.sum()) == count
    assert removed[~present].all() and not removed[:, -1].any()
    assert (rows[removed] == 0).all()
    bounds = [(a, min(a + block, n_in + 1)) for a in range(0, n_in + 1, block)]
    assert sum(block_quotas(present, prunable, count, bounds)) == count


def test_sparsegpt_prunes_a_network_layer_by_layer_with_exact_counts(tiny):
    model, x = tiny
    reference = copy.deepcopy(model)
    report = ecprune.prune(model, x, 0.5, method="sparsegpt", block_size=2)
    assert report.total - report.kept == round(0.5 * report.total)
    for name, layer in report.layers.items():
        module = model.get_submodule(name)
        assert layer.kept == int(module.weight_mask.sum())
        if layer.kept < layer.total:  # the OBS updates reach the bias
            assert not torch.equal(module.bias, reference.get_submodule(name).bias)


def test_sparsegpt_with_zero_damping_and_a_dead_input_asks_for_damping():
    layer = nn.Linear(3, 2).double()
    x = torch.randn(10, 3, dtype=torch.float64)
    x[:, 1] = 0
    with pytest.raises(ValueError, match=r"singular.*'damping' > 0"):
        ecprune.prune(layer, x, 0.5, method="sparsegpt", damping=0.0)


def test_without_a_bias_the_update_uses_the_inputs_alone():
    layer, x = layer_and_data()
    layer = nn.Linear(4, 3, bias=False).double()
    with torch.no_grad():
        layer.weight[2, 0] = 1e-4
    before = layer.weight.detach().clone()
    ecprune.prune(layer, x, 1 / 12, method="sparsegpt")
    assert layer.bias is None and layer.weight_mask[2, 0] == 0
    h = x.T @ x / len(x)
    inverse = torch.linalg.inv(h + 0.01 * h.diagonal().mean() * torch.eye(4, dtype=x.dtype))
    expected = before.clone()
    expected[2] -= before[2, 0] / inverse[0, 0] * inverse[:, 0]
    torch.testing.assert_close(layer.weight, expected, rtol=1e-9, atol=1e-12)


def test_first_layer_uses_the_scoring_gram_like_its_own_pass(tiny):
    """The first layer's Gram matrix from the scoring pass equals the one SparseGPT's own pass
    over its (unchanged) inputs would gather, so both prune it alike."""
    model, x = tiny
    scores = ecprune.importance(model, x, "sparsegpt")
    counts = {"0": 5, "2": 6, "4": 3}
    results = []
    for grams in (scores.grams, None):
        pruned = copy.deepcopy(model)
        layers = {name: pruned.get_submodule(name) for name in counts}
        sparsegpt_layers(pruned, layers, counts, lambda: [ecprune.engine.batching.Batch(x, None)],
                         grams=grams)
        results.append(pruned.state_dict())
    for key, value in results[1].items():
        torch.testing.assert_close(results[0][key], value, rtol=1e-12, atol=1e-14)
