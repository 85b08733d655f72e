"""Prune to an error budget: remove the most weights whose predicted output error fits.

The predicted relative output error of removing a set P of weights is
``sum_{(i,j) in P} I_ij / E||y||^2`` (the paper's first-order, interaction-free estimate, see
:class:`ecprune.PruneReport`). For a budget ``E`` the largest such set is the ``k`` lowest
scores with the largest ``k`` whose prefix sum stays at or below ``E * E||y||^2``; removing
them is exactly :func:`ecprune.prune_by_importance` at sparsity ``k / |W|``, global scope.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .api import importance, prune_by_importance
from .engine.layers import keep_mask, select_layers
from .methods import Method, names
from .report import Importances, PruneReport


@dataclass(frozen=True)
class BudgetChoice:
    """The sparsity an error budget allows.

    ``removed`` weights of ``total`` (weights already masked included), ``sparsity =
    removed / total``, and the predicted error of the weights removed now: ``predicted_error``
    (``sum I``) and ``relative_predicted_error`` (``sum I / E||y||^2``, at most the budget).
    """

    removed: int
    total: int
    sparsity: float
    predicted_error: float
    relative_predicted_error: float


def _check_budget(error_budget: object) -> float:
    if isinstance(error_budget, bool) or not isinstance(error_budget, int | float):
        raise TypeError(
            "The 'error_budget' parameter must be a float >= 0 (a relative output error such "
            f"as 0.01). Got {error_budget!r} of type {type(error_budget).__name__} instead."
        )
    if not math.isfinite(error_budget) or error_budget < 0:
        raise ValueError(
            "The 'error_budget' parameter must be a finite float >= 0 (a relative output error "
            f"such as 0.01). Got {error_budget!r} instead."
        )
    return float(error_budget)


def _check_predicts_error(importances: Importances) -> None:
    if not importances.method_object.predicts_error:
        valid = names(predicts_error=True)
        raise ValueError(
            f"Method {importances.method!r} does not predict an output error, so it cannot be "
            f"pruned to an error budget. Use one of {valid}, or pass a sparsity instead."
        )
    if not importances.mean_output_sq > 0:
        raise ValueError(
            "The model's output is zero on all the data (E||y||^2 = 0), so a relative error "
            "budget is undefined. Pass a sparsity instead."
        )


def budget_sparsity(model: nn.Module, importances: Importances,
                    error_budget: float) -> BudgetChoice:
    """The largest global sparsity whose predicted relative output error is <= ``error_budget``.

    Parameters
    ----------
    model : the model ``importances`` was computed on (its current masks count as removed).
    importances : from :func:`ecprune.importance` with a method that predicts an output error
        (``"ecp"``, ``"ecp-nocomp"``, ``"nonlinear"``).
    error_budget : bound on ``sum I / E||y||^2`` over the weights removed now, >= 0.

    Examples
    --------
    >>> import torch, ecprune
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    >>> scores = ecprune.importance(net, torch.randn(256, 4))
    >>> choice = ecprune.budget_sparsity(net, scores, 0.05)
    >>> choice.relative_predicted_error <= 0.05
    True
    """
    budget = _check_budget(error_budget)
    _check_predicts_error(importances)
    layers = select_layers(model, list(importances))
    present = torch.cat([keep_mask(layers[name]).reshape(-1).cpu() for name in importances])
    scores = torch.cat([result.score.reshape(-1).to(torch.float64).cpu()
                        for result in importances.values()])
    if not torch.isfinite(scores).all():
        raise ValueError("Scores contain NaN or infinite values; cannot rank the weights.")
    ordered = torch.sort(scores[present]).values
    prefix = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(ordered, 0)])
    limit = budget * importances.mean_output_sq
    # Largest m whose every prefix fits (prefix sums only grow: scores are >= 0).
    fits = int(torch.cumprod(prefix <= limit, 0).sum()) - 1
    total, existing = scores.numel(), int((~present).sum())
    new = min(fits, total - 1 - existing)  # sparsity must stay below 1
    error = prefix[max(new, 0)].item()
    return BudgetChoice(removed=existing + max(new, 0), total=total,
                        sparsity=(existing + max(new, 0)) / total, predicted_error=error,
                        relative_predicted_error=error / importances.mean_output_sq)


def prune_to_budget(model: nn.Module, data: object, error_budget: float,
                    method: str | Method = "ecp", **options) -> PruneReport:
    """Score, then remove the most weights whose predicted relative error fits ``error_budget``.

    Global scope; ``options`` as for :func:`ecprune.prune`. The report's
    ``relative_predicted_error`` is at most ``error_budget``; measure the real error with
    :func:`ecprune.output_error`.

    Examples
    --------
    >>> import torch, ecprune
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    >>> report = ecprune.prune_to_budget(net, torch.randn(256, 4), 0.01)
    >>> report.relative_predicted_error <= 0.01
    True
    """
    _check_budget(error_budget)
    scores = importance(model, data, method, **options)
    choice = budget_sparsity(model, scores, error_budget)
    return prune_by_importance(model, scores, choice.sparsity, "global", data=data)
