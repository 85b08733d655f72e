"""Weight updates after selection that more than one method shares: the least-squares refit of
every kept weight and bias toward the dense network (:mod:`ecprune.reconstruct.refit`)."""

from __future__ import annotations

from .._validation import check_choice, check_nonnegative
from ..reconstruct.refit import REFIT_WEIGHTINGS, refit_layers
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
