"""A results folder survives kills, refuses other configurations and admits one run at a time
(docs/reliability.md)."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import ecprune
from ecprune.cli import main
from ecprune.experiments.folder import (
    ConfigMismatch,
    FolderConfig,
    config_path,
    data_digest,
    data_sketch,
    sketches_agree,
    without_new_defaults,
)
from ecprune.experiments.job import Job
from ecprune.experiments.lock import LOCK_NAME, FolderLock
from ecprune.experiments.mnist import MNIST, MNIST_QUICK
from ecprune.experiments.runner import run_experiment
from ecprune.experiments.store import (
    ADDED_FIELDS,
    RESULT_FIELDS,
    ResultsStore,
    read_rows,
    row_key,
)
from ecprune.experiments.summary import experiment_report
from ecprune.plots import experiment_figures
from tiny_experiment import TINY, table, tiny_split

DRIVER = Path(__file__).with_name("reproduce_driver.py")
RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results"
ONE_SEED = replace(TINY, seeds=(0,))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run of ONE_SEED."""
    out = tmp_path_factory.mktemp("reference")
    run_experiment(ONE_SEED, tiny_split, out=out, progress=False)
    return out


@pytest.fixture
def finished(tmp_path, reference):
    """A copy of the reference folder."""
    return shutil.copytree(reference, tmp_path / "finished")


def no_data(variant):
    raise AssertionError(f"a finished grid loaded the data of {variant!r}")


def test_kill_9_inside_a_checkpoint_write_then_resume(tmp_path, reference, caplog):
    """SIGKILL halfway through writing magnitude's scores, then ecp's checkpoint damaged (as a
    kill left it before writes were atomic), then the same run again: it completes, says what
    it discarded, and its rows are the uninterrupted run's."""
    out = tmp_path / "out"
    killed = subprocess.run([sys.executable, str(DRIVER), str(out), "scores-magnitude"],
                            capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not list(out.glob("checkpoints/**/scores-magnitude.pt"))  # only a partial file
    (ecp,) = out.glob("checkpoints/**/scores-ecp.pt")
    ecp.write_bytes(b"")
    partial = len(read_rows(out / "tiny.csv"))
    with caplog.at_level(logging.WARNING, logger="ecprune"):
        resumed = run_experiment(ONE_SEED, tiny_split, out=out, progress=False)
    assert f"discarding the damaged checkpoint {ecp} " in caplog.text
    assert partial > 0 and resumed.computed == resumed.cells - partial
    assert table(out / "tiny.csv") == table(reference / "tiny.csv")
    assert not (out / "checkpoints").exists()


def test_a_damaged_training_checkpoint_is_retrained(tmp_path, reference, caplog):
    key = FolderConfig.of(ONE_SEED, {"": data_digest(tiny_split())}).job_key("")
    folder = tmp_path / "checkpoints" / "tiny" / key / Job("", (5, 6, 4, 3), 0).slug
    folder.mkdir(parents=True)
    (folder / "dense-training.pt").write_bytes(b"PK\x03\x04 cut short")
    with caplog.at_level(logging.WARNING, logger="ecprune"):
        run_experiment(ONE_SEED, tiny_split, out=tmp_path, progress=False)
    assert "discarding the damaged checkpoint" in caplog.text and "dense-training.pt" in caplog.text
    assert table(tmp_path / "tiny.csv") == table(reference / "tiny.csv")


def test_other_settings_are_refused_and_new_moves_the_old_results_aside(finished, caplog):
    before = (finished / "tiny.csv").read_text()
    three = replace(ONE_SEED, epochs=3)
    with pytest.raises(ConfigMismatch, match=r"epochs: 2 there, 3 here\..* pass --new"):
        run_experiment(three, no_data, out=finished, progress=False)
    assert (finished / "tiny.csv").read_text() == before
    with caplog.at_level(logging.WARNING, logger="ecprune"):
        run_experiment(three, tiny_split, out=finished, progress=False, new=True)
    (aside,) = (finished / "replaced").iterdir()
    assert "moved the previous tiny results to" in caplog.text and str(aside) in caplog.text
    assert (aside / "tiny.csv").read_text() == before
    assert {row["epochs"] for row in read_rows(finished / "tiny.csv")} == {"3", "4"}
    assert FolderConfig.read(config_path(finished, "tiny")).settings["epochs"] == 3


def test_a_folder_takes_more_seeds_and_methods_but_not_other_ones(finished):
    more = replace(TINY, seeds=(1,), methods=("ecp", "random"))
    report = run_experiment(more, tiny_split, out=finished, progress=False)
    assert report.computed == report.cells
    stored = FolderConfig.read(config_path(finished, "tiny"))
    assert sorted(stored.methods) == ["ecp", "gradient", "magnitude", "random"]
    assert list(stored.data) == [""]
    changed = json.loads(config_path(finished, "tiny").read_text())
    changed["methods"]["ecp"] = "ECP(sensitivity='exact', probes=None), steps=1"
    changed["data"][""] = "sha256:0"
    changed["sketches"][""][1] += 1.0  # other data: the sum of x_train differs
    config_path(finished, "tiny").write_text(json.dumps(changed))
    with pytest.raises(ConfigMismatch, match=r"method 'ecp': ECP\(sensitivity='exact'.* there"):
        run_experiment(ONE_SEED, no_data, out=finished, progress=False)
    changed["methods"]["ecp"] = stored.methods["ecp"]
    config_path(finished, "tiny").write_text(json.dumps(changed))
    with pytest.raises(ConfigMismatch, match=r"data of variant '': sha256:0 there, sha256:"):
        run_experiment(replace(ONE_SEED, seeds=(2,)), tiny_split, out=finished, progress=False)


def nudged(split, step):
    """``split`` with every input moved by ``step`` float32 ulps (step > 0) or scaled by
    ``1 - step`` (0 < step < 1)."""
    x_train, x_test = split.x_train, split.x_test
    if step >= 1:
        for _ in range(int(step)):
            x_train = torch.nextafter(x_train, torch.tensor(math.inf))
            x_test = torch.nextafter(x_test, torch.tensor(math.inf))
    else:
        x_train, x_test = x_train * (1 - step), x_test * (1 - step)
    return replace(split, x_train=x_train, x_test=x_test)


def test_data_sketches_tell_rounding_from_other_data():
    split = tiny_split()
    sketch = data_sketch(split)
    assert sketches_agree(sketch, data_sketch(nudged(split, 1)))
    assert sketches_agree(sketch, data_sketch(nudged(split, 3)))
    assert not sketches_agree(sketch, data_sketch(nudged(split, 1e-5)))
    swapped = split.x_test.clone()
    swapped[[0, 1]] = swapped[[1, 0]]
    assert not sketches_agree(sketch, data_sketch(replace(split, x_test=swapped)))
    assert not sketches_agree(sketch, data_sketch(replace(split, y_train=split.y_train[1:])))
    relabelled = split.y_test.clone()
    relabelled[0] = (relabelled[0] + 1) % 3
    assert not sketches_agree(sketch, data_sketch(replace(split, y_test=relabelled)))


def test_data_rounded_differently_resume_with_a_warning_other_data_are_refused(finished,
                                                                                caplog):
    stored = FolderConfig.read(config_path(finished, "tiny"))
    assert list(stored.sketches) == [""]
    more = replace(ONE_SEED, seeds=(0, 1))
    with caplog.at_level(logging.WARNING, logger="ecprune"):
        report = run_experiment(more, lambda v: nudged(tiny_split(v), 1), out=finished,
                                progress=False)
    assert report.computed == report.cells // 2
    assert "differ from" in caplog.text and "last bits only" in caplog.text
    assert FolderConfig.read(config_path(finished, "tiny")) == stored
    with pytest.raises(ConfigMismatch, match=r"data of variant '': sha256:\w+ there") as err:
        run_experiment(replace(ONE_SEED, seeds=(2,)), lambda v: nudged(tiny_split(v), 1e-5),
                       out=finished, progress=False)
    assert "no data sketch" not in str(err.value)
    # A folder written before there were sketches: even rounding is refused, and said so.
    unsketched = json.loads(config_path(finished, "tiny").read_text())
    del unsketched["sketches"]
    config_path(finished, "tiny").write_text(json.dumps(unsketched))
    with pytest.raises(ConfigMismatch, match=r"records no data sketch of ''.*machine that wrote"):
        run_experiment(replace(ONE_SEED, seeds=(2,)), lambda v: nudged(tiny_split(v), 1),
                       out=finished, progress=False)


def test_quick_settings_in_a_full_run_folder_exit_2(tmp_path, capsys):
    FolderConfig.of(MNIST_QUICK).write(config_path(tmp_path, "mnist"))
    assert main(["reproduce", "mnist", "--out", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "epochs: 2 there, 15 here" in err and "pass --new" in err
    with pytest.raises(SystemExit):
        main(["reproduce", "--help"])
    assert "--new" in capsys.readouterr().out


def test_the_committed_results_adopt_their_configuration(tmp_path, caplog):
    for name in ("mnist.csv", "mnist-timings.csv"):
        shutil.copy(RESULTS / name, tmp_path / name)
    with caplog.at_level(logging.WARNING, logger="ecprune"):
        report = run_experiment(MNIST, no_data, out=tmp_path, progress=False)
    assert report.computed == 0 and report.cells == 1510
    assert "has no mnist-config.json; adopting this run's configuration" in caplog.text
    assert FolderConfig.read(config_path(tmp_path, "mnist")) == FolderConfig.of(MNIST)


def test_a_csv_without_configuration_of_other_epochs_is_refused(finished):
    config_path(finished, "tiny").unlink()
    with pytest.raises(ConfigMismatch, match=r"line 2 \(dense, dense\) is experiment 'tiny' "
                                             r"trained for 2 epochs, this run .* trains 3"):
        run_experiment(replace(ONE_SEED, epochs=3), no_data, out=finished, progress=False)


def test_a_second_run_into_a_held_folder_exits_2_naming_the_holder(tmp_path, capsys):
    with FolderLock(tmp_path, command="ecprune reproduce tiny"):
        assert main(["reproduce", "mnist", "--quick", "--out", str(tmp_path)]) == 2
        assert [p.name for p in tmp_path.iterdir()] == [LOCK_NAME]
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "is in use by pid" in err
    assert f"pid {os.getpid()} on {socket.gethostname()}, started 20" in err
    assert "(ecprune reproduce tiny)" in err
    assert list(tmp_path.iterdir()) == []


def test_a_stale_lock_file_of_a_killed_run_does_not_block(finished):
    (finished / LOCK_NAME).write_text('{"pid": 1, "host": "gone"}\n')
    assert run_experiment(ONE_SEED, no_data, out=finished, progress=False).computed == 0
    assert not (finished / LOCK_NAME).exists()


def test_a_folder_written_before_a_method_gained_options_still_resumes():
    """The committed mixer-mnist folder predates ecp-refit's refine/objective options: at their
    defaults they change nothing, so the folder's configuration still agrees; a non-default
    value of a new option does not."""
    stored = ("ECPRefit(sensitivity='auto', probes=None, weighting='plain', allocation='refit', "
              "damping=0.01), steps=1")
    current = repr(ecprune.methods.get("ecp-refit")) + ", steps=1"
    assert current != stored and without_new_defaults(stored, current) == stored
    swaps = repr(ecprune.methods.get("ecp-refit", refine="swaps")) + ", steps=1"
    assert without_new_defaults(stored, swaps) != stored


def clean_split(variant=""):
    """tiny_split with "clean" test targets: the labels rolled by one, so that the clean loss
    differs from the test loss."""
    split = tiny_split(variant)
    return replace(split, y_test_clean=split.y_test.roll(1))


def _old_layout(source: Path, target: Path, *, drop: int) -> int:
    """``source`` as a CSV written before test_loss_clean existed, its last ``drop`` rows cut
    (a run stopped there); returns the number of rows kept."""
    rows = read_rows(source)[:-drop]
    with open(target, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=RESULT_FIELDS, extrasaction="ignore",
                                lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return len(rows)


@pytest.fixture(scope="module")
def with_clean(tmp_path_factory):
    """An uninterrupted run of ONE_SEED on data with clean test targets."""
    out = tmp_path_factory.mktemp("clean")
    run_experiment(ONE_SEED, clean_split, out=out, progress=False)
    return out


def test_every_cell_of_data_with_clean_targets_has_the_clean_loss(with_clean, reference):
    rows = read_rows(with_clean / "tiny.csv")
    assert tuple(rows[0]) == RESULT_FIELDS + ADDED_FIELDS
    assert {r["method"] for r in rows} == {"dense", *ONE_SEED.methods, "fully-connected"}
    assert all(float(r["test_loss_clean"]) > 0 for r in rows)
    assert any(r["test_loss_clean"] != r["test_loss"] for r in rows)
    assert table(with_clean / "tiny.csv") == table(reference / "tiny.csv")  # nothing else moves
    assert all(r["test_loss_clean"] == "" for r in read_rows(reference / "tiny.csv"))


def test_an_old_csv_of_data_with_clean_targets_resumes_and_gains_the_column(
        tmp_path, with_clean, caplog):
    shutil.copy(config_path(with_clean, "tiny"), config_path(tmp_path, "tiny"))
    kept = _old_layout(with_clean / "tiny.csv", tmp_path / "tiny.csv", drop=3)
    with caplog.at_level(logging.WARNING, logger="ecprune"):
        report = run_experiment(ONE_SEED, clean_split, out=tmp_path, progress=False)
    assert report.computed == 3  # the adding of a column changes no configuration
    assert f"gained the columns test_loss_clean (empty in its {kept} earlier rows)" in caplog.text
    rows = read_rows(tmp_path / "tiny.csv")
    assert tuple(rows[0]) == RESULT_FIELDS + ADDED_FIELDS
    assert [r["test_loss_clean"] for r in rows[:kept]] == [""] * kept
    clean = {row_key(r): r["test_loss_clean"] for r in read_rows(with_clean / "tiny.csv")}
    assert [r["test_loss_clean"] for r in rows[kept:]] == [clean[row_key(r)] for r in rows[kept:]]
    assert table(tmp_path / "tiny.csv") == table(with_clean / "tiny.csv")


def test_an_old_csv_of_data_without_clean_targets_keeps_its_columns(tmp_path, reference):
    shutil.copy(config_path(reference, "tiny"), config_path(tmp_path, "tiny"))
    kept = _old_layout(reference / "tiny.csv", tmp_path / "tiny.csv", drop=3)
    report = run_experiment(ONE_SEED, tiny_split, out=tmp_path, progress=False)
    assert report.computed == 3
    header = (tmp_path / "tiny.csv").read_text().splitlines()[0]
    assert header == ",".join(RESULT_FIELDS) and kept == len(read_rows(reference / "tiny.csv")) - 3
    assert table(tmp_path / "tiny.csv") == table(reference / "tiny.csv")


def test_a_store_takes_an_old_layout_but_no_other_one(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text(",".join(RESULT_FIELDS) + "\n")
    ResultsStore(path).append([{"experiment": "e", "variant": "", "arch": "2-1", "seed": 0,
                                "method": "dense", "ratio": 0, "phase": "dense",
                                "test_loss": 1.0, "test_loss_clean": 0.5}])
    assert read_rows(path)[0]["test_loss"] == "1.0" and "test_loss_clean" not in read_rows(path)[0]
    other = [f for f in RESULT_FIELDS if f != "test_accuracy"]
    path.write_text(",".join([*other, "test_loss_clean"]) + "\n")
    with pytest.raises(ValueError, match=r"has the columns \['experiment'.*write to another"):
        ResultsStore(path)


def test_an_empty_clean_column_changes_neither_summary_nor_figures(reference, tmp_path):
    rows = read_rows(reference / "tiny.csv")
    old = [{k: v for k, v in row.items() if k != "test_loss_clean"} for row in rows]
    assert experiment_report(rows) == experiment_report(old)
    assert [p.name for p in experiment_figures(rows, tmp_path)] == [
        p.name for p in experiment_figures(old, tmp_path)] == ["tiny_5-6-4-3_loss.png",
                                                              "tiny_5-6-4-3_accuracy.png"]
    clean = read_rows(_clean_rows(reference, tmp_path))
    assert "### Mean clean test loss, prune only" in experiment_report(clean)
    assert "tiny_5-6-4-3_loss_clean.png" in [p.name for p in experiment_figures(clean, tmp_path)]


def _clean_rows(reference: Path, tmp_path: Path) -> Path:
    """The reference rows with a clean loss of half the test loss."""
    rows = read_rows(reference / "tiny.csv")
    path = tmp_path / "clean.csv"
    ResultsStore(path).append([{**r, "test_loss_clean": float(r["test_loss"]) / 2}
                               for r in rows])
    return path
