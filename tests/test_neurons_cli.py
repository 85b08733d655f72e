"""``ecprune prune --neurons``: the smaller model, its widths in the report, clear errors."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from torch import nn

import ecprune
from ecprune.cli import build_parser, main


@pytest.fixture
def work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.PReLU(12), nn.Linear(12, 8), nn.Tanh(),
                          nn.Linear(8, 3))
    torch.save(model, tmp_path / "model.pt")
    x = torch.randn(300, 6, generator=torch.Generator().manual_seed(1))
    np.save(tmp_path / "inputs.npy", x.numpy())
    return {"dir": tmp_path, "model": model, "x": x}


def run(*args):
    return main(["prune", *map(str, args)])


def test_neurons_writes_the_smaller_model_and_its_widths(work, capsys):
    assert run("model.pt", "inputs.npy", "--trust-model", "--neurons", 0.5, "--scope", "layer",
               "-o", "small.pt") == 0
    small = torch.load(work["dir"] / "small.pt", weights_only=False)
    assert ecprune.layer_shapes(small) == {"0": (6, 6), "2": (4, 6), "4": (3, 4)}
    assert small[1].num_parameters == 6
    report = json.loads((work["dir"] / "small.json").read_text())
    assert report["widths"] == {"0": 6, "2": 4} and report["method"] == "ecp-refit"
    assert report["requested"] == {"neurons": 0.5}
    assert report["outputs"]["model_format"] == "module"
    expected = ecprune.prune_neurons(work["model"], work["x"], 0.5, scope="layer")
    with torch.no_grad():
        torch.testing.assert_close(small(work["x"]), work["model"](work["x"]))
    assert report["relative_measured_error"] == pytest.approx(expected.relative_measured_error)
    out = capsys.readouterr().out
    assert "parameters: 227 -> 91" in out and "wrote small.pt" in out


def test_neurons_takes_a_unit_method_and_its_options(work):
    assert run("model.pt", "inputs.npy", "--trust-model", "--neurons", 0.25, "--method", "obs",
               "--damping", 0.1, "-o", "obs.pt", "-q") == 0
    report = json.loads((work["dir"] / "obs.json").read_text())
    assert report["method"] == "obs" and report["removed_units"] == 5


def cli_error(capsys, *args) -> str:
    assert run(*args) == 2
    return capsys.readouterr().err.strip()


@pytest.mark.parametrize(("extra", "message"), [
    (["--neurons", 1.0], r"--neurons must be in \[0, 1\); got 1.0"),
    (["--neurons", 0.5, "--steps", 2], "drop --steps"),
    (["--neurons", 0.5, "--compact"], "drop --compact"),
    (["--neurons", 0.5, "--scope", "row"], "--neurons takes --scope global or layer"),
    (["--neurons", 0.5, "--method", "sparsegpt"], "Unknown --method 'sparsegpt' with --neurons"),
    (["--neurons", 0.5, "--method", "ecp", "--damping", 0.1],
     r"damping=0.1 applies to method\(s\) \['ecp-refit', 'obs'\]"),
    (["--neurons", 0.5, "--block-size", 4], "applies to the weight-pruning method"),
])
def test_neurons_errors_are_one_line(work, capsys, extra, message):
    err = cli_error(capsys, "model.pt", "inputs.npy", "--trust-model", *extra, "-o", "x.pt")
    assert err.startswith("ecprune prune: error:")
    assert re.search(message, err), err
    assert not (work["dir"] / "x.pt").exists()


@pytest.mark.parametrize("other", [["--sparsity", 0.5], ["--error-budget", 0.01]])
def test_neurons_excludes_sparsity_and_error_budget(work, capsys, other):
    with pytest.raises(SystemExit):
        run("model.pt", "inputs.npy", "--trust-model", "--neurons", 0.5, *other)
    assert "not allowed with argument" in capsys.readouterr().err


def test_help_documents_neurons():
    parser = build_parser()
    prune = parser._subparsers._group_actions[0].choices["prune"]
    text = " ".join(prune.format_help().split())
    assert "--neurons F remove this fraction of the hidden units" in text
    assert "--neurons 0.5 -o small.pt" in text
