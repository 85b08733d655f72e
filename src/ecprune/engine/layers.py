"""Find the prunable ``nn.Linear`` layers of a model and read their (masked) weights.

Masks follow PyTorch's own reparametrisation (``torch.nn.utils.prune``): a pruned layer holds
``weight_orig`` and the buffer ``weight_mask``, and ``weight = weight_orig * weight_mask``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune


def select_layers(model: nn.Module,
                  layers: Iterable[str | nn.Module] | None) -> dict[str, nn.Linear]:
    """Map qualified names to the ``nn.Linear`` layers to prune, in ``named_modules`` order.

    ``layers=None`` selects every Linear; otherwise give qualified names or the modules.
    """
    if not isinstance(model, nn.Module):
        raise TypeError("The 'model' parameter must be a torch.nn.Module. "
                        f"Got {type(model).__name__}.")
    linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    if not linears:
        raise ValueError(
            f"The model ({type(model).__name__}) has no nn.Linear layers; ecprune prunes the "
            "weights of nn.Linear layers only."
        )
    if layers is None:
        return _untied(model, linears)
    if isinstance(layers, str | nn.Module):
        layers = [layers]
    by_module = {id(m): name for name, m in linears.items()}
    wanted = set()
    for item in layers:
        if isinstance(item, nn.Module):
            if id(item) not in by_module:
                raise ValueError(
                    f"The 'layers' parameter names a {type(item).__name__} that is not an "
                    f"nn.Linear of the model. The model's Linear layers are: {sorted(linears)}."
                )
            wanted.add(by_module[id(item)])
        elif item in linears:
            wanted.add(item)
        else:
            raise ValueError(
                f"The 'layers' parameter names {item!r}, which is not an nn.Linear of the model. "
                f"Expected some of: {sorted(linears)}."
            )
    if not wanted:
        raise ValueError("The 'layers' parameter is empty; name at least one nn.Linear layer.")
    return _untied(model, {name: m for name, m in linears.items() if name in wanted})


def _untied(model: nn.Module, selected: dict[str, nn.Linear]) -> dict[str, nn.Linear]:
    """``selected``, or a ValueError if one of their weights or biases is a Parameter another
    module also holds (tied weights): masks and shifts are per module, so the shared tensor
    would be pruned twice, differently. One module called twice is fine."""
    holders: dict[int, list[str]] = {}
    for name, module in model.named_modules():
        for key, tensor in module._parameters.items():
            if tensor is not None:
                holders.setdefault(id(tensor), []).append(f"{name}.{key}" if name else key)
    for name, layer in selected.items():
        for tensor in (stored_weight(layer), layer.bias):
            tied = holders.get(id(tensor), []) if tensor is not None else []
            if len(tied) > 1:
                raise ValueError(
                    f"The Parameters {tied} are one tensor (tied weights), held by Linear layer "
                    f"{name!r} and another module; ecprune masks and compensates per module, so "
                    "it would prune the shared tensor twice. Untie them, apply one module twice "
                    "instead, or exclude the layer with 'layers='.")
    return selected


def stored_weight(layer: nn.Linear) -> torch.Tensor:
    """The stored weight Parameter: ``weight_orig`` when masked, else ``weight``."""
    return layer.weight_orig if hasattr(layer, "weight_orig") else layer.weight


def keep_mask(layer: nn.Linear) -> torch.Tensor:
    """Boolean mask of the weights still present (all True for an unpruned layer)."""
    if torch_prune.is_pruned(layer) and hasattr(layer, "weight_mask"):
        return layer.weight_mask.detach() != 0
    return torch.ones_like(layer.weight, dtype=torch.bool)


def effective_weight(layer: nn.Linear) -> torch.Tensor:
    """The weight the layer computes with (``weight_orig * weight_mask`` when pruned), detached."""
    if hasattr(layer, "weight_orig") and hasattr(layer, "weight_mask"):
        return (layer.weight_orig * layer.weight_mask).detach()
    return layer.weight.detach()


def model_dtype_device(model: nn.Module) -> tuple[torch.dtype, torch.device]:
    """The floating dtype and device of the model's first floating parameter."""
    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype, tensor.device
    raise ValueError("The model has no floating-point parameters to prune.")


def add_zero_biases(layers: dict[str, nn.Linear]) -> list[str]:
    """Give every bias-free layer a zero bias (same dtype and device); return their names."""
    added = []
    for name, layer in layers.items():
        if layer.bias is None:
            weight = effective_weight(layer)
            layer.bias = nn.Parameter(torch.zeros(layer.out_features, dtype=weight.dtype,
                                                  device=weight.device))
            added.append(name)
    return added


def copy_model(model: nn.Module) -> nn.Module:
    """``copy.deepcopy(model)``, also when a pruned layer's ``weight`` holds an autograd graph.

    After a forward pass with gradients, ``weight = weight_orig * weight_mask`` is not a leaf
    and plain ``deepcopy`` refuses it; its copy is the detached value (recomputed by the
    pruning hook on the next forward anyway).
    """
    memo = {id(m.weight): m.weight.detach().clone() for m in model.modules()
            if isinstance(m, nn.Linear) and hasattr(m, "weight_orig")}
    return copy.deepcopy(model, memo)


def bake_masks(model: nn.Module) -> nn.Module:
    """Make the pruning masks of every ``nn.Linear`` permanent, in place; return ``model``.

    ``torch.nn.utils.prune.remove`` on each masked weight: ``weight = weight_orig * mask``
    becomes a plain Parameter, and the mask and hook are dropped.
    """
    for module in model.modules():
        if isinstance(module, nn.Linear) and hasattr(module, "weight_orig"):
            torch_prune.remove(module, "weight")
    return model
