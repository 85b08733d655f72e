"""Turn scores into exact-k masks and apply them, with their bias shifts, atomically.

Selection removes exactly ``round(sparsity * |W|)`` weights over the selected layers: weights
already masked are removed first (they stay pruned and count toward the ratio), then the
lowest scores, ties broken by position (layer order, then row-major index). ``scope`` sets
where scores compete: ``"global"`` (all layers together), ``"layer"`` (the same ratio in every
layer) or ``"row"`` (the same ratio in every output row, as Wanda compares its scores). Masks use
``torch.nn.utils.prune``'s reparametrisation, so ``prune.remove`` and ``prune.is_pruned`` work.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from .layers import keep_mask


@dataclass(frozen=True)
class Selection:
    """Weights to remove now (``newly_pruned``, bool per layer) and each layer's threshold."""

    newly_pruned: dict[str, torch.Tensor]
    thresholds: dict[str, float | None]


def layer_counts(totals: dict[str, int], sparsity: float) -> dict[str, int]:
    """Removals per layer for ``scope="layer"``: ``round(sparsity * n_l)`` each, nudged by one
    where needed (closest to the rounding boundary first) so they sum to
    ``round(sparsity * sum n_l)``.

    >>> layer_counts({"a": 3, "b": 3}, 0.5)
    {'a': 1, 'b': 2}
    """
    exact = {name: sparsity * n for name, n in totals.items()}
    counts = {name: round(q) for name, q in exact.items()}
    missing = round(sparsity * sum(totals.values())) - sum(counts.values())
    step = 1 if missing > 0 else -1
    # Layers whose rounding moved furthest in the direction opposite to `step` go first.
    order = sorted(exact, key=lambda name: step * (counts[name] - exact[name]))
    for name in order[: abs(missing)]:
        counts[name] += step
    return counts


def _already_pruned_error(name: str, existing: int, wanted: int, total: int) -> ValueError:
    return ValueError(
        f"{name} already has {existing} of {total} weights pruned, more than the {wanted} that "
        f"the requested sparsity removes ({wanted / total:.4f}). Ask for a sparsity of at least "
        f"{existing / total:.4f}; pruned weights are never restored."
    )


def _lowest(scores: torch.Tensor, present: torch.Tensor, count: int) -> torch.Tensor:
    """Flat bool mask of the ``count`` weights to remove: absent ones first, then lowest scores."""
    ranked = torch.where(present, scores.to(torch.float64), -torch.inf)
    order = torch.argsort(ranked, stable=True)[:count]
    chosen = torch.zeros_like(present)
    chosen[order] = True
    return chosen


def _threshold(scores: torch.Tensor, newly: torch.Tensor) -> float | None:
    return scores[newly].max().item() if newly.any() else None


def _check_finite(scores: dict[str, torch.Tensor]) -> None:
    if any(not torch.isfinite(s).all() for s in scores.values()):
        raise ValueError("Scores contain NaN or infinite values; cannot rank the weights.")


def select(scores: dict[str, torch.Tensor], present: dict[str, torch.Tensor],
           sparsity: float, scope: str) -> Selection:
    """Choose the weights to remove; ``present`` holds each layer's current keep mask."""
    _check_finite(scores)
    if scope == "global":
        flat_scores = torch.cat([s.reshape(-1).to(torch.float64).cpu() for s in scores.values()])
        flat_present = torch.cat([p.reshape(-1).cpu() for p in present.values()])
        total, count = flat_present.numel(), round(sparsity * flat_present.numel())
        existing = int((~flat_present).sum())
        if existing > count:
            raise _already_pruned_error("The model", existing, count, total)
        removed = _lowest(flat_scores, flat_present, count) & flat_present
        newly, offset = {}, 0
        for name, s in scores.items():
            newly[name] = removed[offset : offset + s.numel()].reshape(s.shape).to(s.device)
            offset += s.numel()
        threshold = _threshold(flat_scores, removed)
        return Selection(newly, dict.fromkeys(scores, threshold))
    if scope == "row":
        return _select_rows(scores, present, sparsity)
    counts = layer_counts({name: s.numel() for name, s in scores.items()}, sparsity)
    return select_counts(scores, present, counts)


def select_counts(scores: dict[str, torch.Tensor], present: dict[str, torch.Tensor],
                  counts: dict[str, int]) -> Selection:
    """``counts[name]`` removals in each layer (weights already masked included), each by its
    lowest scores."""
    _check_finite(scores)
    newly, thresholds = {}, {}
    for name, s in scores.items():
        keep = present[name].reshape(-1)
        existing = int((~keep).sum())
        if existing > counts[name]:
            raise _already_pruned_error(f"Layer {name!r}", existing, counts[name], s.numel())
        removed = _lowest(s.reshape(-1), keep, counts[name]) & keep
        newly[name] = removed.reshape(s.shape)
        thresholds[name] = _threshold(s.reshape(-1), removed)
    return Selection(newly, thresholds)


def _select_rows(scores: dict[str, torch.Tensor], present: dict[str, torch.Tensor],
                 sparsity: float) -> Selection:
    """``scope="row"``: ``round(sparsity * n_in)`` per row, nudged to the exact global count."""
    counts = layer_counts({(name, i): s.shape[1] for name, s in scores.items()
                           for i in range(s.shape[0])}, sparsity)
    newly, thresholds = {}, {}
    for name, s in scores.items():
        keep = present[name]
        wanted = torch.tensor([counts[name, i] for i in range(s.shape[0])], device=s.device)
        existing = (~keep).sum(1)
        if (existing > wanted).any():
            row = int(torch.nonzero(existing > wanted)[0])
            raise _already_pruned_error(f"Row {row} of layer {name!r}", int(existing[row]),
                                        int(wanted[row]), s.shape[1])
        ranked = torch.where(keep, s.to(torch.float64), -torch.inf)
        order = torch.argsort(ranked, dim=1, stable=True)
        rank = torch.empty_like(order).scatter_(
            1, order, torch.arange(s.shape[1], device=s.device).expand_as(order))
        newly[name] = (rank < wanted[:, None]) & keep
        thresholds[name] = _threshold(s, newly[name])
    return Selection(newly, thresholds)


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
                    _values(layer).detach().clone())
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
                _values(layer).copy_(saved[name][3])
                if torch_prune.is_pruned(layer):
                    layer.weight = layer.weight_orig * layer.weight_mask
        raise


def _values(layer: nn.Linear) -> torch.Tensor:
    """The stored weight values: ``weight_orig`` when masked, else ``weight``."""
    return layer.weight_orig if hasattr(layer, "weight_orig") else layer.weight
