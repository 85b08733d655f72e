"""Schedules of multi-step pruning (``steps=k``)."""

from __future__ import annotations


def step_sparsities(start: float, sparsity: float, steps: int) -> list[float]:
    """Targets of ``steps`` prunings from ``start`` to ``sparsity``, geometric in the kept
    fraction: each step removes the same share of the weights still present.

    >>> [round(s, 4) for s in step_sparsities(0.0, 0.75, 2)]
    [0.5, 0.75]
    """
    if start >= sparsity:
        return [sparsity]
    kept, final = 1 - start, 1 - sparsity
    return [1 - kept * (final / kept) ** (t / steps) for t in range(1, steps)] + [sparsity]
