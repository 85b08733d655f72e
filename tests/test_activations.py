"""Activations with their derivative evaluated once per forward give the module's own values and
gradients (float64, against plain autograd and against central differences)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ecprune.engine.activations import ELEMENTWISE, cached_derivatives


def modules():
    for kind in ELEMENTWISE:
        yield kind(num_parameters=3).double() if kind is nn.PReLU else kind()
    yield nn.ReLU(inplace=True)  # left alone: its input is overwritten


@pytest.mark.parametrize("activation", list(modules()), ids=lambda m: repr(m))
def test_values_and_every_reverse_pass_match_the_module(activation):
    torch.manual_seed(0)
    first, last = nn.Linear(4, 3).double(), nn.Linear(3, 2).double()
    x = torch.randn(5, 4, dtype=torch.float64)
    inplace = getattr(activation, "inplace", False)

    def run(cached: bool):
        u = first(x).detach().requires_grad_()
        with cached_derivatives(nn.Sequential(activation)) if cached else torch.enable_grad():
            h = activation(u.clone() if inplace else u)
            y = last(h)
        assert ("TimesDerivative" in type(h.grad_fn).__name__) == (cached and not inplace)
        grads = [torch.autograd.grad(y, u, z, retain_graph=True)[0] for z in torch.eye(2)
                 .expand(5, 2, 2).unbind(1)]
        return y.detach(), grads

    (y_plain, g_plain), (y_cached, g_cached) = run(False), run(True)
    torch.testing.assert_close(y_cached, y_plain, rtol=0, atol=0)
    for a, b in zip(g_cached, g_plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-14)
    # Central differences of the first output with respect to one pre-activation.
    u, eps = first(x).detach(), 1e-6
    step = torch.zeros_like(u)
    step[0, 1] = eps
    with torch.no_grad():
        slope = (last(activation(u + step))[0, 0] - last(activation(u - step))[0, 0]) / (2 * eps)
    assert g_cached[0][0, 1].item() == pytest.approx(slope.item(), rel=1e-6, abs=1e-8)
