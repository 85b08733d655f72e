"""Check candidate unit groups on a copy of the model before anything is removed.

A dependency graph can miss a use of a unit (Torch-Pruning 1.6 does not see the model's input
in a residual sum ``x + f(x)``, nor a sum over the units): removing such units would break the
forward pass or change the output through a path that the consumers' compensation never sees.
Every candidate is therefore tried on a copy: its units but one are removed for real, which must
run and keep the output's shape, and removed by zeroing, which must give the same output.
Groups that fail are left alone (and reported).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

import torch
from torch import nn

from ..engine.positions import sample_blocks
from ..engine.tape import LayerTape, eval_mode, forward
from ..reconstruct.layerwise import detached_copy
from .groups import UnitGroup
from .shrink import remove_units
from .transaction import restoring

logger = logging.getLogger(__name__)

# A verified removal agrees with zeroing the consumers' columns up to rounding: outputs may
# differ by this fraction of the output's largest magnitude (float32 matrix products of a few
# thousand terms round to ~1e-6 relative; a unit that escapes the consumers moves outputs by
# the size of its contribution, orders of magnitude more).
EXACT_RTOL = 1e-4
# Modules that mix the units they normalise: removing a unit changes the others' outputs, so
# removal is not the same as zeroing the consumers' columns (the refit makes up for it).
MIXING = (nn.LayerNorm,)


def _run(model: nn.Module, example: torch.Tensor, output_fn: Callable | None) -> torch.Tensor:
    with torch.no_grad(), eval_mode(model):
        return forward(model, example, output_fn)[1]


def _problem(copy: nn.Module, group: UnitGroup, example: torch.Tensor, expected: torch.Tensor,
             output_fn: Callable | None) -> tuple[str | None, bool]:
    """Why removing ``group``'s units is unsafe (None if it is safe), and whether it is exact.

    Every unit but the first is removed from ``copy`` once for real and once by zeroing its
    rows and columns (both undone afterwards); the first must run and keep the output's shape,
    and, unless a module mixes the units, both must agree.
    """
    chosen = torch.ones(group.size, dtype=torch.bool)
    chosen[0] = False
    try:
        with restoring(copy):
            remove_units(copy, {group.name: group}, {group.name: chosen}, shrink=True)
            removed = _run(copy, example, output_fn)
    except (RuntimeError, ValueError, IndexError) as err:
        return f"removing its units breaks the forward pass ({err})", False
    if removed.shape != expected.shape:
        return (f"removing its units changes the output's shape from {tuple(expected.shape)} "
                f"to {tuple(removed.shape)}"), False
    with restoring(copy):
        remove_units(copy, {group.name: group}, {group.name: chosen}, shrink=False)
        zeroed = _run(copy, example, output_fn)
    scale = expected.abs().max().item()
    exact = torch.allclose(removed, zeroed, rtol=0, atol=EXACT_RTOL * max(scale, 1.0))
    mixing = any(isinstance(copy.get_submodule(m.module), MIXING) for m in group.members)
    if not exact and not mixing:
        return ("its units reach the output other than through the columns of "
                f"{[c.module for c in group.consumers]} (e.g. a sum over the units)"), False
    return None, exact and not mixing


def verified(model: nn.Module, candidates: list[UnitGroup], example: torch.Tensor,
             output_fn: Callable | None) -> tuple[list[UnitGroup], dict[str, str]]:
    """The candidates whose removal is safe (with ``exact`` set) and, for the others, why not.

    The checks run on a copy of ``model``; ``model`` is not touched.
    """
    copy = detached_copy(model)
    expected = _run(copy, example, output_fn)
    safe, skipped = [], {}
    for group in candidates:
        if group.size < 2:  # nothing can go (one unit is always kept): nothing to check
            safe.append(group)
            continue
        reason, exact = _problem(copy, group, example, expected, output_fn)
        if reason is None:
            safe.append(replace(group, exact=exact))
        else:
            logger.info("prune_neurons leaves the units of %r alone: %s", group.name, reason)
            skipped[group.name] = reason
    return safe, skipped


def unusual_calls(model: nn.Module, groups: list[UnitGroup], example: torch.Tensor,
                  output_fn: Callable | None) -> dict[str, str]:
    """Why, for each group with a Linear layer that does not run once per forward on
    (batch, features) or (batch, tokens, features) inputs, its units are left alone: their
    statistics are per sample, one block of rows each (:mod:`ecprune.structured.moments`);
    repeated calls and rows shared by the samples (a DeepONet's trunk) are not supported."""
    names = dict.fromkeys(s.module for g in groups for s in (*g.producers, *g.consumers))
    layers = {name: model.get_submodule(name) for name in names}
    with torch.no_grad(), eval_mode(model), LayerTape(layers, differentiable=False) as tape:
        forward(model, example, output_fn)
    problems = {}
    for group in groups:
        items = (*group.producers, *group.consumers)
        calls = {item.module: tape.calls.get(item.module, []) for item in items}
        repeated = next((name for name, c in calls.items() if len(c) != 1), None)
        if repeated is not None:
            shapes = [tuple(a.shape) for a, _ in calls[repeated]]
            problems[group.name] = (
                f"{repeated!r} runs {len(calls[repeated])} time(s) per forward on inputs of "
                f"shape(s) {shapes}; prune_neurons needs one call on (batch, features) or "
                "(batch, tokens, features)")
            continue
        if all(c[0][0].ndim == 2 and len(c[0][0]) == len(example) for c in calls.values()):
            continue  # one row per sample
        with eval_mode(model):
            blocks = sample_blocks(model, {n: layers[n] for n in calls}, example, output_fn)
        if blocks is None:
            shapes = {name: tuple(c[0][0].shape) for name, c in calls.items()}
            problems[group.name] = (
                f"the rows of {shapes} (input shapes for {len(example)} samples) are not one "
                "block per sample (rows shared by the samples, or token-major); prune_neurons "
                "needs one call on (batch, features) or (batch, tokens, features)")
    return problems
