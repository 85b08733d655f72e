"""Semi-structured N:M sparsity (``pattern="N:M"``) against independent float64 oracles."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune
from torch.utils.data import TensorDataset

import ecprune
from conftest import bias_jacobians, layer_io, mlp
from ecprune.cli import main
from ecprune.masking import Pattern, parse_pattern, satisfies_pattern
from ecprune.methods import REGISTRY
from ecprune.reconstruct.admm import project

WIDTHS = [8, 16, 8, 4]  # every in_features a multiple of 8
LINEARS = ("0", "2", "4")
SAMPLES = 60


@pytest.fixture
def net_and_data():
    model = mlp(WIDTHS, seed=3)
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(SAMPLES, WIDTHS[0], dtype=torch.float64, generator=generator) + 0.3
    return model, x


def data_for(method, x):
    if REGISTRY[method].needs_targets:
        return TensorDataset(x, torch.arange(len(x)) % WIDTHS[-1])
    return x


def options_for(method):
    return {"nonlinear_samples": 16} if method == "nonlinear" else {}


def group_counts(layer, m):
    """Kept weights per (row, group of m consecutive inputs) of a pruned layer."""
    keep = layer.weight_mask.bool()
    return keep.reshape(keep.shape[0], -1, m).sum(-1)


def snapshot(model):
    return {key: value.clone() for key, value in model.state_dict().items()}


def assert_unchanged(model, state):
    assert model.state_dict().keys() == state.keys()
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def oracle_removed(scores, present, n, m):
    """Per row and group: the absent weights, then the lowest scores (ties by position) until
    m - n are removed; plain Python sorting."""
    removed = torch.zeros_like(present)
    for i in range(scores.shape[0]):
        for start in range(0, scores.shape[1], m):
            columns = range(start, start + m)
            ranked = sorted(columns, key=lambda j: (bool(present[i, j]), float(scores[i, j]), j))
            for j in ranked[: m - n]:
                removed[i, j] = True
    return removed


# --- parsing and the helper ------------------------------------------------------------------

@pytest.mark.parametrize("bad", ["3:2", "0:4", "4:4", "a:b", "2-4", "2:4:8", "", 2, None, "-1:4"])
def test_malformed_patterns_name_the_value_and_the_form(bad):
    with pytest.raises(ValueError, match=r"'N:M' with integers 0 < N < M.*Got " + repr(bad)
                       .replace("(", r"\(").replace(")", r"\)")):
        parse_pattern(bad)


def test_parse_and_pattern_properties():
    pattern = parse_pattern(" 4 : 8 ")
    assert pattern == Pattern(4, 8) and str(pattern) == "4:8"
    assert pattern.sparsity == 0.5 and pattern.removals == 4


def test_satisfies_pattern_counts_nonzeros_per_group():
    mask = torch.tensor([[1, 1, 0, 0, 1, 0, 0, 0], [0, 1, 0, 1, 1, 1, 1, 0]], dtype=torch.bool)
    assert not satisfies_pattern(mask, "2:4")  # row 1, second group keeps 3
    assert satisfies_pattern(mask[:1], "2:4")
    assert satisfies_pattern(mask, "5:8") and not satisfies_pattern(mask, "4:8")
    assert satisfies_pattern(mask.double() * 3.0, "3:4")
    linear = nn.Linear(8, 2)
    with torch.no_grad():
        linear.weight.copy_(mask.double() - 0.5)  # no zero: every weight is kept
    assert not satisfies_pattern(linear, "3:4")
    with pytest.raises(ValueError, match="n_in a multiple of M=4; got shape \\(2, 6\\)"):
        satisfies_pattern(torch.ones(2, 6), "2:4")


# --- every method keeps the pattern ----------------------------------------------------------

@pytest.mark.parametrize("method", list(REGISTRY))
def test_every_method_keeps_exactly_n_of_every_group(net_and_data, method):
    model, x = net_and_data
    report = ecprune.prune(model, data_for(method, x), 0.5, method, pattern="2:4",
                           **options_for(method))
    for name in LINEARS:
        layer = model.get_submodule(name)
        assert (group_counts(layer, 4) == 2).all(), name
        assert satisfies_pattern(layer, "2:4")
        assert report.layers[name].kept == layer.weight.numel() // 2
    assert report.kept == report.total // 2 and report.scope == "2:4"
    assert report.sparsity == 0.5


@pytest.mark.parametrize("method", ["ecp", "sparsegpt", "ecp-admm"])
def test_weights_already_masked_count_as_removed_in_their_group(net_and_data, method):
    model, x = net_and_data
    earlier = torch.ones(16, 8, dtype=torch.bool)
    earlier[0, 1] = earlier[3, 4] = earlier[3, 5] = False  # one group with 1, one with 2
    torch_prune.custom_from_mask(model[0], "weight", earlier)
    ecprune.prune(model, x, None, method, pattern="2:4")
    assert (group_counts(model[0], 4) == 2).all()
    assert not model[0].weight_mask.bool()[~earlier].any()  # pruned weights stay pruned


def test_sparsity_may_be_left_out_and_prune_by_importance_takes_the_pattern(net_and_data):
    model, x = net_and_data
    twin = copy.deepcopy(model)
    first = ecprune.prune(model, x, pattern="1:4")
    scores = ecprune.importance(twin, x)
    second = ecprune.prune_by_importance(twin, scores, 0.75, pattern="1:4")
    assert first.kept == second.kept == first.total // 4
    for name in LINEARS:
        assert torch.equal(model.get_submodule(name).weight_mask,
                           twin.get_submodule(name).weight_mask)


# --- selection by the method's own scores ----------------------------------------------------

@pytest.mark.parametrize("method", ["ecp", "ecp-nocomp", "magnitude", "magnitude-comp",
                                    "gradient", "random", "wanda", "nonlinear"])
@pytest.mark.parametrize("text", ["2:4", "1:4", "3:4", "4:8"])
def test_each_group_loses_its_lowest_scores(net_and_data, method, text):
    model, x = net_and_data
    data, options = data_for(method, x), options_for(method)
    scores = ecprune.importance(copy.deepcopy(model), data, method, **options)
    ecprune.prune(model, data, None, method, pattern=text, **options)
    n, m = (int(k) for k in text.split(":"))
    for name in LINEARS:
        score = scores[name].score
        expected = oracle_removed(score, torch.ones_like(score, dtype=torch.bool), n, m)
        assert torch.equal(model.get_submodule(name).weight_mask == 0, expected), name


def test_tied_scores_are_broken_by_position():
    layer = nn.Linear(8, 2).double()
    with torch.no_grad():
        layer.weight.fill_(1.0)
    ecprune.prune(layer, torch.randn(10, 8, dtype=torch.float64), 0.5, "magnitude",
                  pattern="2:4")
    assert layer.weight_mask.tolist() == [[0, 0, 1, 1] * 2] * 2


# --- compensation ----------------------------------------------------------------------------

def test_ecp_bias_shifts_are_the_optimal_shifts_of_the_removed_weights(net_and_data):
    """delta*_ij = W_ij E[s_i a_j] / E[s_i], s_i = ||dy/db_i||^2 from torch.func Jacobians on
    the dense network, summed over the removed weights of each row."""
    dense, x = net_and_data
    pruned = copy.deepcopy(dense)
    scores = ecprune.importance(dense, x)
    ecprune.prune(pruned, x, 0.5, "ecp", pattern="2:4")
    for name in LINEARS:
        s = bias_jacobians(dense, name, x).square().sum(1)  # (N, n_layer)
        a = layer_io(dense, name, x)[0]  # (N, n_in)
        weight = dense.get_submodule(name).weight.detach()
        optimal = weight * (s.T @ a) / s.sum(0)[:, None]
        removed = pruned.get_submodule(name).weight_mask == 0
        torch.testing.assert_close(scores[name].bias_shift, optimal, rtol=1e-9, atol=1e-12)
        shift = pruned.get_submodule(name).bias - dense.get_submodule(name).bias
        torch.testing.assert_close(shift.detach(), (optimal * removed).sum(1), rtol=1e-9,
                                   atol=1e-12)


def test_magnitude_comp_shifts_by_the_mean_signal_of_the_removed_weights(net_and_data):
    dense, x = net_and_data
    pruned = copy.deepcopy(dense)
    ecprune.prune(pruned, x, 0.5, "magnitude-comp", pattern="2:4")
    for name in LINEARS:
        mean = layer_io(dense, name, x)[0].mean(0)
        weight = dense.get_submodule(name).weight.detach()
        removed = pruned.get_submodule(name).weight_mask == 0
        shift = (pruned.get_submodule(name).bias - dense.get_submodule(name).bias).detach()
        torch.testing.assert_close(shift, (weight * mean * removed).sum(1), rtol=1e-9,
                                   atol=1e-12)


# --- SparseGPT's N:M variant -----------------------------------------------------------------

def hessian(x, damping):
    design = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    h = design.T @ design / len(x)
    return h + damping * h.diagonal().mean() * torch.eye(len(h), dtype=x.dtype)


def sparsegpt_nm_oracle(rows, present, h, n, m):
    """Frantar & Alistarh 2023, N:M: columns left to right; at j % m == 0 each row removes the
    m - n lowest w_q^2 / [H_{F_q}^-1]_qq of columns j..j+m-1 (masked ones first), F_q = {q, ...};
    removing w_j updates F_j by OBS with the dense inverse of H[F_j, F_j]. No blocking, no
    Cholesky; the last column is the bias, never removed."""
    w, n_in = rows.clone(), rows.shape[1] - 1
    inverses = [torch.linalg.inv(h[j:, j:]) for j in range(n_in)]
    removed = torch.zeros(w.shape[0], n_in, dtype=torch.bool)
    for j in range(n_in):
        if j % m == 0:
            diagonal = torch.stack([inverses[q][0, 0] for q in range(j, j + m)])
            saliency = w[:, j:j + m].square() / diagonal
            saliency = torch.where(present[:, j:j + m], saliency, -torch.inf)
            removed[:, j:j + m] = oracle_removed(saliency, torch.ones_like(present[:, :m]), n, m)
        inverse = inverses[j]
        error = torch.where(removed[:, j], w[:, j], 0) / inverse[0, 0]
        w[:, j:] -= error[:, None] * inverse[0][None, :]
        w[removed[:, j], j] = 0
    return w, removed


@pytest.mark.parametrize(("text", "n_in", "block_size"),
                         [("2:4", 12, 128), ("2:4", 12, 4), ("2:4", 12, 6), ("1:4", 8, 8),
                          ("4:8", 16, 8), ("3:4", 8, 1)])
@pytest.mark.parametrize("damping", [0.0, 0.01])
def test_sparsegpt_nm_equals_the_papers_algorithm(text, n_in, block_size, damping):
    torch.manual_seed(0)
    layer = nn.Linear(n_in, 5).double()
    x = torch.randn(40, n_in, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x = x + torch.linspace(-1, 1, n_in, dtype=torch.float64)
    present = torch.ones(5, n_in, dtype=torch.bool)
    present[2, 1] = False
    torch_prune.custom_from_mask(layer, "weight", present)
    rows = torch.cat([layer.weight, layer.bias[:, None]], 1).detach()
    n, m = (int(k) for k in text.split(":"))
    expected, removed = sparsegpt_nm_oracle(rows, present, hessian(x, damping), n, m)
    ecprune.prune(layer, x, None, "sparsegpt", pattern=text, damping=damping,
                  block_size=block_size)
    assert torch.equal(layer.weight_mask == 0, removed)
    found = torch.cat([layer.weight, layer.bias[:, None]], 1).detach()
    torch.testing.assert_close(found, expected, rtol=1e-10, atol=1e-10)


# --- refits keep the pattern and are least squares on its support ----------------------------

def with_ones(a):
    return torch.cat([a, torch.ones(len(a), 1, dtype=a.dtype)], 1)


@pytest.mark.parametrize(("method", "options"),
                         [("ecp-refit", {}), ("ecp-refit", {"refine": "swaps"}),
                          ("sparsegpt-refit", {}), ("ecp-admm", {}),
                          ("ecp-admm", {"refine": "swaps"})])
def test_refit_keeps_the_pattern_and_equals_lstsq_on_the_support(net_and_data, method,
                                                                 options):
    dense, x = net_and_data
    pruned = copy.deepcopy(dense)
    ecprune.prune(pruned, x, 0.5, method, pattern="2:4", damping=0.0, **options)
    full_rank_rows = 0
    for name in LINEARS:
        layer = pruned.get_submodule(name)
        assert (group_counts(layer, 4) == 2).all(), name
        target = layer_io(dense, name, x)[1]
        design = with_ones(layer_io(pruned, name, x)[0])
        for i, keep in enumerate(layer.weight_mask.bool()):
            a = design[:, torch.cat([keep, torch.tensor([True])])]
            expected = torch.linalg.lstsq(a, target[:, i, None], driver="gelsd").solution[:, 0]
            found = torch.cat([layer.weight[i, keep], layer.bias[i, None]]).detach()
            torch.testing.assert_close(a @ found, a @ expected, rtol=1e-9, atol=1e-10)
            if torch.linalg.matrix_rank(a, rtol=1e-6) == a.shape[1]:
                torch.testing.assert_close(found, expected, rtol=1e-9, atol=1e-10)
                full_rank_rows += 1
    assert full_rank_rows >= 16


def test_network_objective_keeps_the_pattern(net_and_data):
    model, x = net_and_data
    ecprune.prune(model, x, 0.5, "ecp-refit", pattern="2:4", objective="network")
    assert all((group_counts(model.get_submodule(name), 4) == 2).all() for name in LINEARS)


def test_a_pattern_skips_the_allocation_curves(net_and_data, monkeypatch):
    model, x = net_and_data
    unpatterned = ecprune.importance(copy.deepcopy(model), x, "ecp-refit")
    assert unpatterned.curves is not None  # so the check below can fail

    def refused(*args, **kwargs):
        raise AssertionError("allocation curves computed under a pattern")

    monkeypatch.setattr(REGISTRY["ecp-refit"], "curves", refused)
    ecprune.prune(model, x, 0.5, "ecp-refit", pattern="2:4")
    assert all((group_counts(model.get_submodule(name), 4) == 2).all() for name in LINEARS)


def test_grouped_projection_keeps_all_but_the_lowest_of_every_group():
    generator = torch.Generator().manual_seed(0)
    point = torch.randn(3, 8, dtype=torch.float64, generator=generator)
    factors = torch.rand(3, 8, dtype=torch.float64, generator=generator)
    candidates = torch.ones(3, 8, dtype=torch.bool)
    candidates[1, 2] = False
    keep = project(point, factors, candidates, torch.tensor([[1, 2], [2, 1], [0, 3]]),
                   torch.arange(8) // 4)
    for i, removals in enumerate([[1, 2], [2, 1], [0, 3]]):
        for group, count in enumerate(removals):
            columns = range(4 * group, 4 * group + 4)
            ranked = sorted(columns, key=lambda j: (bool(candidates[i, j]),
                                                    float(point[i, j] ** 2 * factors[i, j]), j))
            absent = sum(not candidates[i, j] for j in columns)
            for j in columns:
                assert bool(keep[i, j]) == (j not in ranked[: absent + count]), (i, j)


# --- errors, all or nothing ------------------------------------------------------------------

def test_scope_with_a_pattern_is_an_error(net_and_data):
    model, x = net_and_data
    state = snapshot(model)
    for scope in ("global", "layer", "row"):
        with pytest.raises(ValueError, match="selects within each group of 4 inputs of a row, "
                           f"so scope and the methods' per-layer allocations do not apply. Got "
                           f"scope='{scope}'"):
            ecprune.prune(model, x, 0.5, "ecp-refit", scope, pattern="2:4")
    assert_unchanged(model, state)


def test_in_features_not_a_multiple_of_m_names_the_layer(net_and_data):
    x = net_and_data[1]
    model = mlp([8, 12, 8, 4])
    state = snapshot(model)
    with pytest.raises(ValueError, match="Linear layer '2' has in_features=12, not a multiple "
                                         "of M=8"):
        ecprune.prune(model, x, 0.5, pattern="4:8")
    assert_unchanged(model, state)
    ecprune.prune(model, x, 0.5, pattern="4:8", layers=["0", "4"])  # the way out
    assert (group_counts(model[0], 8) == 4).all()


@pytest.mark.parametrize("sparsity", [0.3, 0.75, 0.5 + 1e-9, 0])
def test_a_sparsity_other_than_one_minus_n_over_m_names_both(net_and_data, sparsity):
    model, x = net_and_data
    state = snapshot(model)
    with pytest.raises(ValueError, match=f"must be 1 - N/M = 0.5 with pattern='2:4'.*Got "
                                         f"{sparsity!r} instead"):
        ecprune.prune(model, x, sparsity, pattern="2:4")
    assert_unchanged(model, state)


def test_sparsity_within_rounding_is_accepted(net_and_data):
    x = net_and_data[1]
    model = mlp([8, 12, 8, 4])
    assert 2 / 3 != 1 - 1 / 3  # one rounding apart
    assert ecprune.prune(model, x, 2 / 3, pattern="1:3", layers=["2"]).layers["2"].kept == 32


@pytest.mark.parametrize("method", ["ecp", "sparsegpt", "ecp-refit"])
def test_a_group_already_over_pruned_is_an_error_and_nothing_changes(net_and_data, method):
    model, x = net_and_data
    earlier = torch.ones(8, 16, dtype=torch.bool)
    earlier[5, 4:7] = False
    torch_prune.custom_from_mask(model[2], "weight", earlier)
    state = snapshot(model)
    with pytest.raises(ValueError, match=r"Row 5, inputs 4\.\.7 of layer '2' already have 3 of 4 "
                                         r"weights pruned, more than the 2 that pattern='2:4' "
                                         r"removes"):
        ecprune.prune(model, x, 0.5, method, pattern="2:4")
    assert_unchanged(model, state)
    assert not torch_prune.is_pruned(model[0])


def test_steps_with_a_pattern_is_an_error(net_and_data):
    model, x = net_and_data
    with pytest.raises(ValueError, match=r"steps>1 is not supported with pattern='2:4'.*Got "
                                         r"steps=2"):
        ecprune.prune(model, x, 0.5, pattern="2:4", steps=2)


def test_malformed_pattern_through_prune(net_and_data):
    model, x = net_and_data
    state = snapshot(model)
    with pytest.raises(ValueError, match=r"The 'pattern' parameter of prune must be a string "
                                         r"'N:M'.*Got '2-4' instead"):
        ecprune.prune(model, x, 0.5, pattern="2-4")
    assert_unchanged(model, state)


def test_importance_and_error_budgets_refuse_a_pattern(net_and_data):
    model, x = net_and_data
    state = snapshot(model)
    with pytest.raises(ValueError, match="an error budget \\(prune_to_budget\\) cannot choose"):
        ecprune.prune_to_budget(model, x, 0.01, pattern="2:4")
    with pytest.raises(ValueError, match="importance\\(\\) got pattern='2:4'"):
        ecprune.importance(model, x, pattern="2:4")
    assert_unchanged(model, state)


def test_prune_by_importance_checks_scope_and_sparsity(net_and_data):
    model, x = net_and_data
    scores = ecprune.importance(model, x)
    with pytest.raises(ValueError, match="The 'scope' parameter of prune must be None"):
        ecprune.prune_by_importance(model, scores, 0.5, "layer", pattern="2:4")
    with pytest.raises(ValueError, match="The 'sparsity' parameter of prune must be 1 - N/M"):
        ecprune.prune_by_importance(model, scores, 0.4, pattern="2:4")
    assert not torch_prune.is_pruned(model[0])


def test_repruning_to_the_same_pattern_changes_nothing(net_and_data):
    model, x = net_and_data
    ecprune.prune(model, x, 0.5, "ecp-refit", pattern="2:4")
    state = snapshot(model)
    report = ecprune.prune(model, x, 0.5, "ecp-refit", pattern="2:4")
    assert report.kept == report.total // 2
    assert_unchanged(model, state)


# --- to_semi_structured ----------------------------------------------------------------------

CUDA_SM80 = torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 0)


def two_four_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 32))
    x = torch.randn(256, 128)
    ecprune.prune(model, x, pattern="2:4")
    return model, x


def test_to_semi_structured_on_cpu_is_an_error_naming_the_layer():
    model, _ = two_four_model()
    with pytest.raises(ValueError, match=r"layer '0' is on cpu, but PyTorch's semi-structured "
                                         r"sparse weights need a CUDA GPU of compute capability "
                                         r"8\.0 or more"):
        ecprune.to_semi_structured(model)
    assert torch_prune.is_pruned(model[0])  # untouched


def test_to_semi_structured_refuses_a_layer_that_is_not_two_four():
    model, _ = two_four_model()
    with torch.no_grad():
        model[2].weight_orig[3, 4:8] = 1.0
        model[2].weight_mask[3, 4:7] = 1.0  # three of four kept
    with pytest.raises(ValueError, match="layer '2' is not 2:4 sparse"):
        ecprune.to_semi_structured(model, layers=["2"])
    with pytest.raises(ValueError, match=r"layer '0' is not 2:4 sparse.*in_features=6"):
        ecprune.to_semi_structured(nn.Sequential(nn.Linear(6, 32)))


# Dense and sparse kernels both round the two layers' outputs to the dtype, summing in different
# orders: a few units of its rounding (float16: 2^-11, bfloat16: 2^-8) on outputs of order 1.
GPU_TOLERANCE = {torch.float16: 1e-2, torch.bfloat16: 5e-2}


@pytest.mark.skipif(not CUDA_SM80, reason="needs a CUDA GPU of compute capability 8.0 or more")
@pytest.mark.parametrize("dtype", list(GPU_TOLERANCE))
def test_to_semi_structured_computes_the_pruned_products_on_a_gpu(dtype):
    model, x = two_four_model()
    model = model.cuda().to(dtype)
    fast = ecprune.to_semi_structured(model)
    for name in ("0", "2"):
        weight = fast.get_submodule(name).weight
        assert isinstance(weight, torch.sparse.SparseSemiStructuredTensor), name
    assert torch_prune.is_pruned(model[0])  # the original keeps its masks
    inputs = x[:64].cuda().to(dtype)
    tolerance = GPU_TOLERANCE[dtype]
    with torch.no_grad():
        torch.testing.assert_close(fast(inputs), model(inputs), rtol=tolerance, atol=tolerance)


# --- command line ----------------------------------------------------------------------------

@pytest.fixture
def cli_files(tmp_path, monkeypatch):
    """model.pt (a pickled 8-16-16-3 Sequential, float32) and inputs.npy in the working folder."""
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.PReLU(16), nn.Linear(16, 16), nn.Tanh(),
                          nn.Linear(16, 3))
    torch.save(model, tmp_path / "model.pt")
    x = torch.randn(120, 8, generator=torch.Generator().manual_seed(1))
    np.save(tmp_path / "inputs.npy", x.numpy())
    return model, x


def cli(*args):
    return main(["prune", "model.pt", "inputs.npy", "--trust-model", *map(str, args)])


@pytest.mark.parametrize("extra", [[], ["--sparsity", 0.5, "--method", "sparsegpt"],
                                   ["--method", "wanda"]])
def test_cli_pattern_prunes_like_the_library(cli_files, extra):
    model, x = cli_files
    assert cli("--pattern", "2:4", "-o", "out.pt", "-q", *extra) == 0
    pruned = torch.load("out.pt", weights_only=False)
    expected = copy.deepcopy(model)
    method = dict(zip(extra[::2], extra[1::2], strict=True)).get("--method", "ecp")
    ecprune.prune(expected, x, None, method, pattern="2:4")
    ecprune.bake_masks(expected)
    for got, want in zip(pruned.modules(), expected.modules(), strict=True):
        if isinstance(got, nn.Linear):
            assert satisfies_pattern(got, "2:4")
            torch.testing.assert_close(got.weight, want.weight, rtol=1e-6, atol=1e-7)
    report = json.loads(Path("out.json").read_text())
    assert report["scope"] == "2:4" and report["requested"] == {"sparsity": 0.5}
    assert report["kept"] == report["total"] // 2


@pytest.mark.parametrize(("args", "message"), [
    (["--pattern", "2:4", "--scope", "layer"], "chosen within each group (sparsity 0.5); drop "
                                               "--scope."),
    (["--pattern", "2:4", "--steps", 2], "drop --steps."),
    (["--pattern", "2:4", "--error-budget", 0.1], "drop --error-budget."),
    (["--pattern", "2:4", "--sparsity", 0.3], "The 'sparsity' parameter of ecprune prune must "
                                              "be 1 - N/M = 0.5 with pattern='2:4'"),
    (["--pattern", "2-4"], "The 'pattern' parameter of ecprune prune --pattern must be a "
                           "string 'N:M'"),
    ([], "one of the arguments --sparsity, --error-budget, --neurons or --pattern is required."),
])
def test_cli_pattern_errors_exit_2_and_write_nothing(cli_files, capsys, args, message):
    assert cli(*args, "-o", "out.pt", "-q") == 2
    assert message in capsys.readouterr().err
    assert not Path("out.pt").exists()
