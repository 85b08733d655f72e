"""prune_neurons: exact counts, smaller layers equal to zeroed ones, per-unit modules, coupled
units, all or nothing, identities, the report and clear errors."""

from __future__ import annotations

import copy
import json
import sys

import pytest
import torch
from torch import nn

import ecprune
from conftest import mlp
from ecprune.structured import find_groups

# Shrinking drops zero columns from the products: the sums lose terms that are exactly zero,
# and the refit's Gram matrices are the same numbers, so float64 outputs agree to rounding.
SAME = {"rtol": 0, "atol": 1e-12}
METHODS = [("ecp-refit", {}), ("ecp", {"shift": "joint"}), ("ecp", {"shift": "rows"}),
           ("obs", {}), ("magnitude", {}), ("random", {})]


def inputs(n_in: int, n: int = 256, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, n_in, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def output(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(x)


def state(model: nn.Module) -> dict:
    """Every parameter and buffer by name: (id, shape, values)."""
    return {name: (id(t), tuple(t.shape), t.detach().clone())
            for name, t in [*model.named_parameters(), *model.named_buffers()]}


def assert_same_state(before: dict, after: dict) -> None:
    assert before.keys() == after.keys()
    for name, (ident, shape, values) in before.items():
        assert after[name][:2] == (ident, shape), name
        torch.testing.assert_close(after[name][2], values, rtol=0, atol=0)


class Residual(nn.Module):
    def __init__(self, width: int = 6):
        super().__init__()
        torch.manual_seed(1)
        self.a, self.b = nn.Linear(4, width), nn.Linear(width, width)
        self.c, self.d = nn.Linear(width, 3), nn.Linear(width, 3)

    def forward(self, x):
        h = torch.relu(self.a(x))
        h = h + torch.tanh(self.b(h))
        return self.c(h) - self.d(h)


class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.a, self.b, self.c = nn.Linear(4, 3), nn.Linear(4, 5), nn.Linear(8, 2)

    def forward(self, x):
        return self.c(torch.cat([torch.tanh(self.a(x)), torch.sigmoid(self.b(x))], 1))


class InputResidual(nn.Module):
    """``x + f(x)``: the units of ``a`` are tied to the input features, which never go."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 6), nn.Linear(6, 2)

    def forward(self, x):
        return self.c(torch.tanh(self.b(x + torch.relu(self.a(x)))))


def normalised(seed: int = 4) -> nn.Sequential:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.PReLU(8), nn.Dropout(0.2),
                          nn.Linear(8, 6), nn.LayerNorm(6), nn.Tanh(), nn.Linear(6, 2)).double()
    with torch.no_grad():  # running statistics and affine terms that differ per unit
        model[1].running_mean.copy_(torch.linspace(-1, 1, 8))
        model[1].running_var.copy_(torch.linspace(0.5, 2, 8))
        model[1].weight.copy_(torch.linspace(0.5, 1.5, 8))
        model[1].bias.copy_(torch.linspace(-0.3, 0.3, 8))
        model[2].weight.copy_(torch.linspace(-0.5, 0.9, 8))
        model[5].weight.copy_(torch.linspace(0.8, 1.2, 6))
        model[5].bias.copy_(torch.linspace(-0.1, 0.1, 6))
    return model


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.8])
@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize(("method", "config"), METHODS[:1] + METHODS[2:])
def test_exactly_round_fraction_of_the_units_go(fraction, scope, method, config):
    model = mlp([5, 10, 7, 3], nn.Tanh, seed=0)
    report = ecprune.prune_neurons(model, inputs(5), fraction, method, scope, **config)
    assert report.removed_units == round(fraction * 17)
    assert report.total_units == 17
    assert [model[0].out_features, model[2].out_features] == list(report.widths.values())
    if scope == "layer":
        assert report.widths == {"0": 10 - round(fraction * 10),
                                 "2": 17 - round(fraction * 17) - 10 + round(fraction * 10)}


def test_tied_scores_still_remove_exactly_k_units():
    model = mlp([3, 6, 2], nn.Tanh)
    with torch.no_grad():
        model[0].weight.fill_(0.5)
        model[2].weight.fill_(0.5)
    report = ecprune.prune_neurons(model, inputs(3), 0.5, "magnitude")
    assert report.groups["0"].removed == (0, 1, 2)  # ties go by position
    assert model[0].weight.shape == (3, 3)


@pytest.mark.parametrize(("method", "config"), METHODS)
def test_the_smaller_network_computes_what_the_zeroed_one_does(method, config):
    model = mlp([5, 9, 7, 3], nn.Tanh, seed=5)
    x = inputs(5)
    zeroed = copy.deepcopy(model)
    report = ecprune.prune_neurons(model, x, 0.5, method, **config)
    masked = ecprune.prune_neurons(zeroed, x, 0.5, method, shrink=False, **config)
    assert {n: g.removed for n, g in report.groups.items()} == \
        {n: g.removed for n, g in masked.groups.items()}
    assert masked.after == masked.before and report.after != report.before
    for name, group in report.groups.items():
        assert (zeroed.get_submodule(name).weight[list(group.removed)] == 0).all()
    torch.testing.assert_close(output(model, x), output(zeroed, x), **SAME)
    assert masked.measured_error == pytest.approx(report.measured_error, rel=1e-9)


def test_compensation_lowers_the_error_of_removing_the_same_units():
    model = mlp([5, 9, 3], nn.Sigmoid, seed=6)
    x = inputs(5)
    bare = copy.deepcopy(model)
    report = ecprune.prune_neurons(model, x, 0.5, "ecp")
    keep = [u for u in range(9) if u not in report.groups["0"].removed]
    with torch.no_grad():
        bare[2].weight[:, report.groups["0"].removed] = 0
    dense = mlp([5, 9, 3], nn.Sigmoid, seed=6)
    bare_error = (output(bare, x) - output(dense, x)).square().sum(1).mean().item()
    assert report.measured_error < 0.5 * bare_error
    assert model[0].weight.shape == (len(keep), 5)


def test_fraction_zero_is_the_identity():
    model = normalised()
    x = inputs(4)
    before, expected = state(model), output(model, x)
    report = ecprune.prune_neurons(model, x, 0.0)
    assert_same_state(before, state(model))
    torch.testing.assert_close(output(model, x), expected, rtol=0, atol=0)
    assert report.removed_units == 0 and report.measured_error == 0
    assert report.after == report.before


def test_parameters_keep_their_identity_and_an_optimizer_its_references():
    model = mlp([4, 8, 3], nn.Tanh)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ids = {name: id(p) for name, p in model.named_parameters()}
    ecprune.prune_neurons(model, inputs(4), 0.5, "ecp-refit")
    assert {name: id(p) for name, p in model.named_parameters()} == ids
    assert model[0].weight.shape == (4, 4) and model[2].weight.shape == (3, 4)
    loss = model(inputs(4, n=8)).square().sum()
    loss.backward()
    optimizer.step()  # the optimizer holds the same (now smaller) Parameters
    assert optimizer.param_groups[0]["params"][0] is model[0].weight


def test_prelu_batchnorm_and_layernorm_shrink_with_their_units():
    model = normalised()
    dense = copy.deepcopy(model)
    x = inputs(4)
    report = ecprune.prune_neurons(model, x, 0.5, "ecp-refit", scope="layer")
    kept1 = [u for u in range(8) if u not in report.groups["0"].removed]
    kept2 = [u for u in range(6) if u not in report.groups["4"].removed]
    assert (len(kept1), len(kept2)) == (4, 3)
    batch_norm, prelu, layer_norm = model[1], model[2], model[5]
    assert batch_norm.num_features == 4 and prelu.num_parameters == 4
    assert layer_norm.normalized_shape == (3,)
    for module, reference, kept in ((batch_norm, dense[1], kept1), (prelu, dense[2], kept1),
                                    (layer_norm, dense[5], kept2)):
        for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
            if tensor.ndim:
                torch.testing.assert_close(tensor.detach(), getattr(reference, name)[kept],
                                           rtol=0, atol=0)
    assert output(model, x).shape == (256, 2)
    assert report.groups["0"].layers == ("0",) and report.coupling == "torch-pruning"
    assert (report.groups["0"].exact, report.groups["4"].exact) == (True, False)


def test_batchnorm_and_prelu_removal_equals_zeroing_the_consumer_columns():
    model = normalised()
    x = inputs(4)
    zeroed = copy.deepcopy(model)
    ecprune.prune_neurons(model, x, 0.5, "ecp", layers=["0"])
    ecprune.prune_neurons(zeroed, x, 0.5, "ecp", layers=["0"], shrink=False)
    torch.testing.assert_close(output(model, x), output(zeroed, x), **SAME)


def test_residual_coupled_units_go_together_from_every_layer():
    model = Residual()
    x = inputs(4).float()
    groups = find_groups(model, x[:8]).groups
    assert list(groups) == ["a"]
    assert sorted(s.module for s in groups["a"].producers) == ["a", "b"]
    assert sorted(s.module for s in groups["a"].consumers) == ["b", "c", "d"]
    report = ecprune.prune_neurons(model, x, 0.5, "ecp-refit")
    assert report.widths == {"a": 3}
    assert (model.a.out_features, model.b.in_features, model.b.out_features,
            model.c.in_features, model.d.in_features) == (3, 3, 3, 3, 3)
    assert output(model, x).shape == (256, 3)


def test_concatenated_units_lose_their_own_columns_of_the_consumer():
    model = Concat().double()
    x = inputs(4)
    zeroed = copy.deepcopy(model)
    report = ecprune.prune_neurons(model, x, 0.5, "ecp", scope="layer")
    ecprune.prune_neurons(zeroed, x, 0.5, "ecp", scope="layer", shrink=False)
    removed = [*report.groups["a"].removed, *(3 + u for u in report.groups["b"].removed)]
    assert (zeroed.c.weight[:, removed] == 0).all() and len(removed) == 4
    assert model.c.in_features == 4
    torch.testing.assert_close(output(model, x), output(zeroed, x), **SAME)


def test_units_without_a_safe_removal_are_never_touched():
    model = InputResidual()
    x = inputs(4).float()
    a_before = state(model.a)
    report = ecprune.prune_neurons(model, x, 0.5, "ecp")
    assert "a" in report.skipped and "forward pass" in report.skipped["a"]
    assert list(report.groups) == ["b"] and report.removed_units == 3
    assert_same_state(a_before, state(model.a))
    assert output(model, x).shape == (256, 2)


def test_a_failure_midway_leaves_the_model_as_it_was(monkeypatch):
    model = normalised()
    x = inputs(4)
    before, expected = state(model), output(model, x)
    shapes = ecprune.layer_shapes(model)

    def fail(*args, **kwargs):
        raise RuntimeError("injected")

    # the consumers' biases have moved and the layers have shrunk when the refit starts
    monkeypatch.setattr("ecprune.structured.methods.refit_consumers", fail)
    with pytest.raises(RuntimeError, match="injected"):
        ecprune.prune_neurons(model, x, 0.5, "ecp-refit")
    assert_same_state(before, state(model))
    assert ecprune.layer_shapes(model) == shapes
    assert (model[2].num_parameters, model[5].normalized_shape) == (8, (6,))
    torch.testing.assert_close(output(model, x), expected, rtol=0, atol=0)


def test_a_failure_after_adding_biases_removes_them(monkeypatch):
    model = mlp([4, 6, 3], nn.Tanh)
    model[2].bias = None
    monkeypatch.setattr("ecprune.structured.methods.remove_units",
                        lambda *a, **k: (_ for _ in ()).throw(RuntimeError("injected")))
    with pytest.raises(RuntimeError, match="injected"):
        ecprune.prune_neurons(model, inputs(4), 0.5, "ecp", add_bias=True)
    assert model[2].bias is None and model[2].weight.shape == (3, 6)


def test_the_report_counts_widths_parameters_and_multiply_adds():
    model = mlp([5, 10, 6, 3], nn.Tanh)
    report = ecprune.prune_neurons(model, inputs(5), 0.5, "ecp", scope="layer")
    assert report.before.shapes == {"0": (10, 5), "2": (6, 10), "4": (3, 6)}
    assert report.after.shapes == {"0": (5, 5), "2": (3, 5), "4": (3, 3)}
    assert report.before.macs == 50 + 60 + 18 and report.after.macs == 25 + 15 + 9
    assert report.before.parameters == 50 + 10 + 60 + 6 + 18 + 3
    assert report.after.parameters == sum(p.numel() for p in model.parameters())
    assert report.predicted_error == pytest.approx(
        sum(g.predicted_error for g in report.groups.values()))
    assert report.relative_measured_error == report.measured_error / report.mean_output_sq
    entry = json.loads(json.dumps(report.to_dict()))
    assert entry["widths"] == {"0": 5, "2": 3} and entry["after"]["shapes"]["2"] == [3, 5]
    assert entry["shift"] == "joint" and entry["removed_units"] == 8
    assert "parameters: 147 -> 60" in ecprune.structured.format_table(report)


def test_the_sequential_walk_finds_the_groups_torch_pruning_finds():
    model = normalised()
    x = inputs(4)
    found = find_groups(model, x[:8], coupling="torch-pruning")
    walked = find_groups(model, x[:8], coupling="sequential")
    assert (found.finder, walked.finder) == ("torch-pruning", "sequential")

    def describe(groups):
        return {name: (g.size, g.exact, [(s.module, s.positions.tolist()) for s in
                                         (*g.producers, *g.consumers, *g.members)])
                for name, g in groups.items()}

    assert describe(found.groups) == describe(walked.groups)
    assert [g.exact for g in walked.groups.values()] == [True, False]  # LayerNorm mixes units


def test_without_torch_pruning_a_chain_still_works_and_other_models_say_what_to_install(
        monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_pruning", None)  # import fails
    model = mlp([4, 6, 3], nn.Tanh)
    assert ecprune.prune_neurons(model, inputs(4), 0.5).coupling == "sequential"
    with pytest.raises(ImportError, match=r"pip install 'ecprune\[structured\]'"):
        ecprune.prune_neurons(Residual(), inputs(4).float(), 0.5)
    with pytest.raises(ImportError, match=r"pip install 'ecprune\[structured\]'"):
        ecprune.prune_neurons(mlp([4, 6, 3]), inputs(4), 0.5, coupling="torch-pruning")


def test_a_chain_with_a_module_the_walk_cannot_read_names_it():
    model = nn.Sequential(nn.Linear(4, 6), nn.Softmax(dim=1), nn.Linear(6, 2)).double()
    with pytest.raises(ValueError, match=r"module '1' \(Softmax\) between the Linear layers "
                                         r"'0' and '2'"):
        ecprune.prune_neurons(model, inputs(4), 0.5, coupling="sequential")


@pytest.mark.parametrize("fraction", [1.0, -0.1, 1.5, float("nan")])
def test_a_fraction_outside_zero_one_is_an_error(fraction):
    with pytest.raises(ValueError, match=r"'fraction' parameter of prune_neurons must be a "
                                         r"float in the range \[0.0, 1.0\)\. Got"):
        ecprune.prune_neurons(mlp([3, 4, 2]), inputs(3), fraction)


@pytest.mark.parametrize("fraction", ["0.5", True, None])
def test_a_fraction_that_is_no_number_is_a_type_error(fraction):
    with pytest.raises(TypeError, match="'fraction' parameter of prune_neurons"):
        ecprune.prune_neurons(mlp([3, 4, 2]), inputs(3), fraction)


def test_bad_methods_options_and_scopes_are_clear_errors():
    model, x = mlp([3, 4, 2]), inputs(3)
    with pytest.raises(ValueError, match=r"'method' parameter of prune_neurons must be one of "
                                         r"'ecp-refit', 'ecp', 'obs', 'magnitude', 'random'\. "
                                         r"Got 'sparsegpt'"):
        ecprune.prune_neurons(model, x, 0.5, "sparsegpt")
    with pytest.raises(TypeError, match=r"damping=0\.1 applies to method\(s\) \['ecp-refit', "
                                        r"'obs'\] of prune_neurons, not 'ecp'"):
        ecprune.prune_neurons(model, x, 0.5, "ecp", damping=0.1)
    with pytest.raises(TypeError, match=r"block_size=4 applies to the weight-pruning "
                                        r"method\(s\) \['sparsegpt', 'sparsegpt-refit'\]"):
        ecprune.prune_neurons(model, x, 0.5, "ecp", block_size=4)
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['dampng'\]"):
        ecprune.prune_neurons(model, x, 0.5, "ecp", dampng=0.1)
    with pytest.raises(ValueError, match=r"'shift' parameter of prune_neurons must be one of "
                                         r"'auto', 'joint', 'rows'\. Got 'both'"):
        ecprune.prune_neurons(model, x, 0.5, "ecp", shift="both")
    with pytest.raises(ValueError, match=r"'scope' parameter of prune_neurons must be one of "
                                         r"'global', 'layer'\. Got 'row'"):
        ecprune.prune_neurons(model, x, 0.5, "ecp", "row")
    with pytest.raises(ValueError, match=r"'coupling' parameter of prune_neurons must be one "
                                         r"of 'auto', 'torch-pruning', 'sequential'"):
        ecprune.prune_neurons(model, x, 0.5, coupling="fx")
    with pytest.raises(TypeError, match="configure the instance instead"):
        ecprune.prune_neurons(model, x, 0.5, ecprune.structured.ECPUnits(), shift="rows")


def test_bad_models_and_data_are_clear_errors():
    model, x = mlp([3, 4, 2]), inputs(3)
    with pytest.raises(ValueError, match="streams the data several times"):
        ecprune.prune_neurons(model, (batch for batch in [x]), 0.5)
    masked = mlp([3, 4, 2])
    torch.nn.utils.prune.l1_unstructured(masked[0], "weight", 0.5)
    with pytest.raises(ValueError, match=r"carry torch.nn.utils.prune masks.*bake_masks"):
        ecprune.prune_neurons(masked, x, 0.5)
    with pytest.raises(ValueError, match=r"'layers' parameter \['2'\] selects no hidden layer"):
        ecprune.prune_neurons(model, x, 0.5, layers=["2"])
    with pytest.raises(ValueError, match=r"at most 1 can go: each of the 1 hidden layers keeps "
                                         r"at least 1"):
        ecprune.prune_neurons(mlp([3, 2, 2]), x, 0.9)
    no_bias = mlp([3, 4, 2])
    no_bias[2].bias = None
    with pytest.raises(ValueError, match=r"\['2'\] have no bias\. Pass add_bias=True"):
        ecprune.prune_neurons(no_bias, x, 0.5, "ecp")
    assert no_bias[0].out_features == 4


class Shared(nn.Module):
    """``b`` runs twice per forward: every unit it produces or consumes is left alone."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(7)
        self.a, self.b, self.c = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 2)

    def forward(self, x):
        return self.c(torch.tanh(self.b(torch.tanh(self.b(torch.tanh(self.a(x)))))))


def test_units_of_a_layer_called_twice_are_left_alone_with_the_reason():
    model = Shared()
    x = inputs(4).float()
    b_before = state(model.b)
    report = ecprune.prune_neurons(model, x, 0.5, "ecp")
    assert list(report.skipped) == ["a"] and report.total_units == 0  # a, b: one group
    assert "'b' runs 2 time(s) per forward" in report.skipped["a"]
    assert_same_state(b_before, state(model.b))
