"""Remove units from the modules: smaller dense layers, or zeros in place (``shrink=False``).

Shrinking a tensor needs a new tensor, so every Parameter keeps its identity and gets the
smaller values as its ``.data`` (its ``.grad`` is sliced the same way): references to it, such
as an optimizer's parameter groups, stay valid, but per-parameter state of the old shape (Adam's
moments) must be rebuilt. Buffers (BatchNorm's running statistics) are replaced. All edits here
and in the compensation are out of place, so :class:`ecprune.structured.transaction.Snapshot`
can undo them.

Per module type, what shrinks along the units (``dim`` 0 = output rows, 1 = input columns):

- ``nn.Linear``: rows of ``weight`` and ``bias`` (``out_features``), or columns of ``weight``
  (``in_features``);
- ``nn.PReLU`` with one slope per unit: ``weight`` (``num_parameters``; a single shared slope
  is no member and stays);
- ``nn.BatchNorm1d``: ``weight``, ``bias``, ``running_mean``, ``running_var``
  (``num_features``);
- ``nn.LayerNorm`` over the units (1-D ``normalized_shape``): ``weight``, ``bias``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import torch
from torch import nn

from .groups import UnitGroup


def _take(module: nn.Module, name: str, dim: int, keep: torch.Tensor) -> None:
    """Keep entries ``keep`` of parameter or buffer ``name`` along ``dim`` (if it exists)."""
    tensor = getattr(module, name, None)
    if tensor is None:
        return
    if isinstance(tensor, nn.Parameter):
        grad = tensor.grad
        tensor.data = tensor.data.index_select(dim, keep.to(tensor.device))
        tensor.grad = None if grad is None else grad.index_select(dim, keep.to(grad.device))
    else:
        module._buffers[name] = tensor.index_select(dim, keep.to(tensor.device))


def _linear(module: nn.Linear, dim: int, keep: torch.Tensor) -> None:
    _take(module, "weight", dim, keep)
    if dim == 0:
        _take(module, "bias", 0, keep)
        module.out_features = len(keep)
    else:
        module.in_features = len(keep)


def _prelu(module: nn.PReLU, dim: int, keep: torch.Tensor) -> None:
    _take(module, "weight", 0, keep)
    module.num_parameters = len(keep)


def _batch_norm(module: nn.BatchNorm1d, dim: int, keep: torch.Tensor) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        _take(module, name, 0, keep)
    module.num_features = len(keep)


def _layer_norm(module: nn.LayerNorm, dim: int, keep: torch.Tensor) -> None:
    _take(module, "weight", 0, keep)
    _take(module, "bias", 0, keep)
    module.normalized_shape = (len(keep),)


# What shrinks in each module type that may hold units (see the module docstring).
SLICERS: dict[type, Callable[[nn.Module, int, torch.Tensor], None]] = {
    nn.Linear: _linear, nn.PReLU: _prelu, nn.BatchNorm1d: _batch_norm, nn.LayerNorm: _layer_norm,
}


def slicer(module: nn.Module) -> Callable | None:
    """How ``module`` shrinks along its units, or None if it cannot (then it is no member)."""
    if type(module) is nn.LayerNorm and len(module.normalized_shape) != 1:
        return None
    return SLICERS.get(type(module))


def per_unit(module: nn.Module) -> bool:
    """Whether ``module`` holds parameters per unit that must shrink with them (a single
    shared PReLU slope does not)."""
    return not (isinstance(module, nn.PReLU) and module.num_parameters == 1)


def _zero(module: nn.Module, dim: int, drop: torch.Tensor) -> None:
    """Zero rows (and bias entries) or columns ``drop`` of a Linear; other modules stay."""
    if not isinstance(module, nn.Linear):
        return
    weight = module.weight
    weight.data = weight.data.index_fill(dim, drop.to(weight.device), 0)
    if dim == 0 and module.bias is not None:
        module.bias.data = module.bias.data.index_fill(0, drop.to(weight.device), 0)


def planned_drops(groups: dict[str, UnitGroup],
                  chosen: dict[str, torch.Tensor]) -> dict[tuple[str, int], torch.Tensor]:
    """``{(module, dim): positions to drop}`` of removing the units ``chosen`` (bool per group)."""
    drops: dict[tuple[str, int], list[torch.Tensor]] = defaultdict(list)
    for name, group in groups.items():
        mask = chosen.get(name)
        if mask is None or not bool(mask.any()):
            continue
        for dim, slots in ((0, group.producers), (1, group.consumers), (0, group.members)):
            for item in slots:
                drops[(item.module, dim)].append(item.removed(mask))
    return {key: torch.unique(torch.cat(found)) for key, found in drops.items()}


def remove_units(model: nn.Module, groups: dict[str, UnitGroup],
                 chosen: dict[str, torch.Tensor], *, shrink: bool) -> None:
    """Remove the units ``chosen`` (bool (size,) per group) from ``model``, in place.

    ``shrink=True``: the layers lose the rows, columns and per-unit parameters (module
    docstring). ``shrink=False``: the widths stay and the removed units' producer rows, biases
    and consumer columns are zeroed instead.
    """
    with torch.no_grad():
        for (name, dim), drop in planned_drops(groups, chosen).items():
            module = model.get_submodule(name)
            if not shrink:
                _zero(module, dim, drop)
                continue
            keep = torch.ones(unit_count(module, dim), dtype=torch.bool)
            keep[drop] = False
            slicer(module)(module, dim, torch.nonzero(keep).squeeze(1))


def unit_count(module: nn.Module, dim: int = 0) -> int:
    """How many units ``module`` holds along ``dim`` (a Linear's rows or columns)."""
    if isinstance(module, nn.Linear):
        return module.weight.shape[dim]
    if isinstance(module, nn.PReLU):
        return module.num_parameters
    if isinstance(module, nn.BatchNorm1d):
        return module.num_features
    return module.normalized_shape[0]


def add_to_bias(layer: nn.Linear, delta: torch.Tensor) -> None:
    """``bias <- bias + delta`` (out of place)."""
    bias = layer.bias
    bias.data = bias.data + delta.to(dtype=bias.dtype, device=bias.device)


def write_weights(layer: nn.Linear, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """Replace the layer's weight (and bias) values (out of place, same Parameters)."""
    layer.weight.data = weight.to(dtype=layer.weight.dtype, device=layer.weight.device)
    if bias is not None:
        layer.bias.data = bias.to(dtype=layer.bias.dtype, device=layer.bias.device)


def add_zero_biases(model: nn.Module, groups: dict[str, UnitGroup]) -> None:
    """Give every consumer of ``groups`` without a bias a zero one (to compensate into)."""
    for name in dict.fromkeys(c.module for g in groups.values() for c in g.consumers):
        layer = model.get_submodule(name)
        if layer.bias is None:
            weight = layer.weight
            layer.bias = nn.Parameter(weight.new_zeros(layer.out_features))
