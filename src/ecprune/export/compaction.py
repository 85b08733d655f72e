"""Structural clean-up after pruning: drop the hidden neurons that no longer do anything.

In a chain ``Linear -> elementwise activations -> Linear`` a hidden neuron ``i`` with no
outgoing weights (column ``i`` of the next weight is zero) cannot reach the output, and one
with no incoming weights (row ``i`` of its weight is zero) outputs the constant
``c_i = activation(b_i)``, which the next layer absorbs as ``b' += W'[:, i] c_i``. Both are
removed from the layers (with their per-channel activation parameters, e.g. PReLU slopes),
repeatedly until nothing changes. The network's output is unchanged up to rounding, in eval
mode; input features and outputs are never removed.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from ..engine.layers import bake_masks, copy_model
from ..engine.tape import eval_mode

# Modules that act on each feature separately, so a neuron can be removed from them.
ELEMENTWISE = (
    nn.Identity, nn.Dropout, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU,
    nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid, nn.LogSigmoid, nn.Tanh, nn.Tanhshrink,
    nn.Softplus, nn.Softsign, nn.Hardtanh, nn.Hardsigmoid, nn.Hardswish, nn.Hardshrink,
    nn.Softshrink, nn.Threshold,
)


def _chain(module: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    """Leaves of a (nested) ``nn.Sequential`` in execution order, with qualified names."""
    leaves = []
    for name, child in module.named_children():
        qualified = f"{prefix}{name}"
        if isinstance(child, nn.Sequential):
            leaves.extend(_chain(child, f"{qualified}."))
        else:
            leaves.append((qualified, child))
    return leaves


def _unsupported(name: str, module: nn.Module, why: str) -> ValueError:
    return ValueError(
        f"compact supports nn.Sequential chains (possibly nested) of nn.Linear layers separated "
        f"by elementwise activations; {why} ({name!r}: {type(module).__name__})."
    )


def _segments(model: nn.Module) -> list[tuple[nn.Linear, list[nn.Module], nn.Linear]]:
    """Each pair of consecutive Linear layers with the activations between them."""
    if not isinstance(model, nn.Sequential):
        raise _unsupported("", model, "the model is not an nn.Sequential")
    chain = _chain(model)
    positions = [k for k, (_, m) in enumerate(chain) if isinstance(m, nn.Linear)]
    segments = []
    for start, stop in itertools.pairwise(positions):
        between = chain[start + 1 : stop]
        for name, module in between:
            if not isinstance(module, ELEMENTWISE):
                raise _unsupported(name, module, "this module between two Linear layers is not "
                                   "an elementwise activation")
        segments.append((chain[start][1], [m for _, m in between], chain[stop][1]))
    return segments


def _activate(activations: list[nn.Module], bias: torch.Tensor) -> torch.Tensor:
    """The constant outputs ``activation(b)`` of neurons without inputs, shape (n,)."""
    out = bias[None]
    for module in activations:
        with eval_mode(module):
            out = module(out)
    return out[0]


def _slice(module: nn.Module, name: str, keep: torch.Tensor, dim: int) -> None:
    """Replace parameter ``name`` by its entries ``keep`` along ``dim`` (same requires_grad)."""
    old = getattr(module, name)
    setattr(module, name, nn.Parameter(old.detach().index_select(dim, keep.nonzero()[:, 0]),
                                       requires_grad=old.requires_grad))


def _prune_neurons(first: nn.Linear, activations: list[nn.Module], second: nn.Linear) -> bool:
    """Remove dead neurons between ``first`` and ``second``; True if any was removed."""
    no_input = (first.weight == 0).all(1)
    no_output = (second.weight == 0).all(0)
    dead = no_input | no_output
    if not dead.any():
        return False
    constant = no_input & ~no_output
    if constant.any():
        bias = first.bias if first.bias is not None else first.weight.new_zeros(first.out_features)
        folded = second.weight[:, constant] @ _activate(activations, bias)[constant]
        if second.bias is None:
            second.bias = nn.Parameter(torch.zeros_like(folded))
        second.bias += folded
    keep = ~dead
    _slice(first, "weight", keep, 0)
    if first.bias is not None:
        _slice(first, "bias", keep, 0)
    _slice(second, "weight", keep, 1)
    for module in activations:
        if isinstance(module, nn.PReLU) and module.num_parameters > 1:
            _slice(module, "weight", keep, 0)
            module.num_parameters = int(keep.sum())
    first.out_features = second.in_features = int(keep.sum())
    return True


def compact(model: nn.Module) -> nn.Module:
    """A copy of ``model`` without its dead hidden neurons; the output is unchanged.

    ``model`` must be an ``nn.Sequential`` (possibly nested) in which the modules between
    consecutive ``nn.Linear`` layers are elementwise activations (``ELEMENTWISE``); modules
    before the first and after the last Linear are kept as they are. Pruning masks are baked
    into the copy's weights; ``model`` is not modified. Compare with :func:`layer_shapes`.

    Examples
    --------
    >>> import torch, ecprune
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    >>> with torch.no_grad():
    ...     net[0].weight[1] = 0  # neuron 1 loses all its inputs: its output is relu(b_1)
    >>> small = ecprune.compact(net)
    >>> ecprune.layer_shapes(small)
    {'0': (3, 3), '2': (2, 3)}
    >>> torch.allclose(small(torch.ones(1, 3)), net(torch.ones(1, 3)))
    True
    """
    _segments(model)  # fail before copying
    result = bake_masks(copy_model(model))
    segments = _segments(result)
    changed = True
    with torch.no_grad():
        while changed:
            changed = False
            for segment in segments:
                changed |= _prune_neurons(*segment)
    return result


def layer_shapes(model: nn.Module) -> dict[str, tuple[int, int]]:
    """``{name: (out_features, in_features)}`` of every ``nn.Linear`` of ``model``."""
    return {name: (m.out_features, m.in_features)
            for name, m in model.named_modules() if isinstance(m, nn.Linear)}
