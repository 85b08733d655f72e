"""``ecprune prune``'s method options reach the method they belong to, and only that one."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import ecprune
import test_cli_prune
from ecprune.cli import main
from test_cli_prune import linear_weights

work = test_cli_prune.work  # the fixture: a folder with a model and data files


def run(*args):
    return main(["prune", *map(str, args)])


@pytest.mark.parametrize(("flags", "method", "options"), [
    (["--method", "sparsegpt", "--damping", 0.1, "--block-size", 4], "sparsegpt",
     {"damping": 0.1, "block_size": 4}),
    (["--method", "ecp-refit", "--refit-weighting", "sensitivity"], "ecp-refit",
     {"refit_weighting": "sensitivity"}),
    (["--sensitivity", "hutchinson", "--probes", 3], "ecp",
     {"sensitivity": "hutchinson", "probes": 3}),
])
def test_method_flags_configure_the_method(work, flags, method, options):
    assert run("model.pt", "inputs.npy", "--trust-model", "--sparsity", 0.6, "-o", "out.pt",
               "--quiet", *flags) == 0
    pruned = torch.load(work["dir"] / "out.pt", weights_only=False)
    expected = copy.deepcopy(work["model"])
    ecprune.prune(expected, work["x"], 0.6, method, **options)
    default = copy.deepcopy(work["model"])
    ecprune.prune(default, work["x"], 0.6, method)
    for got, want in zip(linear_weights(pruned), linear_weights(expected), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    assert any(not torch.equal(a, b) for a, b in zip(linear_weights(expected),
                                                     linear_weights(default), strict=True))


@pytest.mark.parametrize(("flags", "message"), [
    (["--damping", 0.1], f"damping=0.1 applies to method(s) {ecprune.methods.owners('damping')}, "
                         "not 'ecp'"),
    (["--method", "magnitude", "--probes", 2],
     f"probes=2 applies to method(s) {ecprune.methods.owners('probes')}, not 'magnitude'"),
    (["--method", "sparsegpt", "--block-size", 0], "'block_size' parameter of ecprune prune must "
                                                   "be an int >= 1. Got 0"),
])
def test_a_flag_of_another_method_exits_2_naming_its_methods(work, capsys, flags, message):
    assert run("model.pt", "inputs.npy", "--trust-model", "--sparsity", 0.6, "-o", "out.pt",
               *flags) == 2
    assert message in capsys.readouterr().err
    assert not (work["dir"] / "out.pt").exists()


def test_the_pruned_model_has_the_flags_effect_not_a_default(work):
    """--nonlinear-samples changes nonlinear's subsample: the scores differ from the default."""
    assert run("model.pt", "inputs.npy", "--trust-model", "--sparsity", 0.5, "-o", "a.pt",
               "--quiet", "--method", "nonlinear", "--nonlinear-samples", 5) == 0
    expected = copy.deepcopy(work["model"])
    ecprune.prune(expected, work["x"], 0.5, "nonlinear", nonlinear_samples=5)
    pruned = torch.load(work["dir"] / "a.pt", weights_only=False)
    for got, want in zip(linear_weights(pruned), linear_weights(expected), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    assert isinstance(pruned, nn.Module)


def test_a_sparsity_that_empties_a_layer_warns(work, capsys):
    assert run("model.pt", "inputs.npy", "--trust-model", "--sparsity", 0.99, "-o", "out.pt",
               "--quiet") == 0
    assert "warning: every weight of layer(s)" in capsys.readouterr().err
