"""The experiment runner on a tiny synthetic task: grid, CSV store, resume after a kill."""

from __future__ import annotations

import csv
from dataclasses import replace

import pytest

from ecprune.experiments import training
from ecprune.experiments.config import reduced_widths, weight_count
from ecprune.experiments.runner import run_experiment
from ecprune.experiments.store import RESULT_FIELDS, CsvStore, ResultsStore, read_rows
from tiny_experiment import TINY, table, tiny_split


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    report = run_experiment(TINY, tiny_split, out=out, progress=False)
    return out, report


def test_grid_has_one_row_per_cell(reference):
    out, report = reference
    rows = read_rows(report.results)
    per_seed = 1 + 2 * 3 * 2 + 2  # dense, (prune + finetune) x methods x ratios, fully-connected
    total = weight_count((5, 6, 4, 3))
    assert report.cells == report.computed == len(rows) == 2 * per_seed
    assert {r["phase"] for r in rows} == {"dense", "prune", "finetune"}
    for row in rows:
        assert float(row["test_loss"]) > 0 and 0 <= float(row["test_accuracy"]) <= 1
        if row["method"] in TINY.methods:
            assert int(row["kept"]) == round((1 - float(row["ratio"])) * total)
            assert float(row["score_seconds"]) > 0
            assert int(row["epochs"]) == (2 if row["phase"] == "prune" else 3)
        if row["method"] == "fully-connected":
            assert int(row["epochs"]) == 3
            target = round((1 - float(row["ratio"])) * total)
            assert int(row["kept"]) == weight_count(reduced_widths((5, 6, 4, 3), target))
    assert not (out / "checkpoints").exists()
    units = {row["unit"] for row in read_rows(report.timings)}
    assert {"train-dense", "score-ecp", "finetune", "fully-connected"} <= units


def test_rerun_computes_nothing(reference):
    out, _ = reference
    before = table(out / "tiny.csv")
    again = run_experiment(TINY, tiny_split, out=out, progress=False)
    assert again.computed == 0 and table(out / "tiny.csv") == before


def test_killed_run_resumes_without_duplicates(tmp_path, reference):
    """Die after the third unit's rows are written, then resume: same rows, none twice."""
    written = []

    def die_on_third(rows):
        written.append(rows)
        if len(written) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_experiment(TINY, tiny_split, out=tmp_path, progress=False, on_rows=die_on_third)
    partial = read_rows(tmp_path / "tiny.csv")
    assert len(partial) == sum(len(rows) for rows in written)
    assert (tmp_path / "checkpoints").is_dir()  # the dense net and scores survive the kill
    resumed = run_experiment(TINY, tiny_split, out=tmp_path, progress=False)
    assert resumed.computed == resumed.cells - len(partial)
    final = table(tmp_path / "tiny.csv")
    assert len(final) == len(set(final))
    assert final == table(reference[0] / "tiny.csv")


def test_kill_inside_finetuning_resumes_from_the_epoch_checkpoint(tmp_path, monkeypatch):
    config = replace(TINY, seeds=(0,), finetune_epochs=3)
    straight = run_experiment(config, tiny_split, out=tmp_path / "straight", progress=False)
    save = training._save_checkpoint

    def save_then_die(model, optimizer, epoch, path):
        save(model, optimizer, epoch, path)
        if path.name.startswith("finetune") and epoch == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(training, "_save_checkpoint", save_then_die)
    killed = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        run_experiment(config, tiny_split, out=killed, progress=False)
    assert len(list(killed.glob("checkpoints/**/finetune-*.pt"))) == 1
    monkeypatch.setattr(training, "_save_checkpoint", save)
    run_experiment(config, tiny_split, out=killed, progress=False)
    assert table(killed / "tiny.csv") == table(straight.results)


def test_two_workers_give_the_same_rows(tmp_path, reference):
    run_experiment(TINY, tiny_split, out=tmp_path, workers=2, threads=1, progress=False)
    assert table(tmp_path / "tiny.csv") == table(reference[0] / "tiny.csv")


def test_store_repairs_a_half_written_line(tmp_path):
    store = ResultsStore(tmp_path / "r.csv")
    store.append([{"experiment": "e", "variant": "", "arch": "2-2-1", "seed": 0,
                   "method": "ecp", "ratio": "0.5", "phase": "prune", "test_loss": 1.0}])
    with open(store.path, "a") as handle:
        handle.write("e,,2-2-1,0,ecp,0.6,pru")  # a kill inside a write
    store = ResultsStore(store.path)
    assert store.done() == {("e", "", "2-2-1", "0", "ecp", "0.5", "prune")}
    assert store.path.read_text().endswith("\n")


def test_store_refuses_a_foreign_csv(tmp_path):
    path = tmp_path / "other.csv"
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerow(["a", "b"])
    with pytest.raises(ValueError, match=r"has the columns \['a', 'b'\]"):
        CsvStore(path, RESULT_FIELDS)


def test_reduced_widths_is_the_closest_uniform_shrink():
    for target in (100, 2000, 13216, 26000):
        best = reduced_widths((784, 32, 32, 10), target)
        brute = min(range(1, 33), key=lambda h: abs(weight_count((784, h, h, 10)) - target))
        assert best == (784, brute, brute, 10)
    uneven = reduced_widths((68, 64, 32, 32, 16, 16, 1), 4104)
    assert abs(weight_count(uneven) - 4104) < 0.05 * 4104
    assert uneven[1] >= uneven[2] >= uneven[4]


@pytest.mark.parametrize("change,message", [
    ({"methods": ("ecp", "obd")}, r"Unknown method\(s\) \['obd'\]"),
    ({"ratios": (0.5, 1.0)}, r"Ratios must lie in \(0, 1\)"),
    ({"loss": "hinge"}, "Unknown loss 'hinge'"),
    ({"epochs": 0}, "epochs must be a positive integer; got 0"),
    ({"lr": 0.0}, "lr must be positive and lr_decay in"),
    ({"lr_decay": 1.5}, "lr must be positive and lr_decay in"),
    ({"seeds": ()}, "at least one seed"),
])
def test_config_validation(change, message):
    with pytest.raises(ValueError, match=message):
        replace(TINY, **change)
