"""``ecprune prune``: model and data formats, outputs, error budgets, compaction, errors."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import uuid

import numpy as np
import pytest
import torch
from torch import nn

import ecprune
from ecprune.cli import main
from ecprune.cli.data_files import load_data

N_IN, N_OUT, SAMPLES = 8, 3, 200
ARCHITECTURE = f"""from torch import nn


def make():
    return nn.Sequential(nn.Linear({N_IN}, 16), nn.PReLU(16), nn.Linear(16, 16), nn.Tanh(),
                         nn.Linear(16, {N_OUT}))
"""


@pytest.fixture
def work(tmp_path, monkeypatch):
    """A folder with a model (pickled module, factory module, state dict) and data files."""
    monkeypatch.chdir(tmp_path)
    name = f"models_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(ARCHITECTURE)
    namespace = {}
    exec(ARCHITECTURE, namespace)
    torch.manual_seed(0)
    model = namespace["make"]()
    torch.save(model, tmp_path / "model.pt")
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(SAMPLES, N_IN, generator=generator)
    y = torch.randint(0, N_OUT, (SAMPLES,), generator=generator)
    np.save(tmp_path / "inputs.npy", x.numpy())
    np.savez(tmp_path / "data.npz", inputs=x.numpy(), targets=y.numpy())
    torch.save({"inputs": x, "targets": y}, tmp_path / "data.pt")
    header = ",".join([f"f{k}" for k in range(N_IN)] + ["label"])
    np.savetxt(tmp_path / "data.csv", np.column_stack([x.numpy(), y.numpy()]), delimiter=",",
               header=header, comments="", fmt="%.9g")
    return {"dir": tmp_path, "module": name, "model": model, "x": x, "y": y}


def run(*args):
    return main(["prune", *map(str, args)])


def linear_weights(model):
    return [m.weight.detach() for m in model.modules() if isinstance(m, nn.Linear)]


def test_pickled_sequential_with_trust_model_is_pruned_like_the_library(work, capsys):
    assert run("model.pt", "inputs.npy", "--trust-model", "--sparsity", 0.7, "-o",
               "out.pt") == 0
    pruned = torch.load(work["dir"] / "out.pt", weights_only=False)
    assert not any(hasattr(m, "weight_orig") for m in pruned.modules())  # masks baked in
    expected = copy.deepcopy(work["model"])
    ecprune.prune(expected, work["x"], 0.7)
    for got, want in zip(linear_weights(pruned), linear_weights(expected), strict=True):
        assert torch.equal(got, want)
    report = json.loads((work["dir"] / "out.json").read_text())
    assert report["total"] - report["kept"] == round(0.7 * report["total"])
    assert report["outputs"]["model_format"] == "module"
    assert "total" in capsys.readouterr().out


def test_factory_with_path_and_weights_writes_a_safe_state_dict(work):
    assert run(f"{work['module']}:make", "--path", ".", "--weights", "weights.pt",
               "inputs.npy", "--sparsity", 0.5, "-o", "out.pt", "--quiet") == 0
    state = torch.load(work["dir"] / "out.pt", weights_only=True)
    expected = copy.deepcopy(work["model"])
    ecprune.prune(expected, work["x"], 0.5)
    torch.nn.utils.prune.remove(expected[0], "weight")
    torch.testing.assert_close(state["0.weight"], expected[0].weight.detach(), rtol=0, atol=0)


def test_factory_from_a_file_path(work):
    assert run(f"{work['module']}.py:make", "--weights", "weights.pt", "inputs.npy",
               "--sparsity", 0.5, "-o", "out.pt", "--quiet") == 0
    report = json.loads((work["dir"] / "out.json").read_text())
    assert report["outputs"]["model_format"] == "state_dict"
    assert (report["kept"], report["total"]) == (216, 432)
    model = work["model"]
    model.load_state_dict(torch.load(work["dir"] / "out.pt", weights_only=True))


@pytest.mark.parametrize("data", ["data.npz", "data.pt", "data.csv"])
def test_gradient_reads_targets_from_every_format(work, data):
    extra = ["--target-column", "label"] if data.endswith(".csv") else []
    assert run("model.pt", data, *extra, "--trust-model", "--method", "gradient",
               "--sparsity", 0.5, "-o", "out.pt", "--quiet") == 0
    expected = copy.deepcopy(work["model"])
    dataset = torch.utils.data.TensorDataset(work["x"], work["y"])
    ecprune.prune(expected, dataset, 0.5, method="gradient")
    pruned = torch.load(work["dir"] / "out.pt", weights_only=False)
    for got, want in zip(linear_weights(pruned), linear_weights(expected), strict=True):
        assert torch.equal(got == 0, want == 0)


@pytest.mark.parametrize("data", ["inputs.npy", "data.npz", "data.pt", "data.csv"])
def test_every_format_gives_the_same_inputs(work, data):
    loaded = load_data(work["dir"] / data)
    expected = work["x"] if data != "data.csv" else torch.column_stack(
        [work["x"], work["y"].double()])
    torch.testing.assert_close(loaded.inputs.double(), expected.double(), rtol=1e-8, atol=0)


def test_csv_targets_by_index_and_pt_tuples(work):
    by_index = load_data(work["dir"] / "data.csv", target_column="-1")
    assert by_index.targets.dtype == torch.int64 and torch.equal(by_index.targets, work["y"])
    torch.save((work["x"], work["y"]), work["dir"] / "pair.pt")
    pair = load_data(work["dir"] / "pair.pt")
    assert torch.equal(pair.inputs, work["x"]) and torch.equal(pair.targets, work["y"])


def test_max_samples_is_a_seeded_subset(work):
    first = load_data(work["dir"] / "data.npz", max_samples=50, seed=3)
    again = load_data(work["dir"] / "data.npz", max_samples=50, seed=3)
    other = load_data(work["dir"] / "data.npz", max_samples=50, seed=4)
    assert torch.equal(first.inputs, again.inputs) and not torch.equal(first.inputs, other.inputs)
    rows = {tuple(row.tolist()) for row in work["x"]}
    assert all(tuple(row.tolist()) in rows for row in first.inputs)
    assert run("model.pt", "data.npz", "--trust-model", "--sparsity", 0.5, "--max-samples", 50,
               "-o", "out.pt", "-q") == 0
    report = json.loads((work["dir"] / "out.json").read_text())
    assert (report["samples"], report["samples_available"]) == (50, SAMPLES)


def test_error_budget_reports_prediction_within_budget_and_the_measured_error(work):
    assert run("model.pt", "inputs.npy", "--trust-model", "--error-budget", 0.02, "-o",
               "out.pt", "-q") == 0
    report = json.loads((work["dir"] / "out.json").read_text())
    model = copy.deepcopy(work["model"])
    choice = ecprune.budget_sparsity(model, ecprune.importance(model, work["x"]), 0.02)
    assert report["total"] - report["kept"] == choice.removed > 0
    assert report["relative_predicted_error"] <= 0.02
    pruned = torch.load(work["dir"] / "out.pt", weights_only=False)
    measured = ecprune.output_error(work["model"], pruned, work["x"])
    assert report["relative_measured_error"] == pytest.approx(measured.relative, rel=1e-9)
    assert report["requested"] == {"error_budget": 0.02}


def test_compact_writes_the_smaller_model_with_the_same_outputs(work):
    assert run("model.pt", "inputs.npy", "--trust-model", "--sparsity", 0.95, "--compact",
               "-o", "out.pt", "-q") == 0
    report = json.loads((work["dir"] / "out.json").read_text())
    small = torch.load(work["dir"] / "out.pt", weights_only=False)
    compaction = report["compaction"]
    assert {k: tuple(v) for k, v in compaction["compact_shapes"].items()} == \
        ecprune.layer_shapes(small)
    widths = [shape[0] for shape in compaction["compact_shapes"].values()]
    assert widths[-1] == N_OUT and sum(widths[:-1]) < 32
    assert compaction["max_abs_output_change"] < 1e-5


def cli_error(capsys, *args):
    """Run, expect exit code 2, return the one-line message."""
    assert run(*args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return err


@pytest.fixture
def existing(work):
    """An output file that must survive failed runs byte for byte."""
    path = work["dir"] / "out.pt"
    path.write_bytes(b"precious")
    return path


@pytest.mark.parametrize(("setup", "args", "message"), [
    (lambda d: (d / "bad.pt").write_bytes(b"\x80garbage"),
     ["bad.pt", "inputs.npy", "--trust-model"], "'bad.pt' is not a readable PyTorch file"),
    (lambda d: (d / "cut.pt").write_bytes((d / "model.pt").read_bytes()[:400]),
     ["cut.pt", "inputs.npy"], "'cut.pt' is not a readable PyTorch file"),
    (lambda d: (d / "bad.npy").write_bytes(b"not numpy"),
     ["model.pt", "bad.npy", "--trust-model"], "'bad.npy' is not a readable NumPy file"),
    (lambda d: (d / "bad.npz").write_bytes(b"PK\x03\x04 broken"),
     ["model.pt", "bad.npz", "--trust-model"], "'bad.npz' is not a readable NumPy file"),
    (lambda d: (d / "bad.csv").write_text("1,2\n3,oops\n"),
     ["model.pt", "bad.csv", "--trust-model"], "'bad.csv' is not a numeric CSV file"),
    (lambda d: np.save(d / "wide.npy", np.zeros((4, N_IN + 1), np.float32)),
     ["model.pt", "wide.npy", "--trust-model"],
     f"Linear layer '0' expects {N_IN} input features but the data gives it {N_IN + 1}"),
    (lambda d: None, ["model.pt", "inputs.npy", "--trust-model", "--method", "obd"],
     "Unknown --method 'obd'; choose one of ecp"),
    (lambda d: None, ["model.pt", "inputs.npy"], "holds pickled Python objects"),
    (lambda d: None, ["model.pt", "inputs.npy", "--trust-model", "--device", "abacus"],
     "Unknown --device 'abacus'"),
    (lambda d: None, ["model.pt", "inputs.npy", "--trust-model", "--method", "gradient"],
     "--method gradient needs targets"),
    (lambda d: None, ["model.pt", "inputs.npy", "--trust-model", "--allocation", "refit"],
     "allocation='refit' applies to method(s) ['ecp-refit', 'ecp-admm'], not 'ecp'"),
    (lambda d: None, ["weights.pt", "inputs.npy"], "holds a state dict, not a model"),
    (lambda d: None, ["missing.pt", "inputs.npy"], "The model file 'missing.pt' does not exist"),
    (lambda d: None, ["model.pt", "inputs.txt", "--trust-model"],
     "The data file 'inputs.txt' does not exist"),
])
def test_errors_exit_2_with_one_line_and_overwrite_nothing(work, existing, capsys, setup, args,
                                                           message):
    setup(work["dir"])
    err = cli_error(capsys, *args, "--sparsity", 0.5, "-o", "out.pt", "--force")
    assert message in err
    assert existing.read_bytes() == b"precious"
    assert not (work["dir"] / "out.json").exists()


def test_pickled_module_error_says_why(work, capsys):
    err = cli_error(capsys, "model.pt", "inputs.npy", "--sparsity", 0.5)
    assert "torch.nn.modules.container.Sequential" in err
    assert "runs code stored in the file" in err and "--trust-model" in err


@pytest.mark.parametrize("taken", ["out.pt", "out.json"])
def test_existing_outputs_need_force(work, capsys, taken):
    path = work["dir"] / taken
    path.write_bytes(b"precious")
    err = cli_error(capsys, "model.pt", "inputs.npy", "--trust-model", "--sparsity", 0.5,
                    "-o", "out.pt")
    assert f"The output file '{taken}' exists; pass --force" in err
    assert path.read_bytes() == b"precious"
    assert run("model.pt", "inputs.npy", "--trust-model", "--sparsity", 0.5, "-o", "out.pt",
               "--force", "-q") == 0
    assert path.read_bytes() != b"precious"


def test_quiet_prints_nothing(work, capsys):
    assert run("model.pt", "inputs.npy", "--trust-model", "--sparsity", 0.5, "-q") == 0
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_console_errors_have_no_traceback_and_help_has_examples(work):
    failed = subprocess.run([sys.executable, "-m", "ecprune", "prune", "model.pt", "inputs.npy",
                             "--sparsity", "0.5"], capture_output=True, text=True)
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    assert failed.stderr.count("\n") == 1
    shown = subprocess.run([sys.executable, "-m", "ecprune", "prune", "--help"],
                           capture_output=True, text=True, check=True).stdout
    assert "examples:" in shown and "--trust-model" in shown and "--error-budget" in shown


def test_layer_scope_and_a_subset_of_layers(work):
    assert run("model.pt", "inputs.npy", "--trust-model", "--sparsity", 0.5, "--scope", "layer",
               "--layers", "0,4", "--method", "magnitude", "-o", "out.pt", "-q") == 0
    report = json.loads((work["dir"] / "out.json").read_text())
    assert list(report["layers"]) == ["0", "4"]
    assert [layer["sparsity"] for layer in report["layers"].values()] == [0.5, 0.5]
    assert report["predicted_error"] is None and report["measured_error"] > 0
    pruned = torch.load(work["dir"] / "out.pt", weights_only=False)
    assert int((pruned[2].weight == 0).sum()) == 0


def test_pickled_custom_class_loads_with_path(work, capsys, monkeypatch):
    name = f"custom_{uuid.uuid4().hex[:8]}"
    (work["dir"] / "lib").mkdir()
    (work["dir"] / "lib" / f"{name}.py").write_text(
        "import torch\n\n\nclass Net(torch.nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n"
        f"        self.body = torch.nn.Sequential(torch.nn.Linear({N_IN}, 8), torch.nn.ReLU(),"
        f" torch.nn.Linear(8, {N_OUT}))\n\n"
        "    def forward(self, x):\n        return self.body(x)\n")
    with monkeypatch.context() as patch:
        patch.syspath_prepend(str(work["dir"] / "lib"))
        module = __import__(name)
        torch.save(module.Net(), work["dir"] / "custom.pt")
    del sys.modules[name]  # as in a fresh process
    err = cli_error(capsys, "custom.pt", "inputs.npy", "--trust-model", "--sparsity", 0.5)
    assert f"No module named '{name}'" in err and "pass --path FOLDER" in err
    assert run("custom.pt", "inputs.npy", "--trust-model", "--path", "lib", "--sparsity", 0.5,
               "-o", "out.pt", "-q") == 0
    assert json.loads((work["dir"] / "out.json").read_text())["layers"].keys() == {"body.0",
                                                                                     "body.2"}


@pytest.mark.parametrize("extra", [["--method", "ecp-refit"], ["--method", "sparsegpt"],
                                   ["--steps", 3], ["--method", "ecp-refit", "--allocation",
                                                    "global"]])
def test_reconstructions_and_steps_run_the_library_prune(work, extra):
    assert run("model.pt", "inputs.npy", "--trust-model", "--sparsity", 0.6, "-o", "out.pt",
               "--quiet", *extra) == 0
    pruned = torch.load(work["dir"] / "out.pt", weights_only=False)
    expected = copy.deepcopy(work["model"])
    options = dict(zip([e.lstrip("-") for e in extra[::2]], extra[1::2], strict=True))
    ecprune.prune(expected, work["x"], 0.6, method=options.get("method", "ecp"),
                  steps=int(options.get("steps", 1)), allocation=options.get("allocation"))
    for got, want in zip(linear_weights(pruned), linear_weights(expected), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    report = json.loads((work["dir"] / "out.json").read_text())
    assert report["total"] - report["kept"] == round(0.6 * report["total"])


def test_error_budget_refuses_steps(work, capsys):
    assert run("model.pt", "inputs.npy", "--trust-model", "--error-budget", 0.1, "--steps", 2) == 2
    assert "--error-budget prunes in one step; drop --steps." in capsys.readouterr().err
