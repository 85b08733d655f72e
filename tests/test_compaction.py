"""Structural clean-up: dead neurons removed, constants folded, the output unchanged."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import ecprune
from conftest import mlp

# Folding a constant adds rounding of one dot product to a bias: a few ulps in float64.
ATOL = {torch.float64: 1e-12, torch.float32: 1e-5}


def inputs(n_in, dtype=torch.float64, n=200, seed=0):
    return torch.randn(n, n_in, dtype=dtype, generator=torch.Generator().manual_seed(seed)) * 2


def assert_same_output(model, small, x):
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x), rtol=0, atol=ATOL[x.dtype])


def kill(model, *, rows=(), cols=()):
    """Zero rows (inputs of a neuron) and columns (outputs of a neuron): (layer index, unit)."""
    with torch.no_grad():
        for layer, unit in rows:
            model[layer].weight[unit] = 0
        for layer, unit in cols:
            model[layer].weight[:, unit] = 0


@pytest.mark.parametrize("activation", [lambda: nn.PReLU(6), nn.ReLU, nn.Tanh, nn.Sigmoid])
def test_dead_neurons_are_removed_and_the_output_is_unchanged(activation):
    model = mlp([4, 6, 6, 3], activation, seed=1)
    with torch.no_grad():
        for module in model:
            if isinstance(module, nn.PReLU):  # distinct per-channel slopes
                module.weight.copy_(torch.linspace(-0.5, 0.9, 6))
            if isinstance(module, nn.Linear):
                module.bias.uniform_(-1, 1)
    # layer 0: unit 1 has no inputs (constant), unit 4 no outputs; layer 2: unit 0 no inputs.
    kill(model, rows=[(0, 1), (2, 0)], cols=[(2, 4)])
    small = ecprune.compact(model)
    assert ecprune.layer_shapes(small) == {"0": (4, 4), "2": (5, 4), "4": (3, 5)}
    assert_same_output(model, small, inputs(4))
    prelus = [m for m in small if isinstance(m, nn.PReLU)]
    if prelus:
        kept = torch.linspace(-0.5, 0.9, 6)[[0, 2, 3, 5]].double()
        torch.testing.assert_close(prelus[0].weight.detach(), kept)
        assert prelus[0].num_parameters == 4


def test_removal_cascades_through_layers():
    model = mlp([3, 4, 4, 2], nn.Tanh, seed=2)
    # Unit 2 of layer 2 only listens to unit 0 of layer 0, which has no inputs: once unit 0 is
    # folded, unit 2 has no inputs either. Unit 3 of layer 0 only feeds unit 1 of layer 2,
    # which has no outputs: both go.
    with torch.no_grad():
        model[2].weight[2] = torch.tensor([0.7, 0.0, 0.0, 0.0])
        model[2].weight[:, 3] = torch.tensor([0.0, 0.4, 0.0, 0.0])
    kill(model, rows=[(0, 0)], cols=[(4, 1)])
    small = ecprune.compact(model)
    assert ecprune.layer_shapes(small) == {"0": (2, 3), "2": (2, 2), "4": (2, 2)}
    assert_same_output(model, small, inputs(3))


def test_nested_sequential_and_bias_free_layers():
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Sequential(nn.Linear(3, 5, bias=False), nn.Sigmoid()),
        nn.Sequential(nn.Linear(5, 4, bias=False), nn.Dropout(0.5), nn.PReLU(4)),
        nn.Linear(4, 2, bias=False),
    ).double()
    with torch.no_grad():
        model[0][0].weight[2] = 0  # sigmoid(0) = 0.5 must be folded into a new bias
        model[1][0].weight[:, 4] = 0
    small = ecprune.compact(model)
    assert ecprune.layer_shapes(small) == {"0.0": (3, 3), "1.0": (4, 3), "2": (2, 4)}
    assert small[1][0].bias is not None and small[0][0].bias is None
    assert_same_output(model.eval(), small.eval(), inputs(3))


def test_pruned_model_with_masks_compacts_to_the_same_function_in_float32():
    model = mlp([8, 16, 16, 4], lambda: nn.PReLU(16), seed=4, dtype=torch.float32)
    x = inputs(8, torch.float32)
    ecprune.prune(model, x, 0.9)
    small = ecprune.compact(model)
    assert sum(w[0] for w in ecprune.layer_shapes(small).values()) < 36
    assert_same_output(model, small, x)
    assert hasattr(model[0], "weight_orig") and not hasattr(small[0], "weight_orig")


def test_a_fully_dead_layer_leaves_a_constant_network():
    model = mlp([3, 4, 2], nn.Tanh, seed=5)
    kill(model, rows=[(0, k) for k in range(4)])
    small = ecprune.compact(model)
    assert ecprune.layer_shapes(small) == {"0": (0, 3), "2": (2, 0)}
    assert_same_output(model, small, inputs(3))


def test_unused_inputs_and_outputs_are_kept():
    model = mlp([3, 4, 2], nn.ReLU, seed=6)
    kill(model, rows=[(2, 0)], cols=[(0, 1)])
    small = ecprune.compact(model)
    assert ecprune.layer_shapes(small) == ecprune.layer_shapes(model)
    assert_same_output(model, small, inputs(3))


def test_the_input_model_is_not_modified():
    model = mlp([3, 4, 2], nn.ReLU, seed=7)
    kill(model, rows=[(0, 0)])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ecprune.compact(model)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_models_that_are_not_sequential_are_refused():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 2)

        def forward(self, x):
            return self.fc(x)

    with pytest.raises(ValueError, match=r"compact supports nn\.Sequential chains.*not an "
                                         r"nn\.Sequential"):
        ecprune.compact(Net())


def test_non_elementwise_modules_between_linears_are_refused():
    model = nn.Sequential(nn.Linear(2, 3), nn.Softmax(dim=1), nn.Linear(3, 1))
    with pytest.raises(ValueError, match=r"not an elementwise activation \('1': Softmax\)"):
        ecprune.compact(model)


def test_modules_before_the_first_and_after_the_last_linear_are_kept():
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2),
                          nn.LogSoftmax(dim=1)).double()
    kill(model, rows=[(1, 2)])
    small = ecprune.compact(model)
    assert ecprune.layer_shapes(small) == {"1": (3, 6), "3": (2, 3)}
    x = inputs(6).reshape(-1, 2, 3)
    assert_same_output(model, small, x)
