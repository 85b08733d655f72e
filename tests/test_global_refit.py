"""objective="network": the passes toward the dense output never increase the linearised or the
true output error on tiny float64 networks, keep every mask and count, and their pieces (the
gradient, the per-row Gauss-Newton steps, the step lengths) equal torch.func oracles."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.func import functional_call, jvp

import ecprune
from conftest import bias_jacobians, layer_inputs, mlp
from ecprune import methods
from ecprune.engine.batching import iter_batches
from ecprune.engine.layers import bake_masks
from ecprune.reconstruct.network import (
    DenseOutputs,
    directions,
    gradient_pass,
    network_refit,
    output_error,
    step_lengths,
)

LINEARS = ("0", "2", "4")


def error(model, dense, x):
    with torch.no_grad():
        return float((model(x) - dense(x)).square().sum())


def masks(model):
    return {name: model.get_submodule(name).weight_mask.clone() for name in LINEARS}


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**16), sparsity=st.sampled_from([0.3, 0.6, 0.8]),
       activation=st.sampled_from([nn.Tanh, nn.PReLU]), damping=st.sampled_from([0.0, 0.01]))
def test_the_output_error_never_increases_and_masks_are_kept(seed, sparsity, activation, damping):
    dense = mlp([4, 6, 5, 3], activation, seed=seed)
    x = torch.randn(50, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    layerwise, network = copy.deepcopy(dense), copy.deepcopy(dense)
    ecprune.prune(layerwise, x, sparsity, "ecp-refit", damping=damping)
    report = ecprune.prune(network, x, sparsity, "ecp-refit", damping=damping,
                           objective="network", network_passes=3)
    assert error(network, dense, x) <= error(layerwise, dense, x)
    assert report.total - report.kept == round(sparsity * report.total)
    for name, mask in masks(layerwise).items():
        assert torch.equal(network.get_submodule(name).weight_mask, mask)
        assert (network.get_submodule(name).weight[mask == 0] == 0).all()


def batches_of(x, chunk=13):
    return lambda: iter_batches(x, chunk_size=chunk, device=x.device, dtype=x.dtype)


@pytest.fixture
def pruned_pair():
    dense = mlp([5, 6, 4, 3], nn.PReLU, seed=7)
    x = torch.randn(70, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    pruned = copy.deepcopy(dense)
    ecprune.prune(pruned, x, 0.6, "ecp-refit")
    return dense, pruned, x


def test_the_history_never_increases_and_matches_the_true_error(pruned_pair):
    dense, pruned, x = pruned_pair
    layers = {name: pruned.get_submodule(name) for name in LINEARS}
    before = error(pruned, dense, x)
    history = network_refit(pruned, dense, layers, batches_of(x), passes=4, damping=0.01)
    assert history[0] == pytest.approx(before, rel=1e-12)
    assert all(b <= a for a, b in itertools.pairwise(history))
    assert history[-1] == pytest.approx(error(pruned, dense, x), rel=1e-12)
    assert history[-1] < 0.9 * history[0]  # it does move on this net


def plain_copy(model):
    return bake_masks(copy.deepcopy(model))


def test_the_gradient_pass_equals_autograd_and_the_sensitivities_torch_func(pruned_pair):
    dense, pruned, x = pruned_pair
    layers = {name: pruned.get_submodule(name) for name in LINEARS}
    sums = gradient_pass(pruned, layers, batches_of(x), DenseOutputs(dense, None), "0")
    plain = plain_copy(pruned)
    loss = 0.5 * (plain(x) - dense(x).detach()).square().sum()
    for name in LINEARS:
        layer = plain.get_submodule(name)
        gw, gb = torch.autograd.grad(loss, [layer.weight, layer.bias], retain_graph=True)
        torch.testing.assert_close(sums["grads"][name], torch.cat([gw, gb[:, None]], 1),
                                   rtol=1e-10, atol=1e-12)
        s = bias_jacobians(plain, name, x).square().sum(1).sum(0)
        torch.testing.assert_close(sums["sens"][name], s, rtol=1e-10, atol=1e-12)
        assert sums["rows"][name] == len(x)
    assert sums["error"] == pytest.approx(error(pruned, dense, x), rel=1e-12)
    assert set(sums["grams"]) == {"2", "4"}


def test_each_rows_step_is_its_gauss_newton_step_with_mean_sensitivity(pruned_pair):
    dense, pruned, x = pruned_pair
    layers = {name: pruned.get_submodule(name) for name in LINEARS}
    sums = gradient_pass(pruned, layers, batches_of(x), DenseOutputs(dense, None), "0")
    plain = plain_copy(pruned)
    grams = {}
    for name in LINEARS:
        a = layer_inputs(plain, name, x)
        design = torch.cat([a, torch.ones(len(a), 1, dtype=a.dtype)], 1)
        grams[name] = design.T @ design
    steps = directions(layers, sums, grams, 0.0)
    full_rank_rows = 0
    for name in LINEARS:
        keep = layers[name].weight_mask.bool()
        s = bias_jacobians(plain, name, x).square().sum(1).mean(0)
        for i, row in enumerate(keep):
            support = torch.cat([row, torch.tensor([True])])
            assert (steps[name][i, ~support] == 0).all()
            curvature = s[i] * grams[name][support][:, support]
            if s[i] == 0:  # the row does not reach the output
                assert (steps[name][i] == 0).all()
            elif torch.linalg.matrix_rank(curvature, rtol=1e-9) == len(curvature):
                expected = -torch.linalg.solve(curvature, sums["grads"][name][i, support])
                torch.testing.assert_close(steps[name][i, support], expected, rtol=1e-8,
                                           atol=1e-10)
                full_rank_rows += 1
    assert full_rank_rows >= 8


def test_the_step_lengths_minimise_the_linearised_error_from_torch_func_jvps(pruned_pair):
    dense, pruned, x = pruned_pair
    layers = {name: pruned.get_submodule(name) for name in LINEARS}
    target = DenseOutputs(dense, None)
    sums = gradient_pass(pruned, layers, batches_of(x), target, "0")
    grams = {name: sums["grams"].get(name) for name in LINEARS}
    grams["0"] = (lambda d: d.T @ d)(torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1))
    steps = directions(layers, sums, grams, 0.01)
    alpha, decrease = step_lengths(pruned, layers, batches_of(x), target, steps)
    plain = plain_copy(pruned)
    params = {k: v.detach() for k, v in plain.named_parameters()}
    tangents = []
    for name in LINEARS:  # J d_l by torch.func.jvp over the layer's parameters
        direction = {k: torch.zeros_like(v) for k, v in params.items()}
        direction[f"{name}.weight"] = steps[name][:, :-1]
        direction[f"{name}.bias"] = steps[name][:, -1]
        tangents.append(jvp(lambda p: functional_call(plain, p, (x,)), (params,),
                            (direction,))[1].reshape(-1))
    v = torch.stack(tangents)
    e = (plain(x) - dense(x)).detach().reshape(-1)
    expected = torch.linalg.lstsq(v.T, -e[:, None]).solution[:, 0]
    torch.testing.assert_close(alpha, expected, rtol=1e-7, atol=1e-10)
    linearised = (e + alpha @ v).square().sum()
    assert float(linearised) <= float(e.square().sum())
    assert decrease == pytest.approx(float(e.square().sum() - linearised), rel=1e-8)


def test_a_pass_that_cannot_lower_the_error_changes_nothing(pruned_pair, monkeypatch):
    dense, pruned, x = pruned_pair
    layers = {name: pruned.get_submodule(name) for name in LINEARS}
    state = copy.deepcopy(pruned.state_dict())
    import ecprune.reconstruct.network as network

    monkeypatch.setattr(network, "step_lengths",  # a step that only raises the error
                        lambda *a, **k: (torch.full((3,), -1e3, dtype=torch.float64), 0.0))
    history = network_refit(pruned, dense, layers, batches_of(x), passes=3, damping=0.01)
    assert len(history) == 1
    for key, value in pruned.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert output_error(pruned, batches_of(x), DenseOutputs(dense, None)) == pytest.approx(
        history[0], rel=1e-12)


def test_network_objective_with_admm_and_prune_by_importance_alike(pruned_pair):
    dense, _, x = pruned_pair
    pruned, by_scores = copy.deepcopy(dense), copy.deepcopy(dense)
    ecprune.prune(pruned, x, 0.7, "ecp-admm", objective="network", refine="swaps")
    scores = ecprune.importance(by_scores, x, "ecp-admm", objective="network", refine="swaps")
    ecprune.prune_by_importance(by_scores, scores, 0.7, data=x)
    for key, value in pruned.state_dict().items():
        assert torch.equal(value, by_scores.state_dict()[key]), key
    layerwise = copy.deepcopy(dense)
    ecprune.prune(layerwise, x, 0.7, "ecp-admm", refine="swaps")
    assert error(pruned, dense, x) <= error(layerwise, dense, x)


@pytest.mark.parametrize(("make", "match"), [
    (lambda: methods.ECPRefit(objective="output"), r"'objective' parameter of ECPRefit must be one of 'layer', 'network', 'loss'. Got 'output'"),
    (lambda: methods.get("ecp-admm", network_passes=0), r"'network_passes' parameter of get must be an int >= 1. Got 0"),
])
def test_network_options_are_validated(make, match):
    with pytest.raises(ValueError, match=match):
        make()
