"""ECP's formulas against independent oracles on tiny float64 networks.

Oracles: per-sample Jacobians from ``torch.func`` (not ecprune's hooks), central finite
differences, brute-force scans of the bias shift, and the exact nonlinear output change.
Tolerances: float64 closed forms agree to ~1e-12 (rtol 1e-9 leaves room for summation order);
finite differences with h = 1e-5 have error O(h^2) ~ 1e-10 (atol 1e-7).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import ecprune
from conftest import SkipNet, bias_jacobians, mlp, weight_jacobians
from ecprune.engine.sensitivity import sensitivities
from ecprune.engine.tape import LayerTape

RTOL = 1e-9


def linearised_objective(jb, jw, weight_ij, delta):
    """mean_x ||dy/db_i delta - dy/dW_ij W_ij||^2 from autograd Jacobian columns (N, n_out)."""
    return (jb * delta - jw * weight_ij).square().sum(-1).mean()


@pytest.mark.parametrize("activation", [nn.Tanh, nn.GELU, nn.SiLU, nn.PReLU, nn.ReLU])
def test_delta_minimises_linearised_objective_and_importance_is_its_minimum(activation):
    model = mlp([3, 5, 4, 2], activation)
    x = torch.randn(30, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    result = ecprune.importance(model, x)
    for name in ("0", "2", "4"):
        weight = model.get_submodule(name).weight.detach()
        jb, jw = bias_jacobians(model, name, x), weight_jacobians(model, name, x)
        for i, j in [(0, 0), (1, 2), (weight.shape[0] - 1, weight.shape[1] - 1)]:
            f = lambda d, i=i, j=j, jb=jb, jw=jw, w=weight: linearised_objective(jb[:, :, i], jw[:, :, i, j], w[i, j], d)  # noqa: E731
            delta = result[name].bias_shift[i, j]
            # The objective is quadratic in delta: three evaluations give its exact minimiser.
            f0, f1, fm = f(0.0), f(1.0), f(-1.0)
            curvature, slope = (f1 + fm - 2 * f0) / 2, (f1 - fm) / 2
            if curvature > 1e-14:
                torch.testing.assert_close(delta, -slope / (2 * curvature), rtol=1e-7, atol=1e-12)
            torch.testing.assert_close(result[name].score[i, j], f(delta), rtol=1e-7, atol=1e-14)
            scan = torch.linspace(-3, 3, 601, dtype=torch.float64) * (delta.abs() + 0.1) + delta
            assert all(f(delta) <= f(d) + 1e-15 for d in scan)


def test_sensitivity_matches_central_finite_differences():
    model = SkipNet().double()
    x = torch.randn(12, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    layers = {name: model.get_submodule(name) for name in ("encoder.inp", "block.0", "head")}
    with LayerTape(layers, differentiable=True) as tape:
        y = model(x).reshape(len(x), -1)
        s = dict(zip(layers, sensitivities(y, [tape.outputs[n] for n in layers]), strict=True))
    h = 1e-5
    for name, layer in layers.items():
        for i in range(layer.out_features):
            with torch.no_grad():
                layer.bias[i] += h
                up = model(x).reshape(len(x), -1)
                layer.bias[i] -= 2 * h
                down = model(x).reshape(len(x), -1)
                layer.bias[i] += h
            fd = ((up - down) / (2 * h)).square().sum(1)
            torch.testing.assert_close(s[name][:, i], fd, rtol=1e-6, atol=1e-9)


def test_last_layer_shift_is_mean_signal_and_importance_is_variance(tiny):
    model, x = tiny
    result = ecprune.importance(model, x)
    a = model[:-1](x).detach()  # inputs of the last layer
    weight = model[-1].weight.detach()
    torch.testing.assert_close(result["4"].bias_shift, weight * a.mean(0), rtol=RTOL, atol=0)
    torch.testing.assert_close(result["4"].score, weight**2 * a.var(0, unbiased=False),
                               rtol=RTOL, atol=0)


@pytest.mark.parametrize("name,i,j", [("0", 1, 2), ("2", 0, 3)])
def test_small_weight_importance_matches_exact_output_change(name, i, j):
    """I/epsilon^2 against the exact change: relative error must shrink like O(epsilon)."""
    relative_errors = []
    for epsilon in (1e-2, 1e-3):
        model = mlp([3, 4, 3, 2], nn.Tanh)
        x = torch.randn(40, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        layer = model.get_submodule(name)
        with torch.no_grad():
            layer.weight[i, j] = epsilon
        result = ecprune.importance(model, x)
        before = model(x)
        with torch.no_grad():
            layer.weight[i, j] = 0
            layer.bias[i] += result[name].bias_shift[i, j]
        exact = (model(x) - before).square().sum(1).mean()
        relative_errors.append(abs(exact / result[name].score[i, j] - 1).item())
    assert relative_errors[1] < relative_errors[0] / 5
    assert relative_errors[1] < 1e-2


def test_importance_never_exceeds_uncompensated_score(tiny):
    model, x = tiny
    comp = ecprune.importance(model, x, "ecp")
    nocomp = ecprune.importance(model, x, "ecp-nocomp")
    for name in comp:
        assert (comp[name].score >= 0).all()
        assert (comp[name].score <= nocomp[name].score * (1 + 1e-12) + 1e-300).all()


def test_uncompensated_score_is_linearised_error_without_shift(tiny):
    model, x = tiny
    result = ecprune.importance(model, x, "ecp-nocomp")
    weight = model[2].weight.detach()
    jw = weight_jacobians(model, "2", x)
    expected = (jw * weight).square().sum(1).mean(0)  # (n_layer, n_in)
    torch.testing.assert_close(result["2"].score, expected, rtol=RTOL, atol=0)


def test_multi_dimensional_output_and_skip_connections_match_autograd():
    model = SkipNet().double()
    x = torch.randn(25, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    result = ecprune.importance(model, x)
    with torch.no_grad():  # each layer's input, written out by hand
        h = model.encoder["act"](model.encoder["inp"](x))
        inputs = {"encoder.inp": x, "block.0": h, "head": h + model.block(h)}
    for name, a in inputs.items():
        weight = model.get_submodule(name).weight.detach()
        jb, jw = bias_jacobians(model, name, x), weight_jacobians(model, name, x)
        torch.testing.assert_close(jw, jb[..., None] * a[:, None, None, :], rtol=1e-10, atol=1e-14)
        s = jb.square().sum(1)  # (N, n_layer)
        e_s = s.mean(0)[:, None]
        e_sa, e_saa = (s[:, :, None] * a[:, None]).mean(0), (s[:, :, None] * a[:, None] ** 2).mean(0)
        torch.testing.assert_close(result[name].bias_shift, weight * e_sa / e_s, rtol=1e-8, atol=0)
        torch.testing.assert_close(result[name].score, weight**2 * (e_saa - e_sa**2 / e_s),
                                   rtol=1e-7, atol=1e-15)


def test_output_fn_selects_what_the_sensitivities_see():
    model = SkipNet().double()
    x = torch.randn(20, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    first_only = ecprune.importance(model, x, output_fn=lambda out: out[:, 0])
    sub = copy.deepcopy(model)
    sub.forward = lambda inp: SkipNet.forward(sub, inp)[:, 0]
    direct = ecprune.importance(sub, x)
    for name in first_only:
        torch.testing.assert_close(first_only[name].score, direct[name].score, rtol=RTOL, atol=0)


def test_dead_neurons_and_constant_inputs_give_finite_zero_scores():
    model = mlp([3, 4, 2], nn.ReLU)
    with torch.no_grad():
        model[0].bias[1] = -1e3  # neuron 1 never fires: E[s] = 0 upstream of it
    x = torch.randn(50, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    x[:, 2] = 0.7  # a constant input feature
    result = ecprune.importance(model, x)
    for r in result.values():
        assert torch.isfinite(r.score).all() and torch.isfinite(r.bias_shift).all()
    assert (result["0"].score[1] == 0).all() and (result["0"].bias_shift[1] == 0).all()
    torch.testing.assert_close(result["0"].score[:, 2], torch.zeros(4, dtype=torch.float64),
                               rtol=0, atol=1e-15)
    report = ecprune.prune(model, x, 0.5)
    assert torch.isfinite(model[0].bias).all() and report.kept == 10


@pytest.mark.parametrize("chunk_size", [1, 7, 1000])
def test_streaming_equals_batch_with_large_offsets(chunk_size):
    """One Linear layer (s = 1): I = W^2 Var(a) even when inputs sit at 1e8 (naive
    E[a^2] - E[a]^2 loses every digit there)."""
    torch.manual_seed(7)
    model = nn.Linear(3, 2).double()
    noise = torch.randn(300, 3, dtype=torch.float64)
    x = noise + 1e8
    result = ecprune.importance(model, x, chunk_size=chunk_size)
    expected = model.weight.detach() ** 2 * noise.var(0, unbiased=False)
    torch.testing.assert_close(result[""].score, expected, rtol=1e-7, atol=0)
