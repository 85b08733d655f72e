"""Weight updates after selection that more than one method shares: the least-squares refit of
every kept weight and bias toward the dense network (:mod:`ecprune.reconstruct.refit`), the
same with each row's support chosen on the refit's own equations (ADMM, swaps:
:mod:`ecprune.reconstruct.support`), and the passes on the network's output
(:mod:`ecprune.reconstruct.network`)."""

from __future__ import annotations

import torch

from .._validation import check_choice, check_nonnegative
from ..reconstruct.network import network_refit
from ..reconstruct.refit import REFIT_WEIGHTINGS, refit_layers
from ..reconstruct.support import Chooser, LayerProblem, refit_supports
from .base import UpdateStep


def check_refit(weighting: str, damping: float, *, caller: str) -> None:
    """Validate a refit's ``refit_weighting`` and ``damping``."""
    check_choice("refit_weighting", weighting, REFIT_WEIGHTINGS, caller=caller)
    check_nonnegative("damping", damping, caller=caller)


def refit(step: UpdateStep, *, weighting: str, damping: float) -> None:
    """Refit every layer of the step toward ``step.reference``, input to output, when the step
    removed weights and data is at hand; the first layer reuses the scoring pass's Gram matrix."""
    if step.batches is None or not step.removes_any:
        return  # no data: the selection and its own update only; nothing removed: unchanged
    options = step.options
    refit_layers(step.model, step.reference, step.layers, step.batches, weighting=weighting,
                 damping=damping, output_fn=options.output_fn, progress=options.progress,
                 grams=step.importances.grams)


def ecp_support(step: UpdateStep) -> Chooser:
    """The chooser that keeps the selection as it is: each row's candidates less the weights
    the selection removes (ECP's lowest scores, with the method's per-layer counts)."""
    newly = step.selection.newly_pruned

    def choose(problem: LayerProblem) -> torch.Tensor:
        return problem.candidates & ~newly[problem.name][:, problem.columns]

    return choose


def support_refit(step: UpdateStep, choose: Chooser, *, damping: float,
                  max_swaps: int) -> None:
    """Choose every row's support (then swap, ``max_swaps`` per row, within the groups of the
    selection's N:M pattern if it has one), refit it and write it, layer by layer toward
    ``step.reference`` (:mod:`ecprune.reconstruct.support`)."""
    options = step.options
    shifts = {name: result.bias_shift for name, result in step.importances.items()}
    refit_supports(step.model, step.reference, step.layers, step.batches, choose, shifts,
                   damping=damping, max_swaps=max_swaps, output_fn=options.output_fn,
                   progress=options.progress, grams=step.importances.grams,
                   pattern=step.selection.pattern)


def network_update(step: UpdateStep, *, passes: int, damping: float,
                   labels: bool = False) -> None:
    """``passes`` Gauss-Newton passes on the output error toward ``step.reference`` (with
    ``labels``: on the loss with the data's targets), masks kept
    (:mod:`ecprune.reconstruct.network`), when the step removed weights and data is at hand."""
    if step.batches is None or not step.removes_any:
        return
    options = step.options
    network_refit(step.model, step.reference, step.layers, step.batches, passes=passes,
                  damping=damping, output_fn=options.output_fn, progress=options.progress,
                  grams=step.importances.grams, labels=labels)
