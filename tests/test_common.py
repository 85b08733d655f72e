"""One contract suite run on every criterion (cf. scikit-learn's ``parametrize_with_checks``)."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import TensorDataset

import ecprune
from conftest import bias_jacobians, mlp
from ecprune.methods import REGISTRY


def data_for(method, x):
    targets = torch.randint(0, 2, (len(x),), generator=torch.Generator().manual_seed(0))
    return TensorDataset(x, targets) if REGISTRY[method].needs_targets else x


@pytest.mark.parametrize("method", ecprune.METHODS)
def test_scores_have_weight_shape_and_are_finite_and_non_negative(tiny, method):
    model, x = tiny
    result = ecprune.importance(model, data_for(method, x), method)
    assert list(result) == ["0", "2", "4"] and result.method == method
    for name, r in result.items():
        weight = model.get_submodule(name).weight
        assert r.score.shape == weight.shape and r.score.dtype == weight.dtype
        assert torch.isfinite(r.score).all() and (r.score >= 0).all()
        assert (r.bias_shift is not None) == REGISTRY[method].compensates
        if r.bias_shift is not None:
            assert r.bias_shift.shape == weight.shape and torch.isfinite(r.bias_shift).all()


@pytest.mark.parametrize("method", ecprune.METHODS)
@pytest.mark.parametrize("scope", ["global", "layer"])
def test_prune_removes_exactly_k_and_reports_it(tiny, method, scope):
    model, x = tiny
    report = ecprune.prune(model, data_for(method, x), 0.6, method=method, scope=scope)
    masks = [m.weight_mask for m in model if isinstance(m, nn.Linear)]
    assert sum(int((mask == 0).sum()) for mask in masks) == round(0.6 * report.total) == report.total - report.kept
    assert (report.predicted_error is not None) == REGISTRY[method].predicts_error
    assert report.seconds >= report.scoring_seconds > 0
    assert torch.isfinite(model(x)).all()


@pytest.mark.parametrize("method", ecprune.METHODS)
def test_failed_prune_leaves_the_model_unchanged(tiny, method):
    model, x = tiny
    ecprune.prune(model, data_for(method, x), 0.5, method=method)
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="already has"):
        ecprune.prune(model, data_for(method, x), 0.3, method=method)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


@pytest.mark.parametrize("method", ecprune.METHODS)
def test_steps_reach_exactly_k_removed(tiny, method):
    model, x = tiny
    report = ecprune.prune(model, data_for(method, x), 0.7, method=method, steps=3)
    masks = [m.weight_mask for m in model if isinstance(m, nn.Linear)]
    assert sum(int((mask == 0).sum()) for mask in masks) == round(0.7 * report.total)
    assert report.steps == 3 and torch.isfinite(model(x)).all()


@pytest.mark.parametrize("method", ecprune.METHODS)
def test_steps_one_is_the_one_shot_method(tiny, method):
    model, x = tiny
    one_shot, one_step = copy.deepcopy(model), copy.deepcopy(model)
    ecprune.prune(one_shot, data_for(method, x), 0.5, method=method)
    ecprune.prune(one_step, data_for(method, x), 0.5, method=method, steps=1)
    for key, value in one_shot.state_dict().items():
        assert torch.equal(value, one_step.state_dict()[key]), key
    if not REGISTRY[method].rereads_data:  # these update weights after the selection
        scores = ecprune.importance(model, data_for(method, x), method)
        ecprune.prune_by_importance(model, scores, 0.5)
        for key, value in model.state_dict().items():
            assert torch.equal(value, one_step.state_dict()[key]), key


@pytest.mark.parametrize("method", ecprune.METHODS)
def test_sparsity_zero_and_pruning_again_to_the_same_ratio_change_nothing(tiny, method):
    model, x = tiny
    before = model(x)
    ecprune.prune(model, data_for(method, x), 0.0, method=method)
    assert torch.equal(model(x), before)
    ecprune.prune(model, data_for(method, x), 0.4, method=method)
    state = copy.deepcopy(model.state_dict())
    ecprune.prune(model, data_for(method, x), 0.4, method=method, steps=2)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


@settings(max_examples=20, deadline=None)
@given(widths=st.lists(st.integers(1, 4), min_size=2, max_size=4),
       n=st.integers(1, 12), seed=st.integers(0, 2**16))
def test_ecp_shift_matches_jacobian_definition_on_random_shapes(widths, n, seed):
    model = mlp(widths, nn.Tanh, seed=seed)
    x = torch.randn(n, widths[0], dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    result = ecprune.importance(model, x)
    name = "0"
    weight = model[0].weight.detach()
    s = bias_jacobians(model, name, x).square().sum(1)  # (n, n_layer)
    e_s, e_sa = s.mean(0)[:, None], (s[:, :, None] * x[:, None, :]).mean(0)
    expected = torch.where(e_s > 0, weight * e_sa / torch.where(e_s > 0, e_s, 1), 0)
    torch.testing.assert_close(result[name].bias_shift, expected, rtol=1e-8, atol=1e-12)
    assert (result[name].score >= 0).all()
