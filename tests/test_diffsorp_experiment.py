"""The diffusion-sorption experiment: its grid, noise variants, and the --quick run end to end
(results with the clean test loss, resume after a kill, the report's figures, the snapshot
networks, the convergence study's networks)."""

from __future__ import annotations

import shutil
from dataclasses import replace

import pytest
import torch

from ecprune.cli import main
from ecprune.data.diffsorp import NOISE_LEVELS
from ecprune.experiments import EXPERIMENTS
from ecprune.experiments.config import PAPER_METHODS, PAPER_RATIOS, PAPER_SEEDS
from ecprune.experiments.convergence import Study, run_study
from ecprune.experiments.diffsorp import (
    CONVERGED_EPOCHS,
    DIFFSORP,
    DIFFSORP_QUICK,
    DIFFSORP_SHORT,
    load_dataset,
    load_diffsorp_split,
    noise_variant,
    pruned_predictions,
    variant_noise,
)
from ecprune.experiments.job import Job, job_cells
from ecprune.experiments.store import read_rows

pytest.importorskip("scipy")


def test_the_registered_grid_is_the_papers():
    full = EXPERIMENTS["diffsorp"].full
    assert full is DIFFSORP and EXPERIMENTS["diffsorp"].quick is DIFFSORP_QUICK
    assert full.architectures == ((68, 32, 32, 32, 1), (68, 64, 32, 32, 16, 16, 1))
    assert (full.methods, full.ratios, full.seeds) == (PAPER_METHODS, PAPER_RATIOS, PAPER_SEEDS)
    assert [variant_noise(v) for v in full.variants] == list(NOISE_LEVELS) == [0, 0.005, 0.01]
    assert full.loss == "mse" and full.fully_connected
    assert EXPERIMENTS["mnist"].figures is None and EXPERIMENTS["diffsorp"].figures is not None


def test_the_grid_trains_and_fine_tunes_for_the_studys_epochs():
    """The convergence study's schedule: E epochs of training and E of fine-tuning (the
    paper's protocol); the first grid's 30 + 10 differ from it in the epochs only."""
    assert DIFFSORP.epochs == DIFFSORP.finetune_epochs == CONVERGED_EPOCHS > 30
    assert DIFFSORP.baseline_epochs == 2 * CONVERGED_EPOCHS
    assert (DIFFSORP_SHORT.epochs, DIFFSORP_SHORT.finetune_epochs) == (30, 10)
    assert replace(DIFFSORP_SHORT, epochs=CONVERGED_EPOCHS,
                   finetune_epochs=CONVERGED_EPOCHS) == DIFFSORP
    assert EXPERIMENTS["beyond-diffsorp"].full.epochs == CONVERGED_EPOCHS
    assert EXPERIMENTS["neurons-diffsorp"].full.epochs == 30  # its results predate the study


@pytest.mark.parametrize("noise", [0.0, 0.005, 0.01, 0.25])
def test_noise_variant_round_trip(noise):
    assert variant_noise(noise_variant(noise)) == noise


@pytest.mark.parametrize("variant", ["", "0.01", "noise=", "noise=abc", "d=0.01"])
def test_unknown_variant_is_named(variant):
    with pytest.raises(ValueError, match="Unknown diffusion-sorption variant"):
        variant_noise(variant)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """SLOW (about 20 s on 2 loaded cores once the PDE data are cached): the --quick run."""
    out = tmp_path_factory.mktemp("diffsorp-quick")
    assert main(["reproduce", "diffsorp", "--quick", "--out", str(out), "--threads", "1",
                 "--no-progress", "--figures", str(out)]) == 0
    return out


def _values(rows, metric="test_loss"):
    return {tuple(r[k] for k in ("variant", "method", "ratio", "phase")): float(r[metric])
            for r in rows}


@pytest.mark.slow
def test_quick_run_writes_the_grid(quick_run):
    rows = read_rows(quick_run / "diffsorp.csv")
    per_job = len(job_cells(DIFFSORP_QUICK))
    assert len(rows) == len(_values(rows)) == 2 * per_job == 2 * (1 + 2 * 7 * 3 + 3)
    assert {r["variant"] for r in rows} == {"noise=0", "noise=0.01"}
    assert all(r["test_accuracy"] == "" for r in rows)  # regression: no accuracy
    split = load_diffsorp_split("noise=0")
    baseline = split.y_test.var().item()  # the loss of predicting the mean
    dense = _values(rows)[("noise=0", "dense", "0", "dense")]
    assert dense < baseline / 10  # one epoch of Adam learns most of the variation


@pytest.mark.slow
def test_every_cell_has_its_loss_against_the_clean_targets(quick_run):
    rows = read_rows(quick_run / "diffsorp.csv")
    assert {r["method"] for r in rows} == {"dense", *DIFFSORP_QUICK.methods, "fully-connected"}
    assert all(float(r["test_loss_clean"]) > 0 for r in rows)
    assert all(r["test_loss_clean"] == r["test_loss"] for r in rows if r["variant"] == "noise=0")
    clean = _values(rows, "test_loss_clean")
    key = ("noise=0.01", "dense", "0", "dense")
    # The test noise is independent of the prediction: it adds its variance d^2/3 (up to the
    # sampling of the cross term over 12,800 test rows, a few per cent of it here).
    assert _values(rows)[key] - clean[key] == pytest.approx(0.01**2 / 3, rel=0.1)
    split = load_diffsorp_split("noise=0.01")
    assert torch.equal(split.y_test_clean, load_dataset("noise=0.01").test_targets_clean)


@pytest.mark.slow
def test_the_convergence_studys_network_is_the_runs_dense_network(quick_run, tmp_path):
    """Trained for the quick run's 1 epoch, the study's network is the run's dense one."""
    study = Study(config=replace(DIFFSORP, architectures=DIFFSORP_QUICK.architectures),
                  budgets=(DIFFSORP_QUICK.epochs,), seeds=(0,), noise=(0.01,))
    (row,) = read_rows(run_study(study, out=tmp_path).results)
    run = next(r for r in read_rows(quick_run / "diffsorp.csv")
               if (r["variant"], r["method"]) == ("noise=0.01", "dense"))
    for column in ("test_loss", "test_loss_clean"):
        assert float(row[column]) == pytest.approx(float(run[column]), rel=1e-5)


@pytest.mark.slow
def test_quick_run_resumes_after_a_kill(quick_run, tmp_path):
    """Cut the CSV inside the second job, as a kill would, and rerun: the same rows, once."""
    shutil.copy(quick_run / "diffsorp.csv", tmp_path / "diffsorp.csv")
    lines = (tmp_path / "diffsorp.csv").read_text().splitlines(keepends=True)
    keep = 1 + len(job_cells(DIFFSORP_QUICK)) + 10
    (tmp_path / "diffsorp.csv").write_text("".join(lines[:keep]) + lines[keep][:7])
    assert main(["reproduce", "diffsorp", "--quick", "--out", str(tmp_path), "--threads", "1",
                 "--no-progress"]) == 0
    resumed = read_rows(tmp_path / "diffsorp.csv")
    reference = _values(read_rows(quick_run / "diffsorp.csv"))
    assert len(resumed) == len(reference)
    for key, value in _values(resumed).items():
        assert value == pytest.approx(reference[key], rel=1e-4), key


@pytest.mark.slow
def test_report_draws_loss_figures_only(quick_run, capsys):
    assert main(["report", str(quick_run / "diffsorp.csv")]) == 0
    assert (quick_run / "diffsorp_68-64-32-32-16-16-1_loss.png").stat().st_size > 10_000
    assert (quick_run / "diffsorp_68-64-32-32-16-16-1_loss_clean.png").stat().st_size > 10_000
    assert not (quick_run / "diffsorp_68-64-32-32-16-16-1_accuracy.png").exists()
    assert (quick_run / "diffsorp_snapshot_68-64-32-32-16-16-1.png").stat().st_size > 10_000
    summary = (quick_run / "diffsorp_summary.md").read_text()
    assert "noise=0.01" in summary and "accuracy" not in summary
    assert "### Mean clean test loss, prune + fine-tune" in summary
    assert "Dense: test loss" in summary and ", clean test loss " in summary
    assert "mean clean test loss per variant (noise=0 / noise=0.01)" in summary
    capsys.readouterr()


@pytest.mark.slow
def test_snapshot_networks_are_the_runs(quick_run, tmp_path):
    """The snapshot figure's networks, retrained, give the run's test losses."""
    rows = _values(read_rows(quick_run / "diffsorp.csv"))
    split = load_diffsorp_split("noise=0.01")
    job = Job("noise=0.01", DIFFSORP_QUICK.architectures[0], 0)
    predictions = pruned_predictions(DIFFSORP_QUICK, job, split, method="ecp", ratio=0.7,
                                     workdir=tmp_path)
    mse = {k: torch.mean((v - split.y_test) ** 2).item() for k, v in predictions.items()}
    assert mse["dense"] == pytest.approx(rows[("noise=0.01", "dense", "0", "dense")], rel=1e-5)
    assert mse["prune"] == pytest.approx(rows[("noise=0.01", "ecp", "0.7", "prune")], rel=1e-5)
    # Fine-tuned alone here, stacked with 20 others in the run: equal up to float32 rounding.
    assert mse["finetune"] == pytest.approx(rows[("noise=0.01", "ecp", "0.7", "finetune")],
                                            rel=1e-3)
