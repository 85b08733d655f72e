"""Pruning semantics: exact counts, masks, bias updates, interoperability with torch.nn.utils.prune."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

import ecprune
from conftest import SkipNet, mlp
from ecprune.masking.selection import layer_counts


def removed(model):
    return sum(int((m.weight == 0).sum()) for m in model.modules() if isinstance(m, nn.Linear))


def total(model):
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))


@pytest.mark.parametrize("sparsity", [0.0, 0.13, 0.5, 0.77, 0.95])
@pytest.mark.parametrize("scope", ["global", "layer"])
def test_exactly_round_sparsity_weights_are_removed(tiny, sparsity, scope):
    model, x = tiny
    ecprune.prune(model, x, sparsity, scope=scope)
    assert removed(model) == round(sparsity * total(model))


def test_layer_scope_uses_the_same_ratio_in_every_layer(tiny):
    model, x = tiny
    report = ecprune.prune(model, x, 0.5, scope="layer")
    for name, layer in report.layers.items():
        assert abs(layer.total - layer.kept - 0.5 * layer.total) <= 1, name


def test_layer_counts_are_per_layer_rounding_summing_to_the_global_count():
    assert layer_counts({"a": 12, "b": 8}, 0.3) == {"a": 4, "b": 2}
    counts = layer_counts({"a": 3, "b": 3, "c": 3}, 0.5)
    assert sum(counts.values()) == round(0.5 * 9) and set(counts.values()) <= {1, 2}


def test_ties_are_broken_deterministically_and_exactly():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)).double()
    with torch.no_grad():
        for m in model:
            m.weight.fill_(0.5)
    x = torch.randn(10, 4, dtype=torch.float64)
    masks = []
    for _ in range(2):
        clone = copy.deepcopy(model)
        ecprune.prune(clone, x, 0.25, method="magnitude")
        masks.append([m.weight_mask.clone() for m in clone])
        assert removed(clone) == 6
    assert all(torch.equal(a, b) for a, b in zip(*masks, strict=True))


def test_bias_gets_sum_of_shifts_of_pruned_weights_and_kept_weights_are_untouched(tiny):
    model, x = tiny
    before = copy.deepcopy(model)
    scores = ecprune.importance(model, x)
    ecprune.prune(model, x, 0.6)
    for name in ("0", "2", "4"):
        old, new = before.get_submodule(name), model.get_submodule(name)
        pruned = new.weight_mask == 0
        expected = old.bias + (scores[name].bias_shift * pruned).sum(1)
        torch.testing.assert_close(new.bias, expected, rtol=1e-12, atol=0)
        assert torch.equal(new.weight[~pruned], old.weight[~pruned])
        assert torch.equal(new.weight_orig, old.weight)


def test_magnitude_global_matches_torch_global_unstructured(tiny):
    model, x = tiny
    reference = copy.deepcopy(model)
    ecprune.prune(model, x, 0.4, method="magnitude")
    params = [(m, "weight") for m in reference if isinstance(m, nn.Linear)]
    torch_prune.global_unstructured(params, pruning_method=torch_prune.L1Unstructured, amount=0.4)
    for ours, theirs in zip(model, reference, strict=True):
        if isinstance(ours, nn.Linear):
            assert torch.equal(ours.weight_mask, theirs.weight_mask)


def test_masks_use_torch_reparametrisation_and_keep_parameter_ids(tiny):
    model, x = tiny
    ids = {id(p) for p in model.parameters()}
    ecprune.prune(model, x, 0.5)
    assert torch_prune.is_pruned(model)
    assert {id(p) for p in model.parameters()} == ids
    for m in model:
        if isinstance(m, nn.Linear):
            torch_prune.remove(m, "weight")
    assert not torch_prune.is_pruned(model)
    assert removed(model) == round(0.5 * total(model))


def test_existing_masks_are_kept_and_count_toward_the_ratio(tiny):
    model, x = tiny
    torch_prune.l1_unstructured(model[0], "weight", amount=5)
    torch_prune.random_unstructured(model[0], "weight", amount=2)  # a PruningContainer
    old_mask = model[0].weight_mask.clone()
    ecprune.prune(model, x, 0.5)
    assert (model[0].weight_mask[old_mask == 0] == 0).all()
    assert removed(model) == round(0.5 * total(model))
    with pytest.raises(ValueError, match="already has 7 of 12 weights pruned"):
        ecprune.prune(model, x, 0.2, scope="layer")


def test_repruning_to_the_same_sparsity_changes_nothing(tiny):
    model, x = tiny
    ecprune.prune(model, x, 0.5)
    state = copy.deepcopy(model.state_dict())
    ecprune.prune(model, x, 0.5)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_sparsity_zero_leaves_outputs_identical(tiny):
    model, x = tiny
    before = model(x)
    ecprune.prune(model, x, 0.0)
    assert torch.equal(model(x), before)


def test_compensation_reduces_last_layer_error_versus_plain_removal(tiny):
    """In the last layer everything is linear: the compensated removal is exactly optimal."""
    model, x = tiny
    plain, compensated = copy.deepcopy(model), copy.deepcopy(model)
    ecprune.prune(compensated, x, 0.5, layers=["4"])
    with torch.no_grad():
        plain[4].weight.mul_(compensated[4].weight_mask)
    dense = model(x)
    err = lambda m: (m(x) - dense).square().sum(1).mean()  # noqa: E731
    assert err(compensated) < err(plain)


def test_predicted_error_is_exact_for_one_last_layer_weight(tiny):
    """Downstream of the last layer is the identity: removing one weight costs exactly I."""
    model, x = tiny
    dense = model(x).detach()
    report = ecprune.prune(model, x, 1 / 8, layers=["4"])
    measured = (model(x) - dense).square().sum(1).mean().item()
    assert report.total - report.kept == 1
    assert report.predicted_error == pytest.approx(measured, rel=1e-9)
    assert report.relative_predicted_error == pytest.approx(
        measured / dense.square().sum(1).mean().item(), rel=1e-9)


def test_last_layer_error_is_sum_of_importances_plus_row_covariances(tiny):
    """Several removals in one row interact through Cov(a_j, a_k), which sum I leaves out."""
    model, x = tiny
    a = model[:-1](x).detach()
    dense = model(x).detach()
    weight = model[4].weight.detach().clone()
    report = ecprune.prune(model, x, 0.5, layers=["4"])
    pruned = model[4].weight_mask == 0
    removed_signal = (a[:, None, :] * (weight * pruned)).sum(-1)  # (N, n_out)
    measured = (model(x) - dense).square().sum(1).mean().item()
    assert measured == pytest.approx(removed_signal.var(0, unbiased=False).sum().item(), rel=1e-9)
    diagonal = ((weight * pruned) ** 2 * a.var(0, unbiased=False)).sum().item()
    assert report.predicted_error == pytest.approx(diagonal, rel=1e-9)


def test_only_selected_layers_are_pruned(tiny):
    model, x = tiny
    report = ecprune.prune(model, x, 0.5, layers=[model[2]])
    assert list(report.layers) == ["2"]
    assert not hasattr(model[0], "weight_mask") and hasattr(model[2], "weight_mask")


def test_nested_model_with_skip_connections_prunes():
    model = SkipNet().double()
    x = torch.randn(30, 3, dtype=torch.float64)
    report = ecprune.prune(model, x, 0.5)
    assert set(report.layers) == {"encoder.inp", "block.0", "head"}
    assert report.total - report.kept == round(0.5 * report.total)


def test_missing_bias_raises_unless_add_bias():
    model = nn.Sequential(nn.Linear(3, 4, bias=False), nn.Tanh(), nn.Linear(4, 2)).double()
    x = torch.randn(20, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"layers \['0'\] have no bias.*add_bias=True"):
        ecprune.prune(model, x, 0.5)
    assert model[0].bias is None
    ecprune.prune(copy.deepcopy(model), x, 0.5, method="magnitude")  # no compensation: fine
    before = model(x).detach()
    ecprune.prune(model, x, 0.0, add_bias=True)
    assert model[0].bias is not None and torch.equal(model(x), before)


def test_failed_apply_leaves_no_trace(tiny, monkeypatch):
    model, x = tiny
    state = copy.deepcopy(model.state_dict())
    import ecprune.masking.apply as comp

    calls = []
    original = comp._set_mask

    def failing(layer, keep):
        calls.append(layer)
        if len(calls) == 2:
            raise RuntimeError("injected failure")
        original(layer, keep)

    monkeypatch.setattr(comp, "_set_mask", failing)
    with pytest.raises(RuntimeError, match="injected"):
        ecprune.prune(model, x, 0.5)
    assert not torch_prune.is_pruned(model)
    assert model.state_dict().keys() == state.keys()
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_float32_agrees_with_float64(tiny):
    model, x = tiny
    r64 = ecprune.importance(model, x)
    r32 = ecprune.importance(copy.deepcopy(model).float(), x.float())
    for name in r64:
        assert r32[name].score.dtype == torch.float32
        torch.testing.assert_close(r32[name].score.double(), r64[name].score, rtol=1e-3, atol=1e-7)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_follows_the_model(tiny):
    model, x = tiny
    cpu = ecprune.importance(model, x)
    gpu = ecprune.importance(copy.deepcopy(model).cuda(), x)
    for name in cpu:
        assert gpu[name].score.is_cuda
        torch.testing.assert_close(gpu[name].score.cpu(), cpu[name].score, rtol=1e-8, atol=1e-14)


def test_pruned_model_still_trains_with_existing_optimizer(tiny):
    model, x = tiny
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ecprune.prune(model, x, 0.5)
    masks = [m.weight_mask.clone() for m in model if isinstance(m, nn.Linear)]
    loss = model(x).square().mean()
    loss.backward()
    optimizer.step()
    for m, mask in zip([m for m in model if isinstance(m, nn.Linear)], masks, strict=True):
        assert (m.weight[mask == 0] == 0).all()


def test_mlp_helper_builds_requested_widths():
    model = mlp([5, 3, 2])
    assert [m.weight.shape for m in model if isinstance(m, nn.Linear)] == [(3, 5), (2, 3)]


def test_tied_weights_across_modules_are_refused_and_one_module_twice_is_not():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4), nn.Tanh(),
                          nn.Linear(4, 2)).double()
    model[2].weight = model[0].weight
    x = torch.randn(30, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"The Parameters \['0.weight', '2.weight'\] are one "
                                         r"tensor \(tied weights\), held by Linear layer '0'"):
        ecprune.prune(model, x, 0.5)
    with pytest.raises(ValueError, match=r"tied weights"):
        ecprune.prune(model, x, 0.5, layers=["2"])
    assert not torch_prune.is_pruned(model)
    report = ecprune.prune(model, x, 0.5, layers=["4"])
    assert report.total == 8
