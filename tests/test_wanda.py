"""Wanda and the per-row scope against their definitions."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import ecprune
from conftest import layer_inputs
from ecprune.masking.selection import layer_counts


def test_wanda_score_is_weight_magnitude_times_input_norm(tiny):
    model, x = tiny
    result = ecprune.importance(model, x, "wanda", chunk_size=7)
    for name, r in result.items():
        weight = model.get_submodule(name).weight.detach()
        norms = torch.linalg.vector_norm(layer_inputs(model, name, x), dim=0)
        torch.testing.assert_close(r.score, weight.abs() * norms, rtol=1e-12, atol=0)
        assert r.bias_shift is None


def test_wanda_prunes_the_lowest_scores_of_every_row(tiny):
    model, x = tiny
    before = copy.deepcopy(model)
    scores = ecprune.importance(model, x, "wanda")
    report = ecprune.prune(model, x, 0.5, method="wanda")
    assert report.scope == "row"
    totals = {(name, i): s.shape[1] for name, r in scores.items() for i, s in enumerate(r.score[:, None, :])}
    counts = layer_counts(totals, 0.5)
    for name, r in scores.items():
        mask = model.get_submodule(name).weight_mask
        for i, row in enumerate(r.score):
            lowest = torch.argsort(row, stable=True)[: counts[name, i]]
            expected = torch.ones_like(row)
            expected[lowest] = 0
            assert torch.equal(mask[i], expected), (name, i)
        assert torch.equal(model.get_submodule(name).bias, before.get_submodule(name).bias)
    assert report.total - report.kept == round(0.5 * report.total)


@pytest.mark.parametrize("sparsity", [0.1, 0.37, 0.5, 0.9])
def test_row_scope_spreads_removals_evenly_over_rows_with_the_exact_total(sparsity):
    model = nn.Sequential(nn.Linear(7, 5), nn.ReLU(), nn.Linear(5, 3)).double()
    x = torch.randn(20, 7, dtype=torch.float64)
    report = ecprune.prune(model, x, sparsity, method="magnitude", scope="row")
    assert report.total - report.kept == round(sparsity * report.total)
    for layer in (model[0], model[2]):
        per_row = (layer.weight_mask == 0).sum(1).double()
        target = sparsity * layer.in_features
        assert ((per_row - target).abs() < 1 + 1e-9).all()


def test_row_scope_refuses_a_row_already_pruned_beyond_its_share(tiny):
    model, x = tiny
    with torch.no_grad():
        torch.nn.utils.prune.custom_from_mask(model[0], "weight", torch.tensor(
            [[0, 0, 1], [1, 1, 1], [1, 1, 1], [1, 1, 1]], dtype=torch.bool))
    with pytest.raises(ValueError, match=r"Row 0 of layer '0' already has 2 of 3 weights pruned"):
        ecprune.prune(model, x, 0.3, method="wanda")
