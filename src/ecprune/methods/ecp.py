"""ECP and its variants: the paper's criterion, its no-compensation ablation, and ECP followed
by the least-squares refit of the kept weights (``"ecp-refit"``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .._validation import check_choice, check_positive_int
from ..engine.statistics import ACCUMULATE_DTYPE, LayerStatistics, StatisticsRequest
from ..reconstruct.allocation import allocate, refit_curves
from .base import LayerImportance, Method, ScoringContext, SensitivityConfig, UpdateStep
from .updates import check_refit, ecp_support, network_update, refit, support_refit

ALLOCATIONS = ("global", "refit")
REFINES = ("none", "swaps")
OBJECTIVES = ("layer", "network", "loss")


@dataclass(frozen=True, kw_only=True)
class SensitivityMethod(SensitivityConfig, Method):
    """A method that reads ECP's output sensitivities ``s_i = ||dy/du_i||^2`` (``sensitivity``
    and ``probes``: :class:`ecprune.methods.base.SensitivityConfig`)."""

    def request(self, seed: int) -> StatisticsRequest:
        return self.sensitivity_request(seed)


def ecp_terms(weight: torch.Tensor, stats: LayerStatistics, count: int):
    """ECP's importance ``I`` and optimal shift ``delta*`` (float64, shaped like ``weight``).

    ``delta*_ij = W_ij P_ij / S_i`` and ``I_ij = W_ij^2 (Q_ij - P_ij^2 / S_i) / N`` with the
    sums ``S = sum s``, ``P = sum s a``, ``Q = sum s a^2`` (one row per sample; with several,
    their per-sample forms, :mod:`ecprune.engine.positions`). A bias the output does not see
    (``S_i = 0``, or below the rounding of its rows' sensitivities: a key bias under softmax
    attention) cannot compensate: no shift and ``I = W^2 Q / N``, which is 0 when the whole
    neuron is dead.
    """
    w = weight.to(ACCUMULATE_DTYPE)
    s = stats.sens_sum[:, None]  # (n_out, 1)
    alive = s > _rounding_floor(weight.dtype) * stats.row_sensitivity[:, None]
    s_safe = torch.where(alive, s, torch.ones_like(s))
    p, q = stats.sens_act, stats.sens_act_sq
    compensated = torch.where(alive, p.square() / s_safe, torch.zeros_like(p))
    # Q - P^2/S >= 0 by Cauchy-Schwarz; the clamp removes rounding below zero.
    weighted_var = (q - compensated).clamp_min(0) / count
    importance = w.square() * weighted_var
    shift = torch.where(alive, w * (p / s_safe + stats.input_shift[None, :]), torch.zeros_like(w))
    return importance, shift


def _rounding_floor(dtype: torch.dtype) -> float:
    """``|G|^2`` below this fraction of ``sum_p |g_p|^2`` is rounding of a sum that cancels
    (``100 eps^2`` of the dtype the sensitivities were computed in); with one row per sample
    the two are equal and the floor never applies."""
    return 100 * torch.finfo(dtype).eps ** 2


@dataclass(frozen=True, kw_only=True)
class ECP(SensitivityMethod):
    """Elimination-compensation pruning (Ballini et al., arXiv:2602.20467, 2026).

    ``I_ij = min_delta E||J_i (delta - W_ij a_j)||^2``, the output error left after the best
    shift of bias ``b_i``; ``s_i = ||dy/du_i||^2``.
    """

    name = "ecp"
    compensates = True
    predicts_error = True

    def layer_importance(self, name: str, context: ScoringContext) -> LayerImportance:
        stats = context.statistics
        importance, shift = ecp_terms(context.weights[name], stats.layers[name], stats.count)
        return LayerImportance(importance, shift)


@dataclass(frozen=True, kw_only=True)
class ECPNoCompensation(ECP):
    """Ablation: ``I0_ij = W_ij^2 E[s_i a_j^2]``, the linearised error of removal without shift."""

    name = "ecp-nocomp"
    compensates = False

    def layer_importance(self, name: str, context: ScoringContext) -> LayerImportance:
        stats, layer = context.statistics, context.statistics.layers[name]
        c = layer.input_shift[None, :]
        # sum s a^2 from the shifted sums: a^2 = (a - c)^2 + 2c(a - c) + c^2.
        s = layer.sens_sum[:, None]
        second_moment = layer.sens_act_sq + 2 * c * layer.sens_act + c.square() * s
        weight = context.weights[name].to(ACCUMULATE_DTYPE)
        return LayerImportance(weight.square() * second_moment.clamp_min(0) / stats.count, None)


@dataclass(frozen=True, kw_only=True)
class ECPRefit(ECP):
    """ECP's scores and shifts, then every row's kept weights and bias refit by least squares
    toward the dense pre-activations, layer by layer (:mod:`ecprune.reconstruct.refit`).

    ``weighting``: ``"plain"`` least squares on the pre-activations or ``"sensitivity"``,
    weighted by ECP's ``s_i(x)``. ``allocation``: how many weights each layer loses under
    ``scope="global"``: ``"refit"`` (the counts that minimise the error left after the refit,
    :mod:`ecprune.reconstruct.allocation`, from the Gram matrices this pass also gathers) or
    ``"global"`` (ECP's global ranking). ``damping``: relative Tikhonov term of every Gram
    matrix (:func:`ecprune.reconstruct.layerwise.ridge`). ``refine="swaps"``: once the mask is
    chosen, each row exchanges kept for pruned weights, the best exact swap at a time, while
    that lowers its refit error, at most ``max_swaps`` per row
    (:mod:`ecprune.reconstruct.swaps`; plain weighting only). ``objective="network"``: then
    ``network_passes`` Gauss-Newton passes on the output error toward the dense network over
    all kept weights and biases, masks kept, the output error on the data never increasing
    (:mod:`ecprune.reconstruct.network`); ``objective="loss"``: the same passes on the
    training loss with the data's labels (cross-entropy for integer targets, else squared
    error), the loss on the data never increasing. Without data (:func:`ecprune.prune_by_importance`
    with ``data=None``) only ECP's shifts are applied. For one-shot pruning at high ratios
    ``"ecp-admm"`` measured better at about the same cost (docs/beyond.md).
    """

    name = "ecp-refit"
    predicts_error = False
    rereads_data = True
    needs_reference = True
    weighting: str = "plain"
    allocation: str = "refit"
    damping: float = 0.01
    refine: str = "none"
    max_swaps: int = 100
    objective: str = "layer"
    network_passes: int = 2
    OPTIONS: ClassVar[dict[str, str]] = {
        **SensitivityMethod.OPTIONS, "refit_weighting": "weighting", "allocation": "allocation",
        "damping": "damping", "refine": "refine", "max_swaps": "max_swaps",
        "objective": "objective", "network_passes": "network_passes"}

    def check(self, caller: str) -> None:
        super().check(caller)
        check_refit(self.weighting, self.damping, caller=caller)
        check_choice("allocation", self.allocation, ALLOCATIONS, caller=caller)
        check_choice("refine", self.refine, REFINES, caller=caller)
        check_positive_int("max_swaps", self.max_swaps, caller=caller)
        check_choice("objective", self.objective, OBJECTIVES, caller=caller)
        check_positive_int("network_passes", self.network_passes, caller=caller)
        if self.refine == "swaps" and self.weighting != "plain":
            raise ValueError(
                f"The 'refine' parameter of {caller} is 'swaps', which evaluates swaps on the "
                f"plain least-squares refit, but refit_weighting={self.weighting!r}. Pass "
                "refit_weighting='plain' or refine='none'.")

    def request(self, seed: int) -> StatisticsRequest:
        return self.sensitivity_request(seed, gram=True)

    def curves(self, context: ScoringContext, scores: dict[str, LayerImportance]) -> dict | None:
        if self.allocation != "refit":
            return None
        return refit_curves(context.statistics, context.layers, context.weights,
                            {name: found.score for name, found in scores.items()},
                            self.damping, seed=context.seed)

    def layer_counts(self, importances, count: int) -> dict[str, int] | None:
        return None if importances.curves is None else allocate(importances.curves, count)

    def support(self, step: UpdateStep):
        """The chooser of each row's support (:mod:`ecprune.reconstruct.support`), or None to
        refit ECP's selection as it is."""
        return ecp_support(step) if self.refine == "swaps" else None

    def update(self, step: UpdateStep) -> None:
        choose = self.support(step)
        if choose is None or step.batches is None or not step.removes_any:
            super().update(step)
            refit(step, weighting=self.weighting, damping=self.damping)
        else:
            support_refit(step, choose, damping=self.damping,
                          max_swaps=self.max_swaps if self.refine == "swaps" else 0)
        if self.objective != "layer":
            network_update(step, passes=self.network_passes, damping=self.damping,
                           labels=self.objective == "loss")
