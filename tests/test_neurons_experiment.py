"""Issue 16's side-by-side experiment: Torch-Pruning's importances remove exactly the units
ecprune removes, every structured method ends at the same widths, the unstructured baseline at
their weight count, and a killed run resumes to the same rows."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch_pruning as tp

from ecprune.experiments import EXPERIMENTS
from ecprune.experiments.config import weight_count
from ecprune.experiments.job import FULLY_CONNECTED
from ecprune.experiments.neurons import (
    NEURONS,
    NEURONS_DIFFSORP,
    STRUCTURED,
    UNSTRUCTURED,
    model_widths,
    prune_units,
    unit_counts,
    unit_widths,
    weight_ratio,
)
from ecprune.experiments.peers import (
    PEERS,
    _mean_squared_sample_gradients,
    prune_with_torch_pruning,
)
from ecprune.experiments.runner import run_experiment
from ecprune.experiments.stacked import mlp, stacked_losses
from ecprune.experiments.store import read_rows
from tiny_experiment import tiny_split

TINY = dataclasses.replace(NEURONS, name="tiny-neurons", architectures=((5, 8, 8, 3),),
                           seeds=(0,), ratios=(0.5, 0.875), epochs=2, finetune_epochs=1,
                           batch_size=16)


def test_registered_grids_are_the_issue_grids():
    assert NEURONS.architectures == ((784, 64, 64, 10), (784, 512, 512, 10))
    assert NEURONS_DIFFSORP.architectures == ((68, 64, 32, 32, 16, 16, 1),)
    for config in (NEURONS, NEURONS_DIFFSORP):
        assert config.ratios == (0.25, 0.5, 0.75, 0.875) and config.seeds == (0, 1, 2)
        assert config.finetune and config.finetune_epochs == 3 and config.fully_connected
        assert set(config.structured) == {"ecp", "ecp-refit", "obs", "magnitude", "random",
                                          "tp-magnitude", "tp-taylor", "tp-hessian"}
    assert NEURONS.epochs == 15 and NEURONS.loss == "cross_entropy"
    assert NEURONS_DIFFSORP.epochs == 30 and NEURONS_DIFFSORP.loss == "mse"
    for name in ("neurons", "neurons-diffsorp"):
        quick = EXPERIMENTS[name].quick
        assert quick.structured == NEURONS.structured and quick.unstructured
        assert len(quick.architectures) == len(quick.seeds) == 1 and len(quick.ratios) == 2
    with pytest.raises(ValueError, match=r"Unknown structured method\(s\) \['tp-lamp'\]"):
        dataclasses.replace(NEURONS, structured=("ecp", "tp-lamp"))


def test_widths_counts_and_weight_ratio():
    assert unit_counts((784, 512, 512, 10), 0.75) == {"0": 384, "2": 384}
    assert unit_widths((784, 64, 64, 10), 0.25) == (784, 48, 48, 10)
    assert sum(unit_counts((5, 7, 3, 2), 0.5).values()) == round(0.5 * (7 + 3))
    for widths in ((784, 64, 64, 10), (68, 64, 32, 32, 16, 16, 1), (5, 7, 3, 2)):
        for fraction in (0.25, 0.5, 0.75, 0.875):
            total = weight_count(widths)
            kept = weight_count(unit_widths(widths, fraction))
            assert round(weight_ratio(widths, fraction) * total) == total - kept


@pytest.mark.parametrize("method", PEERS)
@pytest.mark.parametrize("counts", [{"0": 3, "2": 1}, {"0": 0, "2": 4}, {"0": 5, "2": 5}])
def test_peer_removes_exactly_the_requested_units(method, counts):
    model = mlp((5, 7, 6, 3), seed=0)
    split = tiny_split()
    output = copy.deepcopy(model[4])
    prune_with_torch_pruning(model, split.x_train, split.y_train, counts, method=method,
                             loss="cross_entropy")
    assert model_widths(model) == (5, 7 - counts["0"], 6 - counts["2"], 3)
    assert model[1].weight.numel() == model[3].weight.numel() == 1
    assert model[4].out_features == 3 and torch.equal(model[4].bias, output.bias)
    assert model(split.x_test).shape == (len(split.x_test), 3)


def test_peer_rejects_counts_of_the_output_layer():
    split = tiny_split()
    with pytest.raises(ValueError, match=r"counts names \['4'\], which are not hidden"):
        prune_with_torch_pruning(mlp((5, 7, 6, 3), seed=0), split.x_train, split.y_train,
                                 {"4": 1}, method="tp-taylor", loss="cross_entropy")


def test_hessian_uses_the_mean_of_squared_per_sample_gradients():
    model = mlp((5, 4, 3), seed=1)
    split = tiny_split()
    x, y = split.x_train[:20], split.y_train[:20]
    mean_sq = _mean_squared_sample_gradients(model, x, y, "cross_entropy")
    reference = {name: torch.zeros_like(p) for name, p in model.named_parameters()}
    for xi, yi in zip(x, y, strict=True):
        model.zero_grad()
        stacked_losses(model(xi[None])[None], yi[None], "cross_entropy").sum().backward()
        for name, p in model.named_parameters():
            reference[name] += p.grad.square() / len(x)
    for name, value in reference.items():
        torch.testing.assert_close(mean_sq[name], value, rtol=1e-5, atol=1e-7)
    # Torch-Pruning 1.6's own per-sample loop keeps only the last sample's square:
    scorer = tp.importance.HessianImportance()
    for xi, yi in zip(x[:2], y[:2], strict=True):
        model.zero_grad()
        stacked_losses(model(xi[None])[None], yi[None], "cross_entropy").sum().backward()
        scorer.accumulate_grad(model)
    last = model[0].weight.grad.square()
    assert torch.equal(scorer._accu_grad[model[0].weight], last)


@pytest.mark.parametrize("label", STRUCTURED)
def test_every_structured_method_ends_at_the_same_widths(label):
    model = mlp((5, 8, 6, 3), seed=0)
    prune_units(model, tiny_split(), 0.5, label, seed=0, loss="cross_entropy")
    assert model_widths(model) == unit_widths((5, 8, 6, 3), 0.5) == (5, 4, 3, 3)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("neurons")
    return run_experiment(TINY, tiny_split, out=out, progress=False)


def test_grid_rows_have_the_widths_weight_count(tiny_run):
    rows = read_rows(tiny_run.results)
    labels = [*STRUCTURED, UNSTRUCTURED]
    assert tiny_run.cells == tiny_run.computed == len(rows) == 1 + 2 * 2 * len(labels) + 2
    for row in rows[1:]:
        fraction = float(row["ratio"])
        assert int(row["kept"]) == weight_count(unit_widths((5, 8, 8, 3), fraction)), row
        epochs = 2 if row["phase"] == "prune" else 3
        assert int(row["epochs"]) == epochs and float(row["test_loss"]) > 0
    assert {r["method"] for r in rows} == {"dense", FULLY_CONNECTED, *labels}


def test_killed_run_resumes_to_the_same_rows(tmp_path, tiny_run):
    written = []

    def die_on_fourth(rows):
        written.append(rows)
        if len(written) == 4:  # dense, prune at 0.5, finetune at 0.5, prune at 0.875
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_experiment(TINY, tiny_split, out=tmp_path, progress=False, on_rows=die_on_fourth)
    assert list(tmp_path.glob("checkpoints/**/units-tp-hessian-0.875.pt"))
    report = run_experiment(TINY, tiny_split, out=tmp_path, progress=False)
    assert 0 < report.computed < report.cells

    def losses(path):
        return sorted((r["method"], r["ratio"], r["phase"], r["test_loss"])
                      for r in read_rows(path))

    assert losses(report.results) == losses(tiny_run.results)
    assert not (tmp_path / "checkpoints").exists()
