"""Tiny float64 networks and independent oracles shared by the tests."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev


class SkipNet(nn.Module):
    """Nested, named, with a skip connection and a 2-D output per sample."""

    def __init__(self, n_in: int = 3, hidden: int = 4):
        super().__init__()
        self.encoder = nn.ModuleDict({"inp": nn.Linear(n_in, hidden), "act": nn.GELU()})
        self.block = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU())
        self.head = nn.Linear(hidden, 6)

    def forward(self, x):
        h = self.encoder["act"](self.encoder["inp"](x))
        h = h + self.block(h)
        return torch.tanh(self.head(h)).reshape(-1, 2, 3)


def mlp(widths, activation=nn.Tanh, *, seed=0, dtype=torch.float64):
    """Sequential MLP with ``activation`` between Linear layers (last layer linear)."""
    torch.manual_seed(seed)
    layers = []
    for k, (a, b) in enumerate(itertools.pairwise(widths)):
        layers.append(nn.Linear(a, b))
        if k < len(widths) - 2:
            layers.append(activation())
    return nn.Sequential(*layers).to(dtype)


def bias_jacobians(model: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    """Per-sample ``dy/db`` of layer ``name`` by ``torch.func`` (independent of ecprune):
    shape (N, n_out_model, n_layer)."""
    params = dict(model.named_parameters())
    key = f"{name}.bias"

    def output(bias, sample):
        out = functional_call(model, {**params, key: bias}, (sample[None],))
        return out.reshape(-1)

    return torch.stack([jacrev(output)(params[key].detach(), sample) for sample in x])


def weight_jacobians(model: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    """Per-sample ``dy/dW`` of layer ``name``: shape (N, n_out_model, n_layer, n_in)."""
    params = dict(model.named_parameters())
    key = f"{name}.weight"

    def output(weight, sample):
        return functional_call(model, {**params, key: weight}, (sample[None],)).reshape(-1)

    return torch.stack([jacrev(output)(params[key].detach(), sample) for sample in x])


def layer_io(model: nn.Module, name: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The input and output of layer ``name`` on ``x``, by a forward hook."""
    seen = []
    handle = model.get_submodule(name).register_forward_hook(
        lambda module, args, out: seen.append((args[0].detach(), out.detach())))
    model(x)
    handle.remove()
    return seen[0]


def layer_inputs(model: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    """The inputs layer ``name`` receives on ``x``."""
    return layer_io(model, name, x)[0]


@pytest.fixture
def tiny():
    """A 3-4-3-2 tanh MLP in float64 with 40 inputs."""
    model = mlp([3, 4, 3, 2])
    x = torch.randn(40, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return model, x
