"""Choose every row's support on the refit's own normal equations, then refit on it: the layer
loop of ``"ecp-admm"`` and of ``refine="swaps"``.

Layer by layer from input to output, as :mod:`ecprune.reconstruct.refit` does, each layer's
sums ``G = sum x x^T`` and ``C = sum x u^T`` (``x = [a, 1]`` on the pruned upstream network,
``u`` the dense pre-activations) are gathered over **every** column a row may still keep (the
weights present before this step, plus the bias), not only over the chosen mask. A chooser
(ECP's selection, or :func:`ecprune.reconstruct.admm.admm_supports`) picks each row's support
from them; :func:`ecprune.reconstruct.swaps.best_swaps` may then improve it; finally every row
is refit exactly on its support,

    w_i = argmin_{w: w_j = 0 off K_i}  ||X w - u_i||^2 + lambda_i ||w - w0_i||^2,

with ``w0_i`` the row after ECP's bias shifts for the weights it loses and ``lambda_i =
damping * mean(diag G)`` over the chosen support before the swaps (as in ``"ecp-refit"``; it is
kept fixed while swapping, so that the swaps and this refit minimise the same objective). With
the chooser's support left as it is, the result equals ``"ecp-refit"``'s.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from ..engine.layers import effective_weight, keep_mask
from ..engine.tape import progress_disabled
from ..masking.pattern import Pattern
from .layerwise import BatchFactory, augmented_weight, execution_order, solve_spd, write_layer
from .refit import RowSystems, fill_systems
from .swaps import best_swaps


@dataclass(frozen=True)
class LayerProblem:
    """One layer's normal equations over its ``m`` active weight columns and the bias.

    ``gram`` (m + 1, m + 1) and ``cross`` (m + 1, n_out): ``sum x x^T`` and ``sum x u^T``, the
    ones column last; ``columns`` (m,): the active columns' indices in the layer;
    ``candidates`` (n_out, m): the weights each row may keep; ``start`` (n_out, m + 1): the
    rows ``[W, b]`` before this step.
    """

    name: str
    gram: torch.Tensor
    cross: torch.Tensor
    columns: torch.Tensor
    candidates: torch.Tensor
    start: torch.Tensor


# A chooser returns each row's kept weights (n_out, m) among the problem's candidates.
Chooser = Callable[[LayerProblem], torch.Tensor]


def gather_problem(model: nn.Module, reference: nn.Module, name: str, layer: nn.Linear,
                   batches: BatchFactory, *, output_fn: Callable | None = None,
                   progress: bool | None = None,
                   gram: torch.Tensor | None = None) -> LayerProblem:
    """The :class:`LayerProblem` of ``layer`` (one pass; none with ``gram``, for a layer whose
    inputs pruning cannot change, as in :func:`ecprune.reconstruct.refit.refit_layer`)."""
    if layer.bias is None:
        raise ValueError(f"Linear layer {name!r} needs a bias for its support refit; pass "
                         "add_bias=True.")
    present = keep_mask(layer)
    systems = RowSystems(torch.cat([present, present.new_ones(len(present), 1)], 1),
                         weighted=False)
    fill_systems(systems, model, reference, name, layer, batches, output_fn=output_fn,
                 progress=progress, gram=gram)
    columns = systems.active[:-1]
    start = augmented_weight(effective_weight(layer), layer.bias)[:, systems.active]
    return LayerProblem(name, systems.gram, systems.cross_all, columns, present[:, columns],
                        start)


def compensated_start(problem: LayerProblem, keep: torch.Tensor,
                      shift: torch.Tensor | None) -> torch.Tensor:
    """``w0``: the start rows masked to ``keep``, ECP's shifts of the dropped candidates added
    to the bias (``shift``: (n_out, n_in) per-weight shifts, or None)."""
    rows = problem.start.clone()
    rows[:, :-1] *= keep
    if shift is not None:
        dropped = problem.candidates & ~keep
        rows[:, -1] += (shift[:, problem.columns].to(rows.dtype) * dropped).sum(1)
    return rows


def refit_support(problem: LayerProblem, keep: torch.Tensor, w0: torch.Tensor, *,
                  damping: float, max_swaps: int, progress: bool | None = None,
                  pattern: Pattern | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Swap (``max_swaps`` per row, 0: none; within each group of an N:M ``pattern``) and refit
    every row; returns the final keep mask (n_out, m), the refit rows (n_out, m + 1) and the
    number of swaps made."""
    gram, cross = problem.gram, problem.cross
    m = len(problem.columns)
    fixed = torch.zeros(m + 1, dtype=torch.bool, device=gram.device)
    fixed[-1] = True  # the bias never leaves
    bias = keep.new_ones(len(keep), 1)
    supports = torch.cat([keep, bias], 1)
    candidates = torch.cat([problem.candidates, bias], 1)
    groups = None if pattern is None else torch.cat(
        [problem.columns // pattern.m, problem.columns.new_full((1,), -1)])  # the bias: none
    rows, swaps = w0.clone(), 0
    quiet = progress_disabled(progress) if max_swaps else True
    for i in tqdm(range(len(keep)), desc=f"swaps {problem.name}", unit="row", disable=quiet,
                  leave=False):
        support = supports[i]
        if not gram.diagonal()[support].any():
            continue  # the row never matters: keep its start
        lam = damping * float(gram.diagonal()[support].mean())
        rhs = cross[:, i] + lam * w0[i]
        if max_swaps:
            support, made = best_swaps(gram, rhs, lam, support, candidates[i], fixed,
                                       max_swaps, groups)
            supports[i], swaps = support, swaps + made
        index = torch.nonzero(support).squeeze(1)
        block = gram[index][:, index] + lam * torch.eye(len(index), dtype=gram.dtype,
                                                          device=gram.device)
        rows[i] = 0
        rows[i, index] = solve_spd(block, rhs[index, None], definite=lam > 0)[:, 0]
    return supports[:, :-1], rows, swaps


def write_problem(layer_name: str, layer: nn.Linear, problem: LayerProblem,
                  keep: torch.Tensor, rows: torch.Tensor) -> None:
    """Write the refit rows and masks of ``problem``'s active columns into ``layer``."""
    full_keep = torch.zeros_like(keep_mask(layer))
    full_keep[:, problem.columns] = keep
    weight = torch.zeros(layer.weight.shape, dtype=rows.dtype, device=rows.device)
    weight[:, problem.columns] = rows[:, :-1]
    write_layer(layer_name, layer, weight, rows[:, -1], full_keep)


def refit_supports(model: nn.Module, reference: nn.Module, layers: dict[str, nn.Linear],
                   batches: BatchFactory, choose: Callable[[LayerProblem], torch.Tensor],
                   shifts: dict[str, torch.Tensor | None], *, damping: float, max_swaps: int,
                   output_fn: Callable | None = None, progress: bool | None = None,
                   grams: dict[str, torch.Tensor] | None = None,
                   pattern: Pattern | None = None) -> int:
    """Choose, swap and refit every layer, input to output (see the module docstring); the
    first layer reuses ``grams``; swaps keep an N:M ``pattern``. Returns the number of swaps
    made."""
    swaps = 0
    for k, name in enumerate(execution_order(model, layers, batches, output_fn)):
        layer = layers[name]
        gram = grams.get(name) if grams is not None and k == 0 else None
        problem = gather_problem(model, reference, name, layer, batches, output_fn=output_fn,
                                 progress=progress, gram=gram)
        keep = choose(problem)
        w0 = compensated_start(problem, keep, shifts.get(name))
        keep, rows, made = refit_support(problem, keep, w0, damping=damping,
                                         max_swaps=max_swaps, progress=progress,
                                         pattern=pattern)
        write_problem(name, layer, problem, keep, rows)
        swaps += made
    return swaps
