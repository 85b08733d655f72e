"""``ecprune prune``'s checks before any work: output folders that cannot take the files, bad
``--dist-timeout`` and ``--device`` values, a factory model without ``--weights``."""

from __future__ import annotations

import os
import uuid

import numpy as np
import pytest
import torch

from ecprune.cli import main

FACTORY = """from torch import nn


def make():
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2))
"""


@pytest.fixture
def work(tmp_path, monkeypatch):
    """A folder with a factory module, its weights and inputs; returns the MODEL argument."""
    monkeypatch.chdir(tmp_path)
    name = f"factory_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(FACTORY)
    namespace = {}
    exec(FACTORY, namespace)
    torch.save(namespace["make"]().state_dict(), tmp_path / "weights.pt")
    np.save(tmp_path / "inputs.npy", np.random.default_rng(0).normal(size=(50, 4)))
    return f"{name}.py:make"


def prune(*args):
    return main(["prune", *map(str, args)])


def one_line_error(capsys, *args) -> str:
    assert prune(*args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return err


def test_a_report_that_cannot_be_written_stops_the_run_before_the_model_is_written(
        work, tmp_path, capsys):
    long_name = "r" * 300 + ".json"
    err = one_line_error(capsys, work, "--weights", "weights.pt", "inputs.npy", "--sparsity",
                         0.5, "-o", "out.pt", "--report", long_name)
    assert f"Cannot write '{long_name}': File name too long" in err
    assert not (tmp_path / "out.pt").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_report_folder_stops_the_run_before_the_model_is_written(
        work, tmp_path, capsys):
    (tmp_path / "locked").mkdir(mode=0o500)
    err = one_line_error(capsys, work, "--weights", "weights.pt", "inputs.npy", "--sparsity",
                         0.5, "-o", "out.pt", "--report", "locked/out.json")
    assert "Cannot write 'locked/out.json': Permission denied" in err
    assert not (tmp_path / "out.pt").exists()


@pytest.mark.parametrize(("option", "message"), [
    (["--dist-timeout", "0"], "--dist-timeout must be a positive number of seconds; got 0.0."),
    (["--dist-timeout", "-5"], "--dist-timeout must be a positive number of seconds; got -5.0."),
    (["--dist-timeout", "nan"], "--dist-timeout must be a positive number of seconds; got nan."),
    (["--device", "meta"], "--device meta holds shapes but no numbers"),
])
def test_bad_dist_timeout_and_meta_device_exit_2(work, tmp_path, capsys, option, message):
    err = one_line_error(capsys, work, "--weights", "weights.pt", "inputs.npy", "--sparsity",
                         0.5, *option)
    assert message in err
    assert not (tmp_path / "pruned.pt").exists()


def test_a_factory_without_weights_is_pruned_with_a_one_line_warning(work, capsys):
    assert prune(work, "inputs.npy", "--sparsity", 0.5, "-q") == 0
    err = capsys.readouterr().err
    assert err == (f"ecprune prune: warning: no --weights for MODEL {work}: pruning the "
                   "factory's freshly initialised (untrained) weights.\n")
    assert prune(work, "--weights", "weights.pt", "inputs.npy", "--sparsity", 0.5, "-q",
                 "--force") == 0
    assert capsys.readouterr().err == ""
