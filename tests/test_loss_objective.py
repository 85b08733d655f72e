"""objective="loss": the network passes on the training loss with the data's labels never
increase that loss, keep every mask and count, and their pieces equal independent float64
oracles (autograd of the summed cross-entropy, the sensitivities in the softmax Hessian's
metric by torch.func, the step lengths minimising the Gauss-Newton model along torch.func
jvps); with float targets equal to the dense outputs it is objective="network"."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.func import functional_call, jvp
from torch.utils.data import TensorDataset

import ecprune
from conftest import bias_jacobians, mlp
from ecprune.engine.batching import iter_batches
from ecprune.engine.layers import bake_masks
from ecprune.reconstruct.network import directions, gradient_pass, step_lengths
from ecprune.reconstruct.objectives import LabelLoss

LINEARS = ("0", "2", "4")


def data(seed, n=60, n_in=4, classes=3):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, n_in, dtype=torch.float64, generator=generator)
    return x, torch.randint(0, classes, (n,), generator=generator)


def loss(model, x, y):
    with torch.no_grad():
        return float(F.cross_entropy(model(x), y, reduction="sum"))


def batches_of(x, y, chunk=13):
    return lambda: iter_batches(TensorDataset(x, y), chunk_size=chunk, device=x.device,
                                dtype=x.dtype)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**16), sparsity=st.sampled_from([0.3, 0.6, 0.8]),
       method=st.sampled_from(["ecp-refit", "ecp-admm"]))
@example(seed=18389, sparsity=0.8, method="ecp-admm")  # a layer's inputs constant to rounding
def test_the_training_loss_never_increases_and_masks_are_kept(seed, sparsity, method):
    dense = mlp([4, 6, 5, 3], nn.Tanh, seed=seed)
    x, y = data(seed)
    layerwise, by_loss = copy.deepcopy(dense), copy.deepcopy(dense)
    ecprune.prune(layerwise, TensorDataset(x, y), sparsity, method)
    report = ecprune.prune(by_loss, TensorDataset(x, y), sparsity, method, objective="loss",
                           network_passes=3)
    assert loss(by_loss, x, y) <= loss(layerwise, x, y)
    assert report.total - report.kept == round(sparsity * report.total)
    for name in LINEARS:
        mask = layerwise.get_submodule(name).weight_mask
        assert torch.equal(by_loss.get_submodule(name).weight_mask, mask)
        assert (by_loss.get_submodule(name).weight[mask == 0] == 0).all()


@pytest.fixture
def pruned():
    dense = mlp([5, 6, 4, 3], nn.PReLU, seed=7)
    x, y = data(8, n=70, n_in=5)
    model = copy.deepcopy(dense)
    ecprune.prune(model, x, 0.6, "ecp-refit")
    layers = {name: model.get_submodule(name) for name in LINEARS}
    return model, layers, x, y


def softmax_hessian(logits):
    p = torch.softmax(logits, 1)
    return torch.diag_embed(p) - p[:, :, None] * p[:, None, :]


def test_the_gradient_and_sensitivities_are_the_losss(pruned):
    model, layers, x, y = pruned
    sums = gradient_pass(model, layers, batches_of(x, y), LabelLoss(), "0")
    plain = bake_masks(copy.deepcopy(model))
    total = F.cross_entropy(plain(x), y, reduction="sum")
    hessian = softmax_hessian(plain(x).detach())  # (B, n_out, n_out)
    for name in LINEARS:
        layer = plain.get_submodule(name)
        gw, gb = torch.autograd.grad(total, [layer.weight, layer.bias], retain_graph=True)
        torch.testing.assert_close(sums["grads"][name], torch.cat([gw, gb[:, None]], 1),
                                   rtol=1e-10, atol=1e-12)
        jac = bias_jacobians(plain, name, x)  # (B, n_out, n_rows)
        s = torch.einsum("bki,bkl,bli->i", jac, hessian, jac)  # sum_x J_i^T H J_i
        torch.testing.assert_close(sums["sens"][name], s, rtol=1e-10, atol=1e-12)
    assert sums["error"] == pytest.approx(float(total.detach()),
                                          rel=1e-12)


def test_the_step_lengths_minimise_the_gauss_newton_model(pruned):
    model, layers, x, y = pruned
    objective = LabelLoss()
    sums = gradient_pass(model, layers, batches_of(x, y), objective, "0")
    design = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    grams = {**sums["grams"], "0": design.T @ design}
    steps = directions(layers, sums, grams, 0.01)
    alpha, decrease = step_lengths(model, layers, batches_of(x, y), objective, steps)
    plain = bake_masks(copy.deepcopy(model))
    params = {k: v.detach() for k, v in plain.named_parameters()}
    tangents = []
    for name in LINEARS:
        direction = {k: torch.zeros_like(v) for k, v in params.items()}
        direction[f"{name}.weight"] = steps[name][:, :-1]
        direction[f"{name}.bias"] = steps[name][:, -1]
        tangents.append(jvp(lambda p: functional_call(plain, p, (x,)), (params,),
                            (direction,))[1])
    v = torch.stack(tangents)  # (L, B, n_out)
    logits = plain(x).detach()
    residual = torch.softmax(logits, 1) - F.one_hot(y, 3).double()
    normal = torch.einsum("lbk,bkm,nbm->ln", v, softmax_hessian(logits), v)
    rhs = -torch.einsum("lbk,bk->l", v, residual)
    expected = torch.linalg.lstsq(normal, rhs[:, None]).solution[:, 0]
    torch.testing.assert_close(alpha, expected, rtol=1e-7, atol=1e-10)
    assert decrease == pytest.approx(float(rhs @ expected), rel=1e-8)
    assert decrease >= 0


def test_float_targets_equal_to_the_dense_outputs_are_the_network_objective():
    dense = mlp([4, 6, 5, 2], nn.Tanh, seed=3)
    x, _ = data(4)
    with torch.no_grad():
        targets = dense(x)
    by_network, by_loss = copy.deepcopy(dense), copy.deepcopy(dense)
    ecprune.prune(by_network, TensorDataset(x, targets), 0.6, "ecp-refit", objective="network")
    ecprune.prune(by_loss, TensorDataset(x, targets), 0.6, "ecp-refit", objective="loss")
    for key, value in by_network.state_dict().items():
        torch.testing.assert_close(by_loss.state_dict()[key], value, rtol=1e-9, atol=1e-12)


def test_inputs_without_labels_are_refused_and_the_model_is_unchanged():
    model = mlp([4, 6, 5, 3], nn.Tanh, seed=1)
    x, _ = data(1)
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="objective='loss' fits the network to the data's "
                                         "labels, but the data holds inputs only"):
        ecprune.prune(model, x, 0.5, "ecp-refit", objective="loss")
    assert model.state_dict().keys() == state.keys()
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_float_targets_of_the_wrong_size_name_both_shapes_and_change_nothing():
    model = mlp([4, 6, 5, 3], nn.Tanh, seed=1)
    x, _ = data(1)
    state = copy.deepcopy(model.state_dict())
    wrong = TensorDataset(x, torch.randn(len(x), 2, dtype=x.dtype))
    with pytest.raises(ValueError, match=r"objective='loss' compares float targets .* shape "
                                         r"\(\d+, 2\) for an output of shape \(\d+, 3\)"):
        ecprune.prune(model, wrong, 0.5, "ecp-refit", objective="loss")
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
