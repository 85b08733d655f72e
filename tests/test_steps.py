"""Iterative pruning (steps=k): schedule, equivalence with repeated prunes, atomicity."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from torch.nn.utils import prune as torch_prune

import ecprune
from ecprune.api import step_sparsities
from ecprune.engine.layers import keep_mask, select_layers
from ecprune.masking.selection import select
from ecprune.reconstruct.refit import refit_layers
from ecprune.reconstruct.sparsegpt import sparsegpt_layers


def states_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_schedule_is_geometric_in_the_kept_fraction_and_ends_exactly():
    targets = step_sparsities(0.0, 0.9, 4)
    kept = [1 - t for t in targets]
    ratios = [kept[0]] + [b / a for a, b in itertools.pairwise(kept)]
    assert targets[-1] == 0.9 and ratios == pytest.approx([0.1 ** 0.25] * 4, rel=1e-12)
    assert step_sparsities(0.5, 0.75, 2) == pytest.approx([1 - 0.5 * 0.5 ** 0.5, 0.75])
    assert step_sparsities(0.5, 0.5, 3) == [0.5]


@pytest.mark.parametrize("method", ["ecp", "magnitude", "wanda"])
def test_steps_equal_repeated_prunes_on_the_schedule(tiny, method):
    model, x = tiny
    manual = copy.deepcopy(model)
    report = ecprune.prune(model, x, 0.8, method=method, steps=3)
    for target in step_sparsities(0.0, 0.8, 3):
        ecprune.prune(manual, x, target, method=method)
    assert states_equal(model, manual) and report.steps == 3


def test_steps_one_of_the_reconstructions_equals_their_pieces(tiny):
    model, x = tiny
    one = copy.deepcopy(model)
    ecprune.prune(one, x, 0.6, method="ecp-refit", steps=1)
    pieces = copy.deepcopy(model)
    scores = ecprune.importance(pieces, x, "ecp-refit")
    ecprune.prune_by_importance(pieces, scores, 0.6)
    layers = select_layers(pieces, None)
    refit_layers(pieces, model, layers, lambda: [ecprune.engine.batching.Batch(x, None)],
                 grams=scores.grams)
    assert states_equal(one, pieces)

    one = copy.deepcopy(model)
    ecprune.prune(one, x, 0.6, method="sparsegpt", steps=1)
    pieces = copy.deepcopy(model)
    layers = select_layers(pieces, None)
    scores = ecprune.importance(pieces, x, "sparsegpt")
    present = {name: keep_mask(layer) for name, layer in layers.items()}
    chosen = select({n: r.score for n, r in scores.items()}, present, 0.6, "global").newly_pruned
    counts = {name: int(chosen[name].sum()) for name in layers}
    sparsegpt_layers(pieces, layers, counts, lambda: [ecprune.engine.batching.Batch(x, None)],
                     grams=scores.grams)
    assert states_equal(one, pieces)


def test_iterative_ecp_predicts_the_sum_over_its_steps(tiny):
    model, x = tiny
    report = ecprune.prune(model, x, 0.6, method="ecp", steps=2)
    assert report.predicted_error == pytest.approx(sum(r.predicted_error for r in report.layers.values()))
    assert report.seconds >= report.scoring_seconds > 0


def test_steps_need_data_that_can_be_streamed_again(tiny):
    model, x = tiny
    with pytest.raises(ValueError, match=r"steps=2 streams the data several times.*one-shot generator"):
        ecprune.prune(model, (x[k : k + 8] for k in range(0, 40, 8)), 0.5, steps=2)
    with pytest.raises(ValueError, match=r"method='sparsegpt' with steps=1 streams the data"):
        ecprune.prune(model, iter([x]), 0.5, method="sparsegpt")
    assert not torch_prune.is_pruned(model)


@pytest.mark.parametrize("steps", [0, 1.5, True])
def test_bad_steps(tiny, steps):
    model, x = tiny
    with pytest.raises(ValueError, match=rf"'steps' parameter of prune must be an int >= 1. Got {steps}"):
        ecprune.prune(model, x, 0.5, steps=steps)


@pytest.mark.parametrize("method", ["ecp", "ecp-refit", "sparsegpt", "sparsegpt-refit"])
def test_a_failure_in_a_later_step_leaves_no_trace(tiny, monkeypatch, method):
    model, x = tiny
    state = copy.deepcopy(model.state_dict())
    calls = []
    original = ecprune.api.score

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("injected failure")
        return original(*args, **kwargs)

    monkeypatch.setattr(ecprune.api, "score", failing)
    with pytest.raises(RuntimeError, match="injected"):
        ecprune.prune(model, x, 0.7, method=method, steps=3, add_bias=True)
    assert not torch_prune.is_pruned(model) and len(calls) == 3
    assert model.state_dict().keys() == state.keys()
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_failure_after_adding_biases_removes_them(monkeypatch):
    model = torch.nn.Sequential(torch.nn.Linear(3, 4, bias=False), torch.nn.Tanh(),
                                torch.nn.Linear(4, 2)).double()
    x = torch.randn(20, 3, dtype=torch.float64)
    monkeypatch.setattr(ecprune.methods.updates, "refit_layers", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        ecprune.prune(model, x, 0.5, method="ecp-refit", add_bias=True)
    assert model[0].bias is None and not torch_prune.is_pruned(model)
