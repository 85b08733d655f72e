"""The one-row fast path's statistics GEMM: ``s^T [a - c, (a - c)^2, 1]`` per layer and chunk,
on cache-sized tiles (:mod:`ecprune.engine.statistics`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .statistics import LayerStatistics

ACCUMULATE_DTYPE = torch.float64
# Samples per tile of the statistics GEMM: keeps its operands cache-sized.
STATS_TILE = 512


class SumsWorkspace:
    """Buffers, reused across chunks, for one layer's statistics GEMM on tiles of at most
    ``STATS_TILE`` samples (cache-sized; fresh multi-MB buffers would page-fault each chunk).

    ``right = [a - c, (a - c)^2, 1]`` (tile, 2 n_in + 1) and ``left = [s, 1]`` (tile, n_out + 1):
    ``left^T right``, summed over the tiles of a chunk, holds ``P``, ``Q`` and ``S`` in its
    first ``n_out`` rows and ``sum (a - c)``, ``sum (a - c)^2`` in its last.
    """

    def __init__(self, a: torch.Tensor, n_out: int):
        tile, n_in = min(len(a), STATS_TILE), a.shape[1]
        self.right = a.new_ones(tile, 2 * n_in + 1)
        self.left = a.new_ones(tile, n_out + 1)
        self.sums = a.new_empty(n_out + 1, 2 * n_in + 1)

    def add(self, layer: LayerStatistics, s: torch.Tensor, a: torch.Tensor) -> None:
        """Add one chunk's ``S``, ``P``, ``Q``, ``sum a`` (and ``sum a^2`` if kept) to ``layer``."""
        n_in, shift, sums = a.shape[1], layer.input_shift.to(a.dtype), self.sums.zero_()
        for start in range(0, len(a), len(self.right)):
            rows = a[start : start + len(self.right)]
            right, left = self.right[: len(rows)], self.left[: len(rows)]
            torch.sub(rows, shift, out=right[:, :n_in])
            torch.square(right[:, :n_in], out=right[:, n_in : 2 * n_in])
            left[:, :-1] = s[start : start + len(rows)]
            torch.addmm(sums, left.T, right, out=sums)  # (not addmm_: flop counters skip it)
        sums = sums.to(ACCUMULATE_DTYPE)  # (n_out + 1, 2 n_in + 1)
        layer.sens_act += sums[:-1, :n_in]
        layer.sens_act_sq += sums[:-1, n_in : 2 * n_in]
        layer.sens_sum += sums[:-1, -1]
        centred_sum, shift = sums[-1, :n_in], layer.input_shift
        layer.input_sum += centred_sum + len(a) * shift
        if layer.input_sq_sum is not None:
            layer.input_sq_sum += (sums[-1, n_in : 2 * n_in]
                                   + shift * (2 * centred_sum + len(a) * shift))
