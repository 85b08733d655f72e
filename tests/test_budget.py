"""Error budgets (exact-k, checked by brute force over k) and the measured output error."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

import ecprune
from conftest import mlp
from ecprune.engine.layers import copy_model, keep_mask


def brute_force_count(model, scores, budget):
    """Largest k whose pruning report predicts a relative error <= budget (k < |W|)."""
    total = sum(s.score.numel() for s in scores.values())
    masked = sum(int((~keep_mask(model.get_submodule(name))).sum()) for name in scores)
    best = masked
    for k in range(masked, total):
        report = ecprune.prune_by_importance(copy_model(model), scores, k / total)
        assert report.total - report.kept == k
        if report.relative_predicted_error <= budget:
            best = k
        else:
            break
    return best


@pytest.fixture
def scored():
    model = mlp([3, 5, 4, 2], nn.Tanh, seed=3)
    x = torch.randn(64, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    return model, x, ecprune.importance(model, x)


def sorted_relative_prefix(scores):
    flat = torch.cat([s.score.reshape(-1) for s in scores.values()]).sort().values
    return torch.cumsum(flat, 0) / scores.mean_output_sq


@pytest.mark.parametrize("position", [0, 3, 10, 25, 41])
def test_budget_count_matches_brute_force_over_k(scored, position):
    model, _, scores = scored
    prefix = sorted_relative_prefix(scores)
    # A budget strictly between two prefix sums, so rounding cannot decide the answer.
    budget = ((prefix[position] + prefix[position + 1]) / 2).item()
    choice = ecprune.budget_sparsity(model, scores, budget)
    assert choice.removed == brute_force_count(model, scores, budget) == position + 1
    assert choice.relative_predicted_error <= budget
    assert choice.sparsity == choice.removed / choice.total


def test_zero_budget_removes_only_weights_that_predict_no_error(scored):
    model, x, _ = scored
    with torch.no_grad():
        model[2].weight[:, 1] = 0  # two zero columns of I
    scores = ecprune.importance(model, x)
    choice = ecprune.budget_sparsity(model, scores, 0.0)
    zero = sum(int((s.score == 0).sum()) for s in scores.values())
    assert zero >= 4 and choice.removed == zero == brute_force_count(model, scores, 0.0)


def test_huge_budget_removes_all_but_one_weight(scored):
    model, _, scores = scored
    choice = ecprune.budget_sparsity(model, scores, 1e9)
    assert choice.removed == choice.total - 1


def test_prune_to_budget_prunes_exactly_the_chosen_count_and_reports_it(scored):
    model, x, scores = scored
    budget = sorted_relative_prefix(scores)[20].item() * 1.000001
    choice = ecprune.budget_sparsity(model, scores, budget)
    report = ecprune.prune_to_budget(model, x, budget)
    assert report.total - report.kept == choice.removed == 21
    assert report.relative_predicted_error == pytest.approx(choice.relative_predicted_error,
                                                            rel=1e-12)


def test_budget_counts_weights_already_masked(scored):
    model, x, _ = scored
    with torch.no_grad():
        torch_prune.custom_from_mask(model[0], "weight", torch.rand(5, 3) > 0.5)
    masked = int((model[0].weight_mask == 0).sum())
    scores = ecprune.importance(model, x)
    prefix = sorted_relative_prefix(scores)  # masked weights score 0 and come first
    budget = ((prefix[masked + 5] + prefix[masked + 6]) / 2).item()
    choice = ecprune.budget_sparsity(model, scores, budget)
    assert choice.removed == masked + 6 == brute_force_count(model, scores, budget)


def test_budget_rejects_methods_without_an_error_prediction(scored):
    model, x, _ = scored
    scores = ecprune.importance(model, x, "magnitude")
    with pytest.raises(ValueError, match="'magnitude' does not predict an output error"):
        ecprune.budget_sparsity(model, scores, 0.1)


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf")])
def test_budget_rejects_bad_values(scored, bad):
    model, _, scores = scored
    with pytest.raises(ValueError, match="'error_budget' parameter must be a finite float >= 0"):
        ecprune.budget_sparsity(model, scores, bad)


def test_budget_rejects_non_numbers(scored):
    model, _, scores = scored
    with pytest.raises(TypeError, match=r"Got '0\.1' of type str"):
        ecprune.budget_sparsity(model, scores, "0.1")


def test_output_error_equals_direct_computation(scored):
    model, x, _ = scored
    pruned = copy.deepcopy(model)
    ecprune.prune(pruned, x, 0.5)
    with torch.no_grad():
        y, y_pruned = model(x), pruned(x)
    measured = ecprune.output_error(model, pruned, x, chunk_size=7)
    expected = (y - y_pruned).square().sum(1).mean()
    assert measured.count == 64
    assert measured.mean_sq_error == pytest.approx(expected.item(), rel=1e-12)
    assert measured.relative == pytest.approx((expected / y.square().sum(1).mean()).item(),
                                              rel=1e-12)


def test_measured_error_is_close_to_the_prediction_for_one_tiny_removal():
    # One removal whose downstream is linear: the prediction is exact (the paper's oracle).
    model = mlp([3, 4, 2], nn.Tanh, seed=5)
    x = torch.randn(50, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    pruned = copy.deepcopy(model)
    scores = ecprune.importance(model, x)
    only_last = ecprune.Importances({"2": scores["2"]}, method="ecp", seconds=0,
                                    mean_output_sq=scores.mean_output_sq)
    report = ecprune.prune_by_importance(pruned, only_last, 1 / 8)
    measured = ecprune.output_error(model, pruned, x)
    assert measured.relative == pytest.approx(report.relative_predicted_error, rel=1e-9)
