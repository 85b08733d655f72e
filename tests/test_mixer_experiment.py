"""The MLP-Mixer experiment (issue 15): the model, its multi-row layers, the registered grid,
the quick run through the command line, and resuming a killed Mixer run."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
from torch import nn

import ecprune
from ecprune.cli import main
from ecprune.engine.positions import layouts
from ecprune.experiments import EXPERIMENTS
from ecprune.experiments.beyond import BEYOND_METHODS
from ecprune.experiments.folder import FolderConfig
from ecprune.experiments.job import Job, JobRunner, Split
from ecprune.experiments.mixer import MIXER_ARCH, MIXER_MNIST
from ecprune.experiments.mixer_model import StackedModels, mixer, mixer_name, mixer_weight_count
from ecprune.experiments.runner import run_experiment
from ecprune.experiments.store import TIMING_FIELDS, CsvStore, ResultsStore, read_rows
from tiny_experiment import TINY

# 14 x 14 patches: 4 tokens, 4 channels, one block; trains on the tiny images in a second.
TINY_ARCH = (14, 4, 4, 4, 1)
TINY_MIXER = replace(MIXER_MNIST, name="tiny-mixer", architectures=(TINY_ARCH,), seeds=(0,),
                     methods=("ecp", "magnitude", "ecp-refit", "ecp-steps2"), ratios=(0.5, 0.8),
                     epochs=3, batch_size=16, prune_samples=48)


def tiny_images(variant: str = "") -> Split:
    """Random 28 x 28 images labelled by which quadrant is brightest."""
    del variant
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(96, 784, generator=generator)
    quadrants = x.reshape(96, 2, 14, 2, 14).mean((2, 4)).reshape(96, 4)
    y = quadrants.argmax(1) % 3
    return Split(x[:64], y[:64], x[64:], y[64:])


def test_patches_are_the_image_blocks_in_row_major_order():
    model = mixer(MIXER_ARCH, seed=0)
    x = torch.arange(2 * 784, dtype=torch.float32).reshape(2, 784)
    patches = model.patches(x)  # (2, 16, 49)
    images = x.reshape(2, 28, 28)
    for token in (0, 5, 15):
        row, column = divmod(token, 4)
        block = images[:, 7 * row:7 * row + 7, 7 * column:7 * column + 7].reshape(2, 49)
        torch.testing.assert_close(patches[:, token], block, rtol=0, atol=0)
    assert model(x).shape == (2, 10)


def test_weight_count_and_name():
    model = mixer(MIXER_ARCH, seed=0)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert mixer_weight_count(MIXER_ARCH) == sum(m.weight.numel() for m in linears) == 12128
    assert mixer_name(MIXER_ARCH) == "mixer-p7-c32-t32-d64-n2"
    with pytest.raises(ValueError, match="The patch size must divide 28; got 5"):
        mixer((5, 4, 4, 4, 1), seed=0)


def test_every_layer_but_the_head_has_several_rows_per_sample():
    model = mixer(MIXER_ARCH, seed=0)
    layers = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    one_row = layouts(model, layers, torch.rand(4, 784), None)
    assert [name for name, single in one_row.items() if single] == ["head"]
    assert len(one_row) == 10


def test_sensitivity_weighted_refit_is_refused_on_the_mixer():
    model = mixer(TINY_ARCH, seed=0)
    with pytest.raises(ValueError, match="several rows per sample"):
        ecprune.prune(model, tiny_images().x_train, 0.5, "ecp-refit",
                      refit_weighting="sensitivity", progress=False)
    assert "ecp-refit-sensitivity" not in MIXER_MNIST.methods


def test_registered_grid_is_the_issues():
    full = EXPERIMENTS["mixer-mnist"].full
    assert full.seeds == (0, 1, 2) and full.ratios == (0.5, 0.7, 0.8, 0.9, 0.95)
    assert set(full.methods) == {*BEYOND_METHODS, "magnitude"} - {"ecp-refit-sensitivity"}
    assert not full.finetune and not full.fully_connected and full.model == "mixer"
    assert full.architectures == ((7, 32, 32, 64, 2),)
    assert EXPERIMENTS["mixer-mnist"].quick.methods == full.methods


def test_config_checks_and_older_folders_are_unchanged():
    with pytest.raises(ValueError, match="Unknown model 'cnn'; expected one of"):
        replace(TINY, model="cnn")
    with pytest.raises(ValueError, match="model='mixer' runs prune-only grids"):
        replace(TINY, model="mixer")
    with pytest.raises(ValueError, match="prune_samples must be a positive integer or None"):
        replace(TINY, prune_samples=0)
    assert "prune_samples" not in FolderConfig.of(TINY).settings  # MLP folders keep their keys
    assert FolderConfig.of(TINY_MIXER).settings["prune_samples"] == 48


def test_stacked_models_count_masks_of_pruned_networks():
    dense = mixer(TINY_ARCH, seed=0)
    pruned = copy.deepcopy(dense)
    ecprune.prune(pruned, tiny_images().x_train, 0.5, "magnitude", progress=False)
    stacked = StackedModels([dense, pruned])
    kept = [int(sum(m[k].sum() for m in stacked.masks())) for k in range(stacked.count)]
    assert kept == [888, 444] == [mixer_weight_count(TINY_ARCH), round(0.5 * 888)]
    x = tiny_images().x_test
    torch.testing.assert_close(stacked(x)[1], pruned(x), rtol=0, atol=0)


def test_methods_score_on_the_first_prune_samples(tmp_path):
    split = tiny_images()
    runner = JobRunner(TINY_MIXER, Job("", TINY_ARCH, 0), split,
                       results=ResultsStore(tmp_path / "r.csv"),
                       timings=CsvStore(tmp_path / "t.csv", TIMING_FIELDS),
                       checkpoints=tmp_path / "checkpoints", done=set())
    x, y = runner.prune_data()
    assert torch.equal(x, split.x_train[:48]) and torch.equal(y, split.y_train[:48])
    assert runner.row("ecp", 0.5, "prune")["total"] == 888


def test_killed_mixer_run_resumes_to_the_same_rows(tmp_path):
    whole = run_experiment(TINY_MIXER, tiny_images, out=tmp_path / "whole", progress=False)
    rows = read_rows(whole.results)
    assert whole.cells == whole.computed == len(rows) == 1 + 4 * 2
    for row in rows[1:]:
        assert int(row["kept"]) == round((1 - float(row["ratio"])) * 888), row["method"]
    written = []

    def die_on_third(batch):
        written.append(batch)
        if len(written) == 3:  # dense, ecp, magnitude
            raise KeyboardInterrupt

    out = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        run_experiment(TINY_MIXER, tiny_images, out=out, progress=False, on_rows=die_on_third)
    assert list(out.glob("checkpoints/**/dense.pt"))
    again = run_experiment(TINY_MIXER, tiny_images, out=out, progress=False)
    assert again.computed == len(rows) - sum(len(batch) for batch in written) == 4

    def losses(path):
        return sorted((r["method"], r["ratio"], r["test_loss"]) for r in read_rows(path))

    assert losses(again.results) == losses(whole.results)


def test_quick_run_from_the_command_line(tmp_path, capsys):
    """``ecprune reproduce mixer-mnist --quick``: every label at two ratios on MNIST, then a
    rerun that computes nothing."""
    args = ["reproduce", "mixer-mnist", "--quick", "--out", str(tmp_path), "--threads", "1",
            "--no-progress"]
    assert main(args) == 0
    rows = read_rows(tmp_path / "mixer-mnist.csv")
    quick = EXPERIMENTS["mixer-mnist"].quick
    assert len(rows) == 1 + 2 * len(quick.methods)
    assert {row["arch"] for row in rows} == {"mixer-p7-c32-t32-d64-n2"}
    dense = next(row for row in rows if row["phase"] == "dense")
    assert float(dense["test_accuracy"]) > 0.85  # one epoch
    for row in rows[1:]:
        assert int(row["kept"]) == round((1 - float(row["ratio"])) * 12128), row["method"]
    units = {t["unit"] for t in read_rows(tmp_path / "mixer-mnist-timings.csv")}
    assert "gradient-pass" in units and "prune-ecp-steps10-0.9" in units
    assert main(args) == 0
    assert "0 cells computed" in capsys.readouterr().out
    assert quick.prune_samples == 256
