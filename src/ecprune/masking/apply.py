"""Apply a selection to the model in one transaction: masks, bias shifts and weight updates
land together or not at all.

Masks use ``torch.nn.utils.prune``'s reparametrisation (``weight_orig`` + ``weight_mask``), so
``prune.remove`` and ``prune.is_pruned`` work and Parameter identities are kept.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from ..engine.layers import keep_mask, stored_weight


def _set_mask(layer: nn.Linear, keep: torch.Tensor) -> None:
    """Install ``keep`` as the layer's weight mask (PyTorch reparametrisation)."""
    if hasattr(layer, "weight_mask") and torch_prune.is_pruned(layer):
        layer.weight_mask.copy_(keep.to(layer.weight_mask.dtype))
        layer.weight = layer.weight_orig * layer.weight_mask
    else:
        torch_prune.custom_from_mask(layer, "weight", keep)


def _unprune(layer: nn.Linear) -> None:
    """Undo a reparametrisation added by :func:`_set_mask`, restoring the original Parameter."""
    for key, hook in list(layer._forward_pre_hooks.items()):
        if isinstance(hook, torch_prune.BasePruningMethod) and hook._tensor_name == "weight":
            del layer._forward_pre_hooks[key]
    original = layer._parameters.pop("weight_orig")
    del layer._buffers["weight_mask"]
    delattr(layer, "weight")
    layer.weight = original


def apply_pruning(layers: dict[str, nn.Linear], newly_pruned: dict[str, torch.Tensor],
                  bias_shifts: dict[str, torch.Tensor | None]) -> None:
    """Mask ``newly_pruned`` weights and add their summed shifts to the biases, all or nothing.

    Parameters keep their identity (the weight Parameter becomes ``weight_orig``), so existing
    optimizers keep working.
    """
    plan = {}
    for name, layer in layers.items():
        keep = keep_mask(layer) & ~newly_pruned[name]
        shift = bias_shifts.get(name)
        delta = None if shift is None else (shift * newly_pruned[name]).sum(1)
        if delta is not None and layer.bias is None:
            raise ValueError(f"Linear layer {name!r} has no bias to compensate into.")
        plan[name] = (keep, delta)
    saved = {name: (layer.bias.detach().clone() if layer.bias is not None else None,
                    keep_mask(layer).clone(), torch_prune.is_pruned(layer))
             for name, layer in layers.items()}
    try:
        with torch.no_grad():
            for name, (keep, delta) in plan.items():
                layer = layers[name]
                if delta is not None:
                    layer.bias += delta.to(layer.bias.dtype)
                _set_mask(layer, keep)
    except Exception:
        _restore(layers, saved)
        raise


def _restore(layers: dict[str, nn.Linear], saved: dict) -> None:
    with torch.no_grad():
        for name, (bias, keep, was_pruned) in saved.items():
            layer = layers[name]
            if bias is not None:
                layer.bias.copy_(bias)
            if was_pruned:
                _set_mask(layer, keep)
            elif hasattr(layer, "weight_orig"):
                _unprune(layer)



@contextmanager
def preserved(layers: dict[str, nn.Linear]) -> Iterator[None]:
    """Restore the layers' weight values, masks and biases if the block raises.

    For multi-step pruning and weight reconstruction, which change the model several times:
    either all of it lands or none. Parameter identities are kept.
    """
    saved = {name: (layer.bias.detach().clone() if layer.bias is not None else None,
                    keep_mask(layer).clone(), torch_prune.is_pruned(layer),
                    stored_weight(layer).detach().clone())
             for name, layer in layers.items()}
    try:
        yield
    except BaseException:
        for name, layer in layers.items():
            if saved[name][0] is None:
                layer.bias = None
        _restore(layers, {name: entry[:3] for name, entry in saved.items()})
        with torch.no_grad():
            for name, layer in layers.items():
                stored_weight(layer).copy_(saved[name][3])
                if torch_prune.is_pruned(layer):
                    layer.weight = layer.weight_orig * layer.weight_mask
        raise
