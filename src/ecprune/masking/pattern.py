"""Semi-structured N:M sparsity: in every output row, each group of ``M`` consecutive inputs
(columns ``0..M-1``, ``M..2M-1``, ...) keeps at most ``N`` weights.

:func:`group_removals` removes, in every group, the ``M - N`` weights first in the removal order
(:func:`ecprune.masking.order.removal_order`: weights already masked, then the lowest scores,
ties by position), so the sparsity is exactly ``1 - N/M``; selection passes the pattern where
it passes a scope (:func:`ecprune.masking.selection.select`). :func:`satisfies_pattern` checks a
mask. NVIDIA's sparse tensor cores run ``2:4`` (:func:`ecprune.to_semi_structured`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from torch import nn

from ..engine.layers import effective_weight
from .order import removal_order

_FORM = re.compile(r"\s*(\d+)\s*:\s*(\d+)\s*")
# A sparsity this close to 1 - N/M is that ratio computed another way (e.g. 2/3 for "1:3").
SPARSITY_ATOL = 1e-12


@dataclass(frozen=True)
class Pattern:
    """``n`` kept of every ``m`` consecutive inputs of a row (``0 < n < m``)."""

    n: int
    m: int

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"

    @property
    def sparsity(self) -> float:
        """The share of weights removed, ``1 - n/m``."""
        return 1 - self.n / self.m

    @property
    def removals(self) -> int:
        """Weights removed per group, ``m - n``."""
        return self.m - self.n


def parse_pattern(pattern: object, *, caller: str = "prune") -> Pattern:
    """The :class:`Pattern` of a text ``"N:M"`` (or a :class:`Pattern`), else a ValueError.

    >>> parse_pattern("2:4")
    Pattern(n=2, m=4)
    """
    if isinstance(pattern, Pattern):
        return pattern
    found = _FORM.fullmatch(pattern) if isinstance(pattern, str) else None
    n, m = (int(found[1]), int(found[2])) if found else (0, 0)
    if not 0 < n < m:
        raise ValueError(
            f"The 'pattern' parameter of {caller} must be a string 'N:M' with integers "
            f"0 < N < M (N weights kept of every M consecutive inputs, e.g. '2:4'). Got "
            f"{pattern!r} instead."
        )
    return Pattern(n, m)


def check_pattern_sparsity(sparsity: object, pattern: Pattern, *, caller: str) -> float:
    """The sparsity a pattern fixes, ``1 - N/M``: ``sparsity`` must be None or equal it (within
    :data:`SPARSITY_ATOL`)."""
    if sparsity is None:
        return pattern.sparsity
    if (isinstance(sparsity, bool) or not isinstance(sparsity, int | float)
            or not math.isclose(sparsity, pattern.sparsity, rel_tol=0, abs_tol=SPARSITY_ATOL)):
        raise ValueError(
            f"The 'sparsity' parameter of {caller} must be 1 - N/M = {pattern.sparsity!r} with "
            f"pattern='{pattern}' (or None or left out, which means the same). Got "
            f"{sparsity!r} instead."
        )
    return pattern.sparsity


def check_pattern_layers(layers: dict[str, nn.Linear], pattern: Pattern) -> None:
    """Raise unless every layer's ``in_features`` is a multiple of ``M``."""
    for name, layer in layers.items():
        if layer.in_features % pattern.m:
            raise ValueError(
                f"Linear layer {name!r} has in_features={layer.in_features}, not a multiple of "
                f"M={pattern.m}, so pattern='{pattern}' cannot group its inputs in blocks of "
                f"{pattern.m}. Leave it out with layers=[...]."
            )


def _groups(tensor: torch.Tensor, pattern: Pattern) -> torch.Tensor:
    """``tensor`` (n_out, n_in) viewed as (n_out, n_in / M, M)."""
    return tensor.reshape(tensor.shape[0], -1, pattern.m)


def check_existing(name: str, present: torch.Tensor, pattern: Pattern) -> None:
    """Raise if a group of layer ``name`` has more than ``M - N`` weights masked already."""
    absent = (~_groups(present, pattern)).sum(-1)  # (n_out, groups)
    if (absent > pattern.removals).any():
        row, group = (int(k) for k in torch.nonzero(absent > pattern.removals)[0])
        first = group * pattern.m
        raise ValueError(
            f"Row {row}, inputs {first}..{first + pattern.m - 1} of layer {name!r} already "
            f"have {int(absent[row, group])} of {pattern.m} weights pruned, more than the "
            f"{pattern.removals} that pattern='{pattern}' removes; pruned weights are never "
            "restored. Prune to a pattern with fewer kept weights, or without one."
        )


def group_removals(scores: torch.Tensor, present: torch.Tensor,
                   pattern: Pattern) -> torch.Tensor:
    """Bool mask (n_out, n_in) of the ``M - N`` weights of every group first in the removal
    order (masked ones included); ``scores`` and ``present`` shaped like the weight."""
    order = removal_order(_groups(scores, pattern), _groups(present, pattern), dim=-1)
    chosen = torch.zeros_like(order, dtype=torch.bool)
    chosen.scatter_(-1, order[..., :pattern.removals], True)
    return chosen.reshape(scores.shape)


def satisfies_pattern(mask: torch.Tensor | nn.Linear, pattern: str | Pattern) -> bool:
    """Whether every group of ``M`` consecutive inputs of every row keeps at most ``N``.

    ``mask``: a keep mask, a ``weight_mask`` or a weight (nonzero entries are kept), shaped
    (n_out, n_in) with ``n_in`` a multiple of ``M``, or an ``nn.Linear`` (its masked weight).

    >>> satisfies_pattern(torch.tensor([[1.0, 0.0, 0.0, 2.0]]), "2:4")
    True
    """
    pattern = parse_pattern(pattern, caller="satisfies_pattern")
    kept = (effective_weight(mask) if isinstance(mask, nn.Module) else mask.detach()) != 0
    if kept.ndim != 2 or kept.shape[1] % pattern.m:
        raise ValueError(
            f"satisfies_pattern needs a (n_out, n_in) mask with n_in a multiple of "
            f"M={pattern.m}; got shape {tuple(kept.shape)}."
        )
    return bool((_groups(kept, pattern).sum(-1) <= pattern.n).all())
