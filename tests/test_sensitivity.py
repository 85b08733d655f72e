"""The two sensitivity engines and the Hutchinson estimator against independent oracles.

Oracles: per-sample Jacobians from ``torch.func`` (``bias_jacobians``), the autograd engine for
the chain engine, and for the estimator the closed-form variance of one Rademacher probe,
``Var[(v^T g)^2] = 2 (||g||^4 - sum_k g_k^4)``. Float64 throughout; engines agree to summation
order (rtol 1e-10).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

import ecprune
from conftest import SkipNet, bias_jacobians, mlp
from ecprune.engine import sensitivity
from ecprune.engine.batching import iter_batches
from ecprune.engine.sensitivity import ChainRun, chain_sensitivities, find_chain, sensitivities
from ecprune.engine.statistics import StatisticsRequest, collect_statistics
from ecprune.engine.tape import LayerTape

RTOL = 1e-10
Z_BOUND = 5  # standard errors: P(|z| > 5) < 6e-7 per element for a Gaussian mean


class Wrapped(nn.Module):
    """The same function as ``net`` behind an opaque forward: forces the autograd engine."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)


def linears(model: nn.Module) -> dict[str, nn.Linear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}


def engine_sensitivities(model, x, *, chain: bool, probes=None, seed=0):
    """Per-sample s of every Linear of ``model`` by one engine."""
    layers = linears(model)
    generator = torch.Generator().manual_seed(seed)
    if chain:
        run = ChainRun(find_chain(model, layers))
        with torch.no_grad(), LayerTape(layers, differentiable=False):
            output = run(x)
            s = chain_sensitivities(run, list(layers.values()), output, probes=probes,
                                    generator=generator)
    else:
        with LayerTape(layers, differentiable=True) as tape:
            output = model(x).reshape(len(x), -1)
            s = sensitivities(output, [tape.outputs[n] for n in layers], probes=probes,
                              generator=generator)
    return dict(zip(layers, s, strict=True))


def oracle_jacobians(model, x) -> dict[str, torch.Tensor]:
    """``dy/du`` per sample by torch.func: (N, n_out, n_layer) for every Linear."""
    return {name: bias_jacobians(model, name, x) for name in linears(model)}


def chains():
    torch.manual_seed(0)
    flat_in = nn.Sequential(nn.Flatten(), nn.Linear(6, 5), nn.PReLU(5), nn.Linear(5, 4),
                            nn.GELU(), nn.Dropout(0.5), nn.Linear(4, 3))
    nested = nn.Sequential(nn.Linear(6, 5), nn.Sequential(nn.Hardswish(), nn.Linear(5, 5)),
                           nn.ELU(), nn.Linear(5, 4), nn.Tanh())  # ends in an activation
    stacked = nn.Sequential(nn.Linear(6, 4), nn.Linear(4, 4), nn.SiLU(), nn.Softplus(),
                            nn.Linear(4, 7))
    return {"flatten-prelu-gelu-dropout": flat_in, "nested-final-tanh": nested,
            "linear-linear-two-activations": stacked}


@pytest.mark.parametrize("name", list(chains()))
def test_chain_engine_matches_torch_func_jacobians_and_autograd_engine(name):
    model = chains()[name].double().eval()
    x = torch.randn(9, 2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x = x.reshape(9, 6) if name != "flatten-prelu-gelu-dropout" else x
    fast = engine_sensitivities(model, x, chain=True)
    generic = engine_sensitivities(model, x, chain=False)
    for layer, jacobian in oracle_jacobians(model, x).items():
        torch.testing.assert_close(fast[layer], jacobian.square().sum(1), rtol=RTOL, atol=0)
        torch.testing.assert_close(generic[layer], fast[layer], rtol=RTOL, atol=0)


def test_find_chain_accepts_sequential_chains_and_refuses_everything_else():
    model = chains()["flatten-prelu-gelu-dropout"]
    found = find_chain(model, linears(model))
    assert found is not None and type(found.prefix[0]) is nn.Flatten and len(found.body) == 6
    assert find_chain(SkipNet(), linears(SkipNet())) is None
    softmax = nn.Sequential(nn.Linear(3, 3), nn.Softmax(dim=1), nn.Linear(3, 2))
    assert find_chain(softmax, linears(softmax)) is None  # not elementwise
    assert find_chain(Wrapped(mlp([3, 4, 2])), linears(Wrapped(mlp([3, 4, 2])))) is None
    hooked = mlp([3, 4, 2])
    hooked.register_forward_hook(lambda module, args, out: out * 2)
    assert find_chain(hooked, linears(hooked)) is None  # the hook changes y
    inner = nn.Sequential(Wrapped(nn.Linear(3, 4)), nn.Tanh(), nn.Linear(4, 2))
    assert find_chain(inner, linears(inner)) is None  # a pruned layer hides in a module
    tail = nn.Sequential(Wrapped(nn.Linear(3, 4)), nn.Tanh(), nn.Linear(4, 2))
    assert find_chain(tail, {"2": tail[2]}).prefix == (tail[0], tail[1])  # ... unless unpruned


@pytest.mark.parametrize("setting", ["default", "tiles", "tiles-unfactored"])
def test_statistics_agree_between_engines_with_masks_layer_subsets_and_tiling(setting,
                                                                              monkeypatch):
    """Tiles of 2 samples x blocks of 1 seed (Khatri-Rao products kept across tiles), and the
    unfactored product, change nothing."""
    model = mlp([5, 6, 4, 3], nn.PReLU)
    torch_prune.random_unstructured(model[2], "weight", amount=0.5)
    x = torch.randn(23, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    if setting != "default":
        monkeypatch.setattr(sensitivity, "CHAIN_ELEMENTS", 8)
        monkeypatch.setattr(sensitivity, "MIN_TILE", 2)
        monkeypatch.setattr(sensitivity, "SMALL_BLOCK", 0)
    if setting == "tiles-unfactored":
        monkeypatch.setattr(sensitivity, "MIXED_ELEMENTS", 0)
    for layers in (None, ["2"], ["0", "4"]):
        fast = ecprune.importance(model, x, layers=layers, chunk_size=10)
        generic = ecprune.importance(Wrapped(model), x, chunk_size=10,
                                     layers=None if layers is None else [f"net.{n}" for n in layers])
        for name, result in fast.items():
            torch.testing.assert_close(result.score, generic[f"net.{name}"].score, rtol=1e-9,
                                       atol=0)
            torch.testing.assert_close(result.bias_shift, generic[f"net.{name}"].bias_shift,
                                       rtol=1e-9, atol=0)


def collect(model, x, **request):
    layers = linears(model)
    batches = iter_batches(x, chunk_size=len(x), device=x.device, dtype=x.dtype)
    return collect_statistics(model, layers, batches,
                              StatisticsRequest(sensitivity=True, **request))


def test_engine_and_estimator_choice_are_recorded():
    x = torch.randn(8, 3, dtype=torch.float64)
    limit = max(sensitivity.AUTO_EXACT_OUTPUTS, sensitivity.AUTO_PROBES)
    many, few = mlp([3, 4, limit + 1]), mlp([3, 4, limit])
    assert (collect(many, x).engine, collect(many, x).probes) == ("chain", sensitivity.AUTO_PROBES)
    assert (collect(few, x).engine, collect(few, x).probes) == ("chain", None)
    assert collect(Wrapped(few), x, estimator="hutchinson", probes=3).probes == 3
    assert collect(Wrapped(many), x, estimator="exact").engine == "autograd"
    assert collect(many, x, probes=limit + 1).probes is None  # never more passes than exact
    assert collect(many, x, probes=2).probes == 2


def hutchinson_check(model, x, *, chain: bool, probes: int, repeats: int):
    """z-scores of the mean of ``repeats`` independent estimates against the exact s, each
    normalised by its standard error from the closed-form variance."""
    jacobians = oracle_jacobians(model, x)
    estimates = [engine_sensitivities(model, x, chain=chain, probes=probes, seed=seed)
                 for seed in range(repeats)]
    z = []
    for layer, jacobian in jacobians.items():
        g2 = jacobian.square()  # (N, n_out, n)
        exact = g2.sum(1)
        variance = 2 * (exact.square() - g2.square().sum(1)) / probes
        runs = torch.stack([e[layer] for e in estimates])
        known = variance > 0  # zero variance (e.g. the last layer): exact in every run
        torch.testing.assert_close(runs[:, ~known], exact[~known].expand_as(runs[:, ~known]),
                                   rtol=RTOL, atol=0)
        z.append((runs.mean(0) - exact)[known] / (variance[known] / repeats).sqrt())
    z = torch.cat(z)
    assert len(z) > 20
    return z


@pytest.mark.parametrize("chain", [True, False])
def test_hutchinson_is_unbiased_within_standard_errors(chain):
    model = mlp([3, 4, 4, 5], nn.Tanh, seed=3)
    x = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    # z uses the standard error sqrt(Var / n): the mean converges at the 1/sqrt(n) rate.
    z = hutchinson_check(model, x, chain=chain, probes=2, repeats=400)
    assert z.abs().max() < Z_BOUND


def test_hutchinson_bias_would_be_detected():
    """The same check fails for a biased estimator: one sign shared by all outputs gives
    ``(sum_k g_k)^2``, still exact where a single output reaches the layer."""
    model = mlp([3, 4, 4, 5], nn.Tanh, seed=3)
    x = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    original = sensitivity.rademacher

    def biased(*args, **kwargs):
        signs = original(*args, **kwargs)
        return signs[..., :1].expand_as(signs).clone()

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sensitivity, "rademacher", biased)
        z = hutchinson_check(model, x, chain=True, probes=2, repeats=400)
    assert z.abs().max() > Z_BOUND


@pytest.mark.parametrize("chain", [True, False])
def test_hutchinson_is_exact_for_one_output(chain):
    model = mlp([3, 5, 4, 1], nn.GELU)
    x = torch.randn(11, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    exact = engine_sensitivities(model, x, chain=chain)
    estimate = engine_sensitivities(model, x, chain=chain, probes=3, seed=9)
    for layer in exact:
        torch.testing.assert_close(estimate[layer], exact[layer], rtol=RTOL, atol=0)
    scores = ecprune.importance(model, x, sensitivity="hutchinson", probes=2)
    for name, result in ecprune.importance(model, x, sensitivity="exact").items():
        torch.testing.assert_close(scores[name].score, result.score, rtol=RTOL, atol=0)


def test_hutchinson_sums_are_unbiased_and_seeded():
    """Mean over seeds of S = sum s and P = sum s (a - c) against the exact sums; the
    standard error comes from independent probes per sample."""
    model = mlp([3, 4, 6], nn.Tanh, seed=6)
    x = torch.randn(20, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    exact = collect(model, x, estimator="exact").layers["0"]
    jacobian = bias_jacobians(model, "0", x).square()  # (N, n_out, 4)
    var_s = 2 * (jacobian.sum(1).square() - jacobian.square().sum(1)) / 2  # probes = 2
    runs = [collect(model, x, estimator="hutchinson", probes=2, seed=seed).layers["0"]
            for seed in range(300)]
    centred = x - exact.input_shift
    var_p = var_s.T @ centred.square()  # sum over samples of (a - c)^2 Var(s)
    for value, reference, variance in (
        (torch.stack([r.sens_sum for r in runs]).mean(0), exact.sens_sum, var_s.sum(0)),
        (torch.stack([r.sens_act for r in runs]).mean(0), exact.sens_act, var_p),
    ):
        z = (value - reference) / (variance / len(runs)).sqrt()
        assert z.abs().max() < Z_BOUND
    again = collect(model, x, estimator="hutchinson", probes=2, seed=0).layers["0"]
    assert torch.equal(again.sens_act, runs[0].sens_act)


@pytest.mark.parametrize("bad,match", [
    ({"sensitivity": "exactly"}, r"'sensitivity' parameter of importance must be one of "
                                 r"'auto', 'exact', 'hutchinson'. Got 'exactly'"),
    ({"probes": 0}, r"'probes' parameter of importance must be an int >= 1. Got 0"),
    ({"probes": 2.5}, r"'probes' parameter of importance must be an int >= 1. Got 2.5"),
])
def test_bad_sensitivity_options(tiny, bad, match):
    model, x = tiny
    with pytest.raises(ValueError, match=match):
        ecprune.importance(model, x, **bad)


def test_workspaces_follow_batches_of_varying_size(tiny):
    model, x = tiny
    batches = [x[:3], x[3:30], x[30:32], x[32:]]
    streamed = ecprune.importance(model, batches, "ecp")
    for name, result in ecprune.importance(model, x, "ecp").items():
        torch.testing.assert_close(streamed[name].score, result.score, rtol=1e-9, atol=0)


def test_finite_check_survives_an_overflowing_sum():
    model = mlp([3, 2], dtype=torch.float32)
    huge = torch.full((4, 3), 3e38)  # finite, but their sum is inf in float32
    ecprune.importance(model, huge, "magnitude")
    huge[1, 2] = float("nan")
    with pytest.raises(ValueError, match="contain 1 NaN or infinite values"):
        ecprune.importance(model, huge, "magnitude")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("estimator", ["exact", "hutchinson"])
def test_both_engines_run_on_cuda(tiny, estimator):
    model, x = tiny
    for net in (model, Wrapped(model)):
        cpu = ecprune.importance(net, x, sensitivity=estimator, probes=2)
        gpu = ecprune.importance(copy.deepcopy(net).cuda(), x, sensitivity=estimator, probes=2)
        for name in cpu:
            assert gpu[name].score.is_cuda
            if estimator == "exact":  # probes differ between devices' generators
                torch.testing.assert_close(gpu[name].score.cpu(), cpu[name].score, rtol=1e-8,
                                           atol=1e-14)


def test_chain_engine_runs_under_module_hooks_of_flop_counter(tiny):
    """torch.utils.flop_counter hooks every module; the activation slopes must still work."""
    from torch.utils.flop_counter import FlopCounterMode

    model, x = tiny
    plain = ecprune.importance(model, x)
    with FlopCounterMode(display=False) as counter:
        counted = ecprune.importance(model, x)
    assert counter.get_total_flops() > 0
    for name, result in plain.items():
        torch.testing.assert_close(counted[name].score, result.score, rtol=0, atol=0)


def test_chain_engine_stops_at_the_first_pruned_layer(monkeypatch):
    """The reverse passes never multiply by the first layer's (wide) weight."""
    model = mlp([30, 5, 4, 3], nn.PReLU)
    x = torch.randn(16, 30, dtype=torch.float64)
    crossed = []
    original = sensitivity._Jacobian.through_linear

    def spy(self, layer, memo):
        crossed.append(layer)
        return original(self, layer, memo)

    monkeypatch.setattr(sensitivity._Jacobian, "through_linear", spy)
    for probes in (None, 2):
        crossed.clear()
        engine_sensitivities(model, x, chain=True, probes=probes)
        assert model[0] not in crossed and model[2] in crossed
