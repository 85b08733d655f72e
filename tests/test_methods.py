"""Methods as objects: the registry, options parsed once at the boundary, a user's own method end
to end, and prune_by_importance doing what prune does after scoring."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import ecprune
from conftest import mlp
from ecprune import methods
from ecprune.methods.registry import METHOD_OPTIONS

# A valid value of every method option (each must be accepted by the methods that own it).
OPTION_VALUES = {"loss": "mse", "nonlinear_samples": 7, "allocation": "global",
                 "sensitivity": "exact", "probes": 3, "damping": 0.05, "block_size": 4,
                 "refit_weighting": "sensitivity", "refine": "swaps", "max_swaps": 5,
                 "objective": "network", "network_passes": 1, "admm_iterations": 7,
                 "admm_rho": 0.5}


def states_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture
def net():
    model = mlp([5, 7, 6, 3], nn.Tanh, seed=3)
    x = torch.randn(120, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    y = torch.randint(0, 3, (120,), generator=torch.Generator().manual_seed(5))
    return model, x, TensorDataset(x, y)


def test_every_option_has_a_value_here_and_an_owner():
    assert set(OPTION_VALUES) == set(METHOD_OPTIONS)
    assert all(methods.owners(option) for option in METHOD_OPTIONS)


@pytest.mark.parametrize(("option", "method"), [
    (option, name) for option in OPTION_VALUES for name in ecprune.METHODS
    if name not in methods.owners(option)])
def test_an_option_the_method_does_not_use_is_a_type_error_naming_its_methods(net, option, method):
    model, _, data = net
    owners = methods.owners(option)
    value = OPTION_VALUES[option]
    message = rf"{option}={value!r} applies to method\(s\) {owners!r}, not {method!r}"
    for call in (lambda: ecprune.importance(model, data, method, **{option: value}),
                 lambda: ecprune.prune(model, data, 0.5, method, **{option: value}),
                 lambda: methods.get(method, **{option: value})):
        with pytest.raises(TypeError, match=message.replace("[", r"\[").replace("]", r"\]")):
            call()
    assert not torch.nn.utils.prune.is_pruned(model)


@pytest.mark.parametrize(("option", "method"), [
    (option, name) for option in OPTION_VALUES for name in methods.owners(option)])
def test_an_option_reaches_the_methods_that_own_it(option, method):
    configured = methods.get(method, **{option: OPTION_VALUES[option]})
    field = type(configured).OPTIONS[option]
    assert getattr(configured, field) == OPTION_VALUES[option]
    assert methods.get(method, **{field: OPTION_VALUES[option]}) == configured


def test_the_issue_examples_are_rejected_and_none_means_the_default(net):
    model, x, _ = net
    with pytest.raises(TypeError, match=r"block_size=7 applies to method\(s\) \['sparsegpt', "
                                        r"'sparsegpt-refit'\], not 'magnitude'"):
        ecprune.prune(model, x, 0.5, method="magnitude", block_size=7, damping=5)
    assert methods.get("ecp", allocation=None, loss=None) == methods.ECP()


@pytest.mark.parametrize(("make", "match"), [
    (lambda: methods.ECPRefit(damping=-1.0), r"'damping' parameter of ECPRefit must be a finite"),
    (lambda: methods.SparseGPT(block_size=0), r"'block_size' parameter of SparseGPT must be an int"),
    (lambda: methods.ECPRefit(weighting="l1"), r"'refit_weighting' parameter of ECPRefit must be one of 'plain', 'sensitivity'"),
    (lambda: methods.ECPRefit(allocation="uniform"), r"'allocation' parameter of ECPRefit must be one of 'global', 'refit'"),
    (lambda: methods.Nonlinear(samples=0), r"'nonlinear_samples' parameter of Nonlinear must be an int >= 1"),
    (lambda: methods.ECP(probes=0), r"'probes' parameter of ECP must be an int >= 1. Got 0"),
    (lambda: methods.Gradient(loss="l1"), r"'loss' parameter of Gradient must be one of 'cross_entropy', 'mse'"),
    (lambda: methods.Random(seed=1.5), r"'seed' parameter of Random must be an int or None. Got 1.5"),
    (lambda: methods.get("sparsegpt", damping=float("nan")), r"'damping' parameter of get must be a finite"),
    (lambda: methods.get("ecp", dampin=1), r"Method 'ecp' got an unknown option 'dampin'; its options are \['probes', 'sensitivity'\]"),
])
def test_configurations_are_validated_when_built(make, match):
    with pytest.raises(ValueError if "unknown" not in match else TypeError, match=match):
        make()


def test_instances_are_frozen_and_compare_by_configuration():
    method = methods.SparseGPT(damping=0.1)
    with pytest.raises(AttributeError):
        method.damping = 0.2
    assert method == methods.get("sparsegpt", damping=0.1) != methods.SparseGPT()
    assert method.label == "sparsegpt" and methods.get(method) is method


def test_an_instance_with_options_or_a_class_is_a_clear_error(net):
    model, x, _ = net
    with pytest.raises(TypeError, match=r"prune\(\) got option\(s\) \['damping'\] with a SparseGPT "
                                        r"instance; configure the instance instead, e.g. SparseGPT\(damping=...\)"):
        ecprune.prune(model, x, 0.5, methods.SparseGPT(), damping=0.1)
    with pytest.raises(TypeError, match=r"'method' parameter of prune is the class ECP; pass an "
                                        r"instance, e.g. method=ECP\(\)"):
        ecprune.prune(model, x, 0.5, methods.ECP)


@pytest.mark.parametrize("name", ecprune.METHODS)
def test_a_name_and_its_instance_prune_alike(net, name):
    model, _, data = net
    by_name, by_instance = copy.deepcopy(model), copy.deepcopy(model)
    ecprune.prune(by_name, data, 0.6, name, nonlinear_samples=None)
    ecprune.prune(by_instance, data, 0.6, methods.get(name))
    assert states_equal(by_name, by_instance)


# A user's own criterion, in under 20 lines: |W| scaled by the input's RMS over the data (Wanda's
# score compared globally), with the mean-signal shift of magnitude-comp as its compensation.
@dataclass(frozen=True, kw_only=True)
class ScaledMagnitude(methods.Method):
    power: float = 1.0
    compensates = True

    def request(self, seed):
        return methods.StatisticsRequest(input_norms=True, seed=seed)

    def layer_importance(self, name, context):
        stats, weight = context.statistics, context.weights[name].double()
        rms = (stats.layers[name].input_sq_sum / stats.count).sqrt()
        shift = weight * stats.mean_input(name)[None, :]
        return ecprune.LayerImportance(weight.abs() ** self.power * rms[None, :], shift)


def test_a_custom_method_end_to_end(net):
    model, x, _ = net
    method = ScaledMagnitude(power=2.0)
    scores = ecprune.importance(model, x, method)
    assert scores.method == "ScaledMagnitude" and scores.method_object is method
    for name, result in scores.items():  # oracle: the definition on the materialised inputs
        a = x if name == "0" else _layer_inputs(model, name, x)
        weight = model.get_submodule(name).weight.detach()
        expected = weight.square() * a.square().mean(0).sqrt()[None, :]
        torch.testing.assert_close(result.score, expected, rtol=1e-12, atol=0)
        torch.testing.assert_close(result.bias_shift, weight * a.mean(0)[None, :], rtol=1e-12,
                                   atol=1e-15)
    pruned, by_scores = copy.deepcopy(model), copy.deepcopy(model)
    report = ecprune.prune(pruned, x, 0.5, method)
    ecprune.prune_by_importance(by_scores, scores, 0.5)
    assert states_equal(pruned, by_scores) and report.method == "ScaledMagnitude"
    assert report.total - report.kept == round(0.5 * report.total)
    for name, result in scores.items():  # removed: the lowest scores, their shifts in the bias
        layer, dense = pruned.get_submodule(name), model.get_submodule(name)
        removed = layer.weight_mask == 0
        shift = (result.bias_shift * removed).sum(1)
        torch.testing.assert_close(layer.bias, dense.bias + shift, rtol=1e-12, atol=1e-15)
    masks = {name: pruned.get_submodule(name).weight_mask == 0 for name in scores}
    removed = torch.cat([r.score[masks[n]] for n, r in scores.items()])
    kept = torch.cat([r.score[~masks[n]] for n, r in scores.items()])
    assert removed.max() <= kept.min()
    stepped = copy.deepcopy(model)
    report = ecprune.prune(stepped, x, 0.7, method, steps=3)
    assert report.steps == 3 and report.total - report.kept == round(0.7 * report.total)


def _layer_inputs(model: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    captured = {}
    handle = model.get_submodule(name).register_forward_pre_hook(
        lambda module, args: captured.setdefault("a", args[0].detach()))
    with torch.no_grad():
        model(x)
    handle.remove()
    return captured["a"]


def test_a_subclass_of_a_registered_method_is_that_method(net):
    model, x, _ = net

    class MyECP(methods.ECP):
        pass

    mine, ecp = copy.deepcopy(model), copy.deepcopy(model)
    ecprune.prune(mine, x, 0.6, MyECP())
    ecprune.prune(ecp, x, 0.6, "ecp")
    assert states_equal(mine, ecp)


@pytest.mark.parametrize("name", ["sparsegpt", "sparsegpt-refit", "ecp-refit"])
def test_prune_by_importance_with_the_data_equals_prune(net, name):
    model, x, _ = net
    pruned, by_scores = copy.deepcopy(model), copy.deepcopy(model)
    report = ecprune.prune(pruned, x, 0.6, name)
    scores = ecprune.importance(by_scores, x, name)
    again = ecprune.prune_by_importance(by_scores, scores, 0.6, data=x)
    assert states_equal(pruned, by_scores) and again.kept == report.kept


@pytest.mark.parametrize("name", ["sparsegpt", "sparsegpt-refit"])
def test_prune_by_importance_without_the_data_it_needs_raises_and_changes_nothing(net, name):
    model, x, _ = net
    scores = ecprune.importance(model, x, name)
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=rf"Method '{name}' picks and updates the weights layer by "
                                         r"layer on the data .* pass data=\.\.\."):
        ecprune.prune_by_importance(model, scores, 0.6)
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(value, state[key]) for key, value in model.state_dict().items())


def test_importances_a_user_built_prune_by_their_method(net):
    model, x, _ = net
    scores = ecprune.importance(model, x, "magnitude")
    for method in ("magnitude", methods.Magnitude()):
        mine = ecprune.Importances({name: ecprune.LayerImportance(r.score, None)
                                    for name, r in scores.items()},
                                   method=method, seconds=0.0, mean_output_sq=1.0)
        a, b = copy.deepcopy(model), copy.deepcopy(model)
        ecprune.prune_by_importance(a, mine, 0.5)
        ecprune.prune_by_importance(b, scores, 0.5)
        assert states_equal(a, b) and mine.method == "magnitude"
    with pytest.raises(ValueError, match=r"'method' parameter of Importances must be one of 'ecp'"):
        ecprune.Importances({}, method="obd", seconds=0.0, mean_output_sq=1.0)


def test_prune_by_importance_reuses_the_scoring_options(net):
    """Options given to importance (here the layers and add_bias) hold for the pruning too."""
    _, x, _ = net
    model = nn.Sequential(nn.Linear(5, 4, bias=False), nn.Tanh(), nn.Linear(4, 2)).double()
    scores = ecprune.importance(model, x, "ecp", add_bias=True, layers=["0"])
    ecprune.prune_by_importance(model, scores, 0.5)
    assert model[0].bias is not None and not hasattr(model[2], "weight_mask")
