"""The beyond-the-paper grid (issue 9) in the experiment framework: method labels, per-ratio
pruning with checkpoints, prune-only grids, the cost in gradient passes."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
from torch.utils.data import TensorDataset

import ecprune
from ecprune.experiments import EXPERIMENTS
from ecprune.experiments.beyond import BEYOND_MNIST, BEYOND_MNIST_QUICK
from ecprune.experiments.config import weight_count
from ecprune.experiments.job import Job, JobRunner, Pruned, Split
from ecprune.experiments.methods import MethodSpec, parse_label
from ecprune.experiments.runner import run_experiment
from ecprune.experiments.store import TIMING_FIELDS, CsvStore, ResultsStore, read_rows
from ecprune.experiments.summary import cost_table, experiment_report
from tiny_experiment import tiny_split

# The quick grid's labels on a network the tiny blobs fit, so the test takes seconds.
TINY_BEYOND = replace(BEYOND_MNIST_QUICK, name="tiny-beyond", architectures=((5, 6, 4, 3),),
                      batch_size=16, epochs=3)
ISSUE_LABELS = {"ecp", "wanda", "sparsegpt", "ecp-refit", "ecp-steps10"}


def test_labels_parse_to_the_library_call():
    assert parse_label("ecp") == MethodSpec("ecp")
    assert parse_label("ecp-steps10") == MethodSpec("ecp", steps=10)
    assert parse_label("ecp-refit-steps3") == MethodSpec("ecp-refit", steps=3)
    assert parse_label("ecp-refit-sensitivity") == MethodSpec(
        "ecp-refit", options=(("refit_weighting", "sensitivity"),))
    assert parse_label("sparsegpt-refit-steps2") == MethodSpec("sparsegpt-refit", steps=2)
    for bad in ("obd", "ecp-steps0", "ecp-steps", "obd-steps3"):
        assert parse_label(bad) is None
    with pytest.raises(ValueError, match=r"Unknown method\(s\) \['ecp-steps0'\]"):
        replace(BEYOND_MNIST, methods=("ecp", "ecp-steps0"))
    assert parse_label("ecp").scores_once and not parse_label("ecp-steps10").scores_once
    assert not parse_label("ecp-refit").scores_once


def test_beyond_mnist_is_the_issue_grid():
    full = EXPERIMENTS["beyond-mnist"].full
    assert full.architectures == ((784, 64, 64, 10),) and full.seeds == (0, 1, 2, 3, 4)
    assert full.ratios == (0.5, 0.7, 0.8, 0.9, 0.95) and full.epochs == 15
    assert set(full.methods) >= ISSUE_LABELS and not full.finetune
    assert EXPERIMENTS["beyond-mnist"].quick.methods == full.methods


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("beyond")
    return out, run_experiment(TINY_BEYOND, tiny_split, out=out, progress=False)


def test_quick_grid_is_prune_only_with_exact_counts(quick_run):
    _, report = quick_run
    rows = read_rows(report.results)
    assert report.cells == report.computed == len(rows) == 1 + len(TINY_BEYOND.methods) * 2
    assert {r["phase"] for r in rows} == {"dense", "prune"}
    total = weight_count((5, 6, 4, 3))
    for row in rows[1:]:
        assert int(row["kept"]) == round((1 - float(row["ratio"])) * total), row["method"]
        assert float(row["score_seconds"]) > 0
    units = [t["unit"] for t in read_rows(report.timings)]
    assert units.count("gradient-pass") == 1 and "prune-ecp-steps10-0.9" in units


def test_killed_run_resumes_from_the_pruned_checkpoints(tmp_path, quick_run):
    written = []

    def die_on_fifth(rows):
        written.append(rows)
        if len(written) == 5:  # dense, ecp, wanda, sparsegpt, ecp-refit
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_experiment(TINY_BEYOND, tiny_split, out=tmp_path, progress=False,
                       on_rows=die_on_fifth)
    assert list(tmp_path.glob("checkpoints/**/pruned-ecp-refit-0.9.pt"))
    run_experiment(TINY_BEYOND, tiny_split, out=tmp_path, progress=False)

    def losses(path):
        return sorted((r["method"], r["ratio"], r["test_loss"]) for r in read_rows(path))

    assert losses(tmp_path / "tiny-beyond.csv") == losses(quick_run[1].results)


def test_pruned_network_is_the_library_call_and_survives_its_checkpoint(tmp_path):
    split = tiny_split()
    runner = JobRunner(TINY_BEYOND, Job("", (5, 6, 4, 3), 0), split,
                       results=ResultsStore(tmp_path / "r.csv"),
                       timings=CsvStore(tmp_path / "t.csv", TIMING_FIELDS),
                       checkpoints=tmp_path / "checkpoints", done=set())
    runner.checkpoints.mkdir(parents=True)
    dense = runner.dense()
    for label, kwargs in (("ecp-steps10", {"method": "ecp", "steps": 10}),
                          ("ecp-refit-sensitivity", {"method": "ecp-refit",
                                                     "refit_weighting": "sensitivity"})):
        expected = copy.deepcopy(dense)
        ecprune.prune(expected, TensorDataset(split.x_train, split.y_train), 0.8, seed=0,
                      progress=False, **kwargs)
        first, seconds = Pruned(runner, dense, label).get(0.8)
        again, same_seconds = Pruned(runner, dense, label).get(0.8)  # from the checkpoint
        assert same_seconds == seconds > 0
        for model in (first, again):
            for name, tensor in expected.state_dict().items():
                torch.testing.assert_close(model.state_dict()[name], tensor, rtol=0, atol=0)


def test_cost_is_seconds_over_the_same_jobs_gradient_pass(quick_run):
    rows = [{"variant": "", "arch": "a", "seed": str(s), "method": "m", "ratio": "0.5",
             "phase": "prune", "score_seconds": str(6.0 * (s + 1))} for s in range(2)]
    timings = [{"variant": "", "arch": "a", "seed": str(s), "unit": "gradient-pass",
                "seconds": str(2.0 * (s + 1))} for s in range(2)]
    assert cost_table(rows, timings).splitlines()[-1] == "| a | m | 3.0 |"
    again = [{**timings[0], "seconds": "4.0"}]  # seed 0's job resumed: mean pass 3 s
    assert cost_table(rows, timings + again).splitlines()[-1] == "| a | m | 2.5 |"
    assert cost_table(rows, []) == ""
    _, report = quick_run
    text = experiment_report(read_rows(report.results), read_rows(report.timings))
    assert "Pruning time in gradient passes" in text and "prune + fine-tune" not in text


def test_beyond_diffsorp_is_the_issue_grid():
    full = EXPERIMENTS["beyond-diffsorp"].full
    assert full.variants == ("noise=0.005",) and full.loss == "mse" and not full.finetune
    assert (68, 64, 32, 32, 16, 16, 1) in full.architectures
    assert full.methods == BEYOND_MNIST.methods and full.ratios == BEYOND_MNIST.ratios


def regression_split(variant: str = "") -> Split:
    """A smooth function of 5 inputs: a regression task for the MSE path."""
    del variant
    x = torch.randn(120, 5, generator=torch.Generator().manual_seed(0))
    y = torch.sin(x[:, :1]) + 0.5 * x[:, 1:2] * x[:, 2:3]
    return Split(x[:80], y[:80], x[80:], y[80:])


def test_regression_grid_prunes_every_label(tmp_path):
    config = replace(TINY_BEYOND, architectures=((5, 8, 4, 1),), loss="mse", ratios=(0.7,))
    report = run_experiment(config, regression_split, out=tmp_path, progress=False)
    rows = read_rows(report.results)
    assert report.computed == 1 + len(config.methods)
    assert all(row["test_accuracy"] == "" and float(row["test_loss"]) > 0 for row in rows)
