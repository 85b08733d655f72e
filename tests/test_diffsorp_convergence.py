"""The convergence study of the diffusion-sorption protocol: the rule that picks the budget,
and scripts/diffsorp_convergence.py --quick end to end (rows, resumption, figure)."""

from __future__ import annotations

import importlib.util
import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from ecprune.experiments import training
from ecprune.experiments.convergence import (
    FIELDS,
    STUDY,
    STUDY_QUICK,
    Study,
    converged_budget,
    convergence_table,
    run_study,
    saturated_budget,
    summarise,
)
from ecprune.experiments.diffsorp import ARCHITECTURES, DIFFSORP
from ecprune.experiments.store import read_rows

pytest.importorskip("scipy")
SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "diffsorp_convergence.py"


def script():
    spec = importlib.util.spec_from_file_location("diffsorp_convergence", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("means", "expected"), [
    ({30: 1.0, 60: 0.5, 120: 0.48, 240: 0.47}, 60),     # -52 %, then -4 %
    ({30: 1.0, 60: 0.98}, 30),                           # converged at once
    ({30: 1.0, 60: 0.5, 120: 0.3}, None),                # still falling at the last doubling
    ({30: 1.0, 60: 0.5, 100: 0.49}, None),               # 100 is no doubling of 60
    ({30: 1.0, 60: 1.04}, 30),                           # a rise counts by its size too
    ({30: 1.0, 60: 1.06, 120: 1.07}, 60),
    ({30: 1.0, 60: 0.95}, None),                         # exactly 5 %: not below it
    ({60: 0.5, 30: 1.0, 120: 0.49}, 60),                 # order of the dict does not matter
    ({}, None),
])
def test_the_rule_is_the_smallest_budget_whose_doubling_changes_the_mean_by_under_5_percent(
        means, expected):
    assert converged_budget(means) == expected


@pytest.mark.parametrize(("means", "expected"), [
    ({30: 1.0, 60: 0.5, 120: 0.48}, 60),                 # -52 %, then -4 %
    ({30: 1.0, 60: 0.5, 120: 0.6}, 60),                  # a rise: doubling no longer pays
    ({30: 1.0, 60: 1.5}, 30),
    ({30: 1.0, 60: 0.5, 120: 0.3}, None),                # still falling by more than 5 %
    ({30: 1.0, 60: 0.95}, None),                         # exactly 5 % lower: still pays
    ({30: 1.0, 60: 0.5, 100: 0.6}, None),                # 100 is no doubling of 60
])
def test_saturation_is_the_first_budget_whose_doubling_lowers_the_mean_by_under_5_percent(
        means, expected):
    assert saturated_budget(means) == expected


def test_the_tolerance_is_relative_to_the_loss_at_the_smaller_budget():
    assert converged_budget({10: 1e-5, 20: 0.91e-5}, tolerance=0.1) == 10
    assert converged_budget({10: 1e-5, 20: 0.89e-5}, tolerance=0.1) is None


def _row(arch, noise, seed, epochs, loss, clean=""):
    return {"arch": arch, "noise": f"{noise:g}", "seed": str(seed), "epochs": str(epochs),
            "test_loss": str(loss), "test_loss_clean": str(clean)}


def test_the_summary_averages_over_the_seeds_and_skips_incomplete_budgets():
    study = Study(budgets=(30, 60, 120), seeds=(0, 1), noise=(0.0, 0.01))
    arch = "68-32-32-32-1"
    rows = [_row(arch, 0.01, s, e, loss) for e, losses in ((30, (1.0, 3.0)), (60, (1.0, 1.0)),
                                                           (120, (0.99, 0.99)))
            for s, loss in enumerate(losses)]
    rows += [_row(arch, 0.0, 0, 30, 1.0), _row(arch, 0.0, 1, 30, 1.0),
             _row(arch, 0.0, 0, 60, 1.0),                     # seed 1 of 60 epochs missing
             _row(arch, 0.0, 5, 60, 1.0), _row(arch, 0.0, 0, 15, 9.0)]  # not in the study
    found = {(c.arch, c.noise): c for c in summarise(rows, study)}
    assert found[(arch, 0.01)].means == {30: 2.0, 60: 1.0, 120: 0.99}
    assert found[(arch, 0.01)].budget == 60
    assert found[(arch, 0.01)].changes() == pytest.approx({30: -0.5, 60: -0.01})
    assert found[(arch, 0.0)].means == {30: 1.0} and found[(arch, 0.0)].budget is None
    assert found[(arch, 0.01)].saturated == 60
    table = convergence_table(study, rows)
    assert f"| {arch} | 0.01 | 60 | 60 | - | - | 30->60: -50.0%, 60->120: -1.0% | - |" in table
    assert f"| {arch} | 0 | none reached | none reached | - | - | - | - |" in table


def test_the_full_study_is_the_issues():
    assert STUDY.budgets == (30, 60, 120, 240, 480) and STUDY.seeds == (0, 1, 2)
    assert STUDY.noise == (0.0, 0.005, 0.01) and STUDY.tolerance == 0.05
    assert STUDY.architectures == ARCHITECTURES and STUDY.config is DIFFSORP
    assert len(STUDY.plan()) == 2 * 3 * 3 * 5
    assert [item[3] for item in STUDY.plan()[:18]] == [30] * 18  # budget-major


@pytest.mark.parametrize(("change", "message"), [
    ({"budgets": (0, 30)}, "Budgets must be positive"),
    ({"seeds": (-1,)}, "Seeds must be non-negative"),
    ({"noise": (-0.01,)}, "Noise levels must be non-negative"),
    ({"tolerance": 0.0}, r"tolerance must lie in \(0, 1\)"),
])
def test_bad_studies_are_refused(change, message):
    with pytest.raises(ValueError, match=message):
        replace(STUDY, **change)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """The --quick study: 1 + 2 epochs of both architectures, about 10 s."""
    out = tmp_path_factory.mktemp("convergence")
    assert script().main(["--quick", "--out", str(out), "--threads", "1"]) == 0
    return out


def test_quick_writes_one_row_per_network(quick):
    rows = read_rows(quick / "diffsorp-convergence-quick.csv")
    assert tuple(rows[0]) == FIELDS
    assert [(r["arch"], r["noise"], r["seed"], r["epochs"]) for r in rows] == [
        (arch, "0", "0", epochs) for epochs in ("1", "2") for arch in
        ("68-32-32-32-1", "68-64-32-32-16-16-1")]
    assert {(r["batch_size"], r["lr"], r["lr_decay"]) for r in rows} == {("128", "0.001", "0.1")}
    for row in rows:
        assert row["test_loss"] == row["test_loss_clean"]  # d = 0: the same targets
        assert 0 < float(row["test_loss"]) < 0.01 and 0 < float(row["train_loss"]) < 0.01
        assert float(row["seconds"]) > 0


def test_quick_draws_the_figure_and_the_table(quick, capsys):
    assert (quick / "diffsorp_convergence_study_quick.png").stat().st_size > 10_000
    table = (quick / "diffsorp_convergence_study_quick.md").read_text()
    assert "| 68-64-32-32-16-16-1 | 0 |" in table and "1->2:" in table


def test_a_rerun_trains_nothing_and_a_killed_one_only_the_missing_network(quick, tmp_path,
                                                                          capsys):
    csv = quick / "diffsorp-convergence-quick.csv"
    before = csv.read_bytes()
    capsys.readouterr()
    assert script().main(["--quick", "--out", str(quick), "--threads", "1"]) == 0
    assert "0 networks trained, 4 in the study" in capsys.readouterr().out
    assert csv.read_bytes() == before
    lines = before.decode().splitlines(keepends=True)
    (tmp_path / csv.name).write_text("".join(lines[:-1]) + lines[-1][:9])  # killed mid-row
    assert script().main(["--quick", "--out", str(tmp_path), "--threads", "1"]) == 0
    assert "1 networks trained, 4 in the study" in capsys.readouterr().out
    resumed, reference = read_rows(tmp_path / csv.name), read_rows(csv)
    assert len(resumed) == len(reference)
    for mine, theirs in zip(resumed, reference, strict=True):
        assert float(mine["test_loss"]) == pytest.approx(float(theirs["test_loss"]), rel=1e-5)
    assert not (tmp_path / "checkpoints").exists()


def test_rows_of_other_training_settings_and_bad_options_exit_2(quick, tmp_path, capsys):
    shutil.copy(quick / "diffsorp-convergence-quick.csv", tmp_path)
    path = tmp_path / "diffsorp-convergence-quick.csv"
    path.write_text(path.read_text().replace(",0.001,0.1,", ",0.002,0.1,"))
    assert script().main(["--quick", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert re.search(r"line 2: trained with .*'lr': '0.002'.* another --out", err)
    assert script().main(["--quick", "--out", str(tmp_path), "--epochs", "0", "1"]) == 2
    assert "Budgets must be positive numbers of epochs; got (0, 1)." in capsys.readouterr().err


def test_a_network_killed_inside_its_training_resumes_from_its_epoch_checkpoint(
        quick, tmp_path, monkeypatch):
    study = replace(STUDY_QUICK, config=replace(DIFFSORP, architectures=ARCHITECTURES[:1]),
                    budgets=(2,))
    save = training._save_checkpoint

    def save_then_die(model, optimizer, epoch, path):
        save(model, optimizer, epoch, path)
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "_save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_study(study, out=tmp_path)
    (checkpoint,) = tmp_path.glob("checkpoints/diffsorp-convergence-quick/*/dense-training.pt")
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 1
    assert read_rows(tmp_path / "diffsorp-convergence-quick.csv") == []
    monkeypatch.setattr(training, "_save_checkpoint", save)
    assert run_study(study, out=tmp_path).computed == 1
    (row,) = read_rows(tmp_path / "diffsorp-convergence-quick.csv")
    (reference,) = [r for r in read_rows(quick / "diffsorp-convergence-quick.csv")
                    if (r["arch"], r["epochs"]) == (row["arch"], "2")]
    assert float(row["test_loss"]) == pytest.approx(float(reference["test_loss"]), rel=1e-5)
    assert not (tmp_path / "checkpoints").exists()
