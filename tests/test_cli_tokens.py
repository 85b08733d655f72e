"""``ecprune prune`` end to end on a token model: inputs (B, T, F), Linear layers on every token.

The command must give what the library gives (the exact per-sample path), honour
``--positions``, and shrink token layers with ``--neurons``.
"""

from __future__ import annotations

import copy
import json
import uuid

import pytest
import torch

import ecprune
from ecprune.cli import main

SAMPLES, TOKENS, FEATURES = 48, 5, 6
ARCHITECTURE = f"""import torch
from torch import nn


class TokenMixer(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = nn.Linear({FEATURES}, 12)
        self.outer = nn.Linear(12, 4)

    def forward(self, x):
        y = self.outer(torch.tanh(self.inner(x)))  # (B, T, 4)
        return (torch.softmax(y.sum(-1, keepdim=True), 1) * y).sum(1)  # tokens weigh each other


def make():
    return TokenMixer().double()
"""


@pytest.fixture
def work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    name = f"tokens_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(ARCHITECTURE)
    namespace: dict = {}
    exec(ARCHITECTURE, namespace)
    torch.manual_seed(0)
    model = namespace["make"]()
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    x = torch.randn(SAMPLES, TOKENS, FEATURES, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(1))
    torch.save(x, tmp_path / "tokens.pt")
    return {"factory": f"{name}.py:make", "model": model, "x": x, "dir": tmp_path}


def prune(work, *flags):
    assert main(["prune", work["factory"], "--weights", "weights.pt", "tokens.pt", *map(str, flags),
                 "--force",
                 "-o", "out.pt", "--quiet"]) == 0
    state = torch.load(work["dir"] / "out.pt", weights_only=True)
    report = json.loads((work["dir"] / "out.json").read_text())
    return state, report


@pytest.mark.parametrize("method", ["ecp", "ecp-refit"])
@pytest.mark.parametrize(("positions", "products"),
                         [("auto", "model"), ("independent", "model"), ("auto", "bfloat16")])
def test_the_command_prunes_a_token_model_like_the_library(work, method, positions, products):
    state, report = prune(work, "--sparsity", 0.5, "--method", method, "--sensitivity",
                          "exact", "--positions", positions, "--products", products)
    expected = copy.deepcopy(work["model"])
    library = ecprune.prune(expected, work["x"], 0.5, method, sensitivity="exact",
                            positions=positions, products=products)
    ecprune.bake_masks(expected)
    for key, value in expected.state_dict().items():
        torch.testing.assert_close(state[key], value, rtol=1e-12, atol=1e-14)
    assert report["total"] - report["kept"] == round(0.5 * report["total"])
    assert report["kept"] == library.kept


def test_independent_positions_change_the_ecp_selection(work):
    """The flag reaches the engine: rows-as-samples scores rank this model's weights
    differently from the exact per-sample ones."""
    exact, _ = prune(work, "--sparsity", 0.5, "--sensitivity", "exact")
    rows, _ = prune(work, "--sparsity", 0.5, "--sensitivity", "exact", "--positions",
                    "independent")
    assert any(not torch.equal(exact[k] == 0, rows[k] == 0) for k in exact if "weight" in k)


def test_neurons_shrink_token_layers_as_the_library_does(work):
    """``--neurons 0.5`` on the token model removes half of the per-token hidden units and
    writes the smaller model that ``ecprune.prune_neurons`` gives, with nothing skipped."""
    assert main(["prune", work["factory"], "--weights", "weights.pt", "tokens.pt",
                 "--neurons", "0.5", "-o", "small.pt", "--quiet"]) == 0
    small = torch.load(work["dir"] / "small.pt", weights_only=False)
    report = json.loads((work["dir"] / "small.json").read_text())
    assert "(batch, features)" not in json.dumps(report)
    library = copy.deepcopy(work["model"])
    expected = ecprune.prune_neurons(library, work["x"], 0.5)
    assert expected.skipped == {} and expected.widths == {"inner": 6}
    assert (small.inner.out_features, small.outer.in_features) == (6, 6)
    with torch.no_grad():
        torch.testing.assert_close(small(work["x"]), library(work["x"]), rtol=1e-10,
                                   atol=1e-12)


@pytest.mark.parametrize("flag", [["--positions", "exact"], ["--products", "bfloat16"]])
def test_positions_and_products_are_refused_with_neurons(work, capsys, flag):
    assert main(["prune", work["factory"], "--weights", "weights.pt", "tokens.pt", "--neurons",
                 "0.5", *flag, "-o", "small.pt", "--quiet"]) == 2
    assert flag[0] in capsys.readouterr().err


def test_an_unknown_positions_value_is_refused(work, capsys):
    with pytest.raises(SystemExit):
        main(["prune", work["factory"], "--weights", "weights.pt", "tokens.pt", "--sparsity",
              "0.5", "--positions", "rows"])
    assert "--positions" in capsys.readouterr().err
