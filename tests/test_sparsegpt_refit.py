"""sparsegpt-refit: SparseGPT's masks and updates, then ecp-refit's least-squares refit."""

from __future__ import annotations

import copy

import torch
from torch import nn

import ecprune
from conftest import mlp
from ecprune.engine.batching import Batch
from ecprune.engine.layers import keep_mask, select_layers
from ecprune.reconstruct.refit import refit_layers


def test_is_sparsegpt_then_the_refit_toward_the_dense_network():
    dense = mlp([5, 7, 6, 3], nn.PReLU, seed=2)
    x = torch.randn(90, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    expected = copy.deepcopy(dense)
    ecprune.prune(expected, x, 0.6, method="sparsegpt")
    refit_layers(expected, dense, select_layers(expected, None), lambda: [Batch(x, None, 0)])
    model = copy.deepcopy(dense)
    report = ecprune.prune(model, x, 0.6, method="sparsegpt-refit")
    assert report.method == "sparsegpt-refit" and report.kept == round(0.4 * report.total)
    for name, tensor in expected.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], tensor, rtol=1e-12, atol=1e-12)


def test_refit_never_increases_the_layer_error_of_sparsegpt():
    """One layer: the refit solves the least squares whose start is SparseGPT's row."""
    layer = nn.Linear(8, 4, dtype=torch.float64)
    x = torch.randn(60, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    target = layer(x).detach()
    errors = {}
    for method in ("sparsegpt", "sparsegpt-refit"):
        pruned = copy.deepcopy(layer)
        ecprune.prune(pruned, x, 0.5, method=method, damping=0.0)
        errors[method] = (pruned(x) - target).square().sum().item()
        assert int(keep_mask(pruned).sum()) == 16
    assert errors["sparsegpt-refit"] <= errors["sparsegpt"] * (1 + 1e-9)
