"""The one removal order that every selection follows: weights already absent first, then the
lowest scores, ties broken by position.

Selection (:mod:`ecprune.masking.selection`), SparseGPT's block masks
(:mod:`ecprune.reconstruct.sparsegpt`) and the refit allocation's error curves
(:mod:`ecprune.reconstruct.allocation`) all read it from here, so they remove the same weights.
"""

from __future__ import annotations

import torch


def removal_order(scores: torch.Tensor, present: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Indices along ``dim`` in the order the weights go: absent ones (``present`` False) first,
    then ascending scores (compared in float64), ties by position (a stable sort).

    >>> removal_order(torch.tensor([0.3, 0.1, 0.2]), torch.tensor([True, True, False]))
    tensor([2, 1, 0])
    """
    ranked = torch.where(present, scores.to(torch.float64), -torch.inf)
    return torch.argsort(ranked, dim=dim, stable=True)


def lowest(scores: torch.Tensor, present: torch.Tensor, count: int) -> torch.Tensor:
    """Flat bool mask of the first ``count`` weights of :func:`removal_order` (1-D inputs)."""
    chosen = torch.zeros_like(present)
    chosen[removal_order(scores, present)[:count]] = True
    return chosen
