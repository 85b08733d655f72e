"""Turn scores into exact-k selections of the weights to remove.

Selection removes exactly ``round(sparsity * |W|)`` weights over the selected layers in the
order of :func:`ecprune.masking.order.removal_order`: weights already masked first (they stay
pruned and count toward the ratio), then the lowest scores, ties broken by position (layer
order, then row-major index). ``scope`` sets where scores compete: ``"global"`` (all layers
together), ``"layer"`` (the same ratio in every layer) or ``"row"`` (the same ratio in every
output row, as Wanda compares its scores) or an N:M pattern's groups (``"2:4"``: every group
of 4 consecutive inputs of a row keeps 2, :mod:`ecprune.masking.pattern`); a method's own
per-layer counts go through :func:`select_counts`. Applying a selection is
:mod:`ecprune.masking.apply`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .order import lowest, removal_order
from .pattern import Pattern, check_existing, group_removals, parse_pattern

SCOPES = ("global", "layer", "row")


@dataclass(frozen=True)
class Selection:
    """Weights to remove now (``newly_pruned``, bool per layer), each layer's threshold and
    the N:M ``pattern`` the selection follows (None: unstructured), which the weight updates
    keep (:mod:`ecprune.masking.pattern`)."""

    newly_pruned: dict[str, torch.Tensor]
    thresholds: dict[str, float | None]
    pattern: Pattern | None = None


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


def already_pruned_error(name: str, existing: int, wanted: int, total: int) -> ValueError:
    return ValueError(
        f"{name} already has {existing} of {total} weights pruned, more than the {wanted} that "
        f"the requested sparsity removes ({wanted / total:.4f}). Ask for a sparsity of at least "
        f"{existing / total:.4f}; pruned weights are never restored."
    )


def threshold(scores: torch.Tensor, newly: torch.Tensor) -> float | None:
    """The highest score removed now (None if none is)."""
    return scores[newly].max().item() if newly.any() else None


def check_finite(scores: dict[str, torch.Tensor]) -> None:
    """Raise if a score is NaN or infinite."""
    if any(not torch.isfinite(s).all() for s in scores.values()):
        raise ValueError("Scores contain NaN or infinite values; cannot rank the weights.")


def select(scores: dict[str, torch.Tensor], present: dict[str, torch.Tensor],
           sparsity: float, scope: str) -> Selection:
    """Choose the weights to remove; ``present`` holds each layer's current keep mask.
    ``scope`` is one of :data:`SCOPES` or an N:M pattern such as ``"2:4"`` (the scores then
    compete within each group and ``sparsity`` is the pattern's, :func:`select_pattern`)."""
    check_finite(scores)
    if scope == "global":
        return _select_global(scores, present, sparsity)
    if scope == "row":
        return _select_rows(scores, present, sparsity)
    if scope == "layer":
        counts = layer_counts({name: s.numel() for name, s in scores.items()}, sparsity)
        return select_counts(scores, present, counts)
    return select_pattern(scores, present, parse_pattern(scope, caller="select"))


def _select_global(scores: dict[str, torch.Tensor], present: dict[str, torch.Tensor],
                   sparsity: float) -> Selection:
    """``scope="global"``: one ranking over all layers."""
    flat_scores = torch.cat([s.reshape(-1).to(torch.float64).cpu() for s in scores.values()])
    flat_present = torch.cat([p.reshape(-1).cpu() for p in present.values()])
    total, count = flat_present.numel(), round(sparsity * flat_present.numel())
    existing = int((~flat_present).sum())
    if existing > count:
        raise already_pruned_error("The model", existing, count, total)
    removed = lowest(flat_scores, flat_present, count) & flat_present
    newly, offset = {}, 0
    for name, s in scores.items():
        newly[name] = removed[offset : offset + s.numel()].reshape(s.shape).to(s.device)
        offset += s.numel()
    cut = threshold(flat_scores, removed)
    return Selection(newly, dict.fromkeys(scores, cut))


def select_pattern(scores: dict[str, torch.Tensor], present: dict[str, torch.Tensor],
                   pattern: Pattern) -> Selection:
    """Every group of ``M`` consecutive inputs of every row keeps exactly ``N`` weights: its
    ``M - N`` first in the removal order go (:func:`ecprune.masking.pattern.group_removals`)."""
    check_finite(scores)
    newly = {}
    for name, s in scores.items():
        check_existing(name, present[name], pattern)
        newly[name] = group_removals(s, present[name], pattern) & present[name]
    return Selection(newly, {name: threshold(s, newly[name]) for name, s in scores.items()},
                     pattern=pattern)


def select_counts(scores: dict[str, torch.Tensor], present: dict[str, torch.Tensor],
                  counts: dict[str, int]) -> Selection:
    """``counts[name]`` removals in each layer (weights already masked included), each by its
    lowest scores."""
    check_finite(scores)
    newly, thresholds = {}, {}
    for name, s in scores.items():
        keep = present[name].reshape(-1)
        existing = int((~keep).sum())
        if existing > counts[name]:
            raise already_pruned_error(f"Layer {name!r}", existing, counts[name], s.numel())
        removed = lowest(s.reshape(-1), keep, counts[name]) & keep
        newly[name] = removed.reshape(s.shape)
        thresholds[name] = threshold(s.reshape(-1), removed)
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
            raise already_pruned_error(f"Row {row} of layer {name!r}", int(existing[row]),
                                        int(wanted[row]), s.shape[1])
        order = removal_order(s, keep, dim=1)
        rank = torch.empty_like(order).scatter_(
            1, order, torch.arange(s.shape[1], device=s.device).expand_as(order))
        newly[name] = (rank < wanted[:, None]) & keep
        thresholds[name] = threshold(s, newly[name])
    return Selection(newly, thresholds)
