"""The Sequential fast path of the "nonlinear" baseline equals its general vmap path."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import ecprune
from conftest import mlp
from ecprune.methods import nonlinear


def general_scores(model, x, **options):
    original = nonlinear._chain_after
    nonlinear._chain_after = lambda model, layer: None
    try:
        return ecprune.importance(model, x, "nonlinear", nonlinear_samples=len(x), **options)
    finally:
        nonlinear._chain_after = original


@pytest.mark.parametrize("widths,activation", [
    ([3, 5, 4, 3, 2], nn.PReLU),   # a tail after the next Linear
    ([3, 5, 4, 2], nn.Tanh),       # closed form for the layer before the last
    ([4, 6, 6, 6, 3], nn.GELU),
])
def test_fast_path_equals_general_path(widths, activation):
    model = mlp(widths, activation)
    x = torch.randn(30, widths[0], dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    fast = ecprune.importance(model, x, "nonlinear", nonlinear_samples=len(x))
    general = general_scores(model, x)
    for name in fast:
        torch.testing.assert_close(fast[name].score, general[name].score, rtol=1e-10, atol=1e-14)


def test_fast_path_with_output_fn_and_masked_layers():
    model = mlp([3, 5, 4, 3], nn.PReLU)
    x = torch.randn(25, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    ecprune.prune(model, x, sparsity=0.4, method="magnitude")  # masks on every layer

    def output_fn(out):
        return out.softmax(-1)

    fast = ecprune.importance(model, x, "nonlinear", nonlinear_samples=len(x), output_fn=output_fn)
    general = general_scores(model, x, output_fn=output_fn)
    for name in fast:
        torch.testing.assert_close(fast[name].score, general[name].score, rtol=1e-10, atol=1e-14)
        assert torch.all(fast[name].score[model.get_submodule(name).weight == 0] == 0)


def test_chain_is_found_only_where_the_shortcut_is_exact():
    model = nn.Sequential(nn.Linear(3, 4), nn.PReLU(), nn.Linear(4, 4), nn.PReLU(4),
                          nn.Linear(4, 2))
    assert nonlinear._chain_after(model, model[0]) is not None
    assert nonlinear._chain_after(model, model[2]) is None  # per-unit PReLU slopes
    assert nonlinear._chain_after(model, model[4]) is None  # the last layer
    softmax = nn.Sequential(nn.Linear(3, 4), nn.Softmax(-1), nn.Linear(4, 2))
    assert nonlinear._chain_after(softmax, softmax[0]) is None  # not elementwise
