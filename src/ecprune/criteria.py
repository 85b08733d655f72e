"""Importance criteria: one class per method, each a formula on the collected statistics.

A criterion says which statistics it needs (:meth:`Criterion.request`) and turns them into a
score shaped like the weight, plus a per-weight bias shift when it compensates. Selection (which
weights to remove) is separate: see :mod:`ecprune.compensation`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .nonlinear import brute_force_errors
from .sparsegpt import obs_saliency
from .statistics import ACCUMULATE_DTYPE, LayerStatistics, Statistics, StatisticsRequest


@dataclass(frozen=True)
class LayerImportance:
    """Per-weight ``score`` (higher = more important) and ``bias_shift`` (None: no compensation).

    Both are shaped like the layer's weight. Pruning weight ``(i, j)`` adds
    ``bias_shift[i, j]`` to ``bias[i]``.
    """

    score: torch.Tensor
    bias_shift: torch.Tensor | None


@dataclass(frozen=True)
class ScoringContext:
    """What a criterion may read besides the statistics."""

    model: nn.Module
    layers: dict[str, nn.Linear]
    weights: dict[str, torch.Tensor]
    statistics: Statistics
    seed: int
    output_fn: Callable[[object], torch.Tensor] | None
    progress: bool | None
    damping: float = 0.01


class Criterion:
    """Base class: subclasses set ``name`` and implement :meth:`layer_importance`.

    ``default_scope`` is where :func:`ecprune.prune` compares the scores unless told otherwise.
    """

    name: ClassVar[str]
    default_scope: ClassVar[str] = "global"
    compensates: ClassVar[bool] = False
    predicts_error: ClassVar[bool] = False
    needs_targets: ClassVar[bool] = False

    def request(self, *, loss, samples: int, seed: int) -> StatisticsRequest:
        """The statistics this criterion needs from the data pass."""
        del loss, samples
        return StatisticsRequest(seed=seed)

    def layer_importance(self, name: str, context: ScoringContext) -> LayerImportance:
        raise NotImplementedError

    def score(self, context: ScoringContext) -> dict[str, LayerImportance]:
        """Score every layer; results are cast to each weight's dtype."""
        result = {}
        for name, weight in context.weights.items():
            found = self.layer_importance(name, context)
            shift = found.bias_shift
            result[name] = LayerImportance(
                score=found.score.to(weight.dtype),
                bias_shift=None if shift is None else shift.to(weight.dtype),
            )
        return result


def _float64(weight: torch.Tensor) -> torch.Tensor:
    return weight.to(ACCUMULATE_DTYPE)


def mean_signal_shift(weight: torch.Tensor, mean_input: torch.Tensor) -> torch.Tensor:
    """``W_ij E[a_j]``: the shift that keeps the mean pre-activation when ``W_ij`` goes."""
    return _float64(weight) * mean_input[None, :]


def ecp_terms(weight: torch.Tensor, stats: LayerStatistics, count: int):
    """ECP's importance ``I`` and optimal shift ``delta*`` (float64, shaped like ``weight``).

    ``delta*_ij = W_ij E[s_i a_j] / E[s_i]`` and
    ``I_ij = W_ij^2 (E[s_i a_j^2] - E[s_i a_j]^2 / E[s_i])``. Neurons with ``E[s_i] = 0`` do not
    reach the output: they get ``I = 0`` and no shift.
    """
    w = _float64(weight)
    s = stats.sens_sum[:, None]  # (n_out, 1)
    alive = s > 0
    s_safe = torch.where(alive, s, torch.ones_like(s))
    p, q = stats.sens_act, stats.sens_act_sq
    # Q - P^2/S >= 0 by Cauchy-Schwarz; the clamp removes rounding below zero.
    weighted_var = (q - p.square() / s_safe).clamp_min(0) / count
    importance = w.square() * weighted_var
    shift = torch.where(alive, w * (p / s_safe + stats.input_shift[None, :]), torch.zeros_like(w))
    return importance, shift


class ECP(Criterion):
    """Elimination-compensation pruning (Ballini et al., arXiv:2602.20467, 2026).

    ``I_ij = min_delta E||J_i (delta - W_ij a_j)||^2``, the output error left after the best
    shift of bias ``b_i``; ``s_i = ||dy/du_i||^2``.
    """

    name = "ecp"
    compensates = True
    predicts_error = True

    def request(self, *, loss, samples: int, seed: int) -> StatisticsRequest:
        return StatisticsRequest(sensitivity=True, seed=seed)

    def layer_importance(self, name: str, context: ScoringContext) -> LayerImportance:
        stats = context.statistics
        importance, shift = ecp_terms(context.weights[name], stats.layers[name], stats.count)
        return LayerImportance(importance, shift)


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
        score = _float64(context.weights[name]).square() * second_moment.clamp_min(0) / stats.count
        return LayerImportance(score, None)


class Nonlinear(Criterion):
    """The paper's brute force: exact ``E||y - y_pruned||^2`` per removed weight with the
    mean-signal shift ``W_ij E[a_j]``, over a seeded subsample of ``nonlinear_samples`` inputs."""

    name = "nonlinear"
    compensates = True
    predicts_error = True

    def request(self, *, loss, samples: int, seed: int) -> StatisticsRequest:
        return StatisticsRequest(samples=samples, seed=seed)

    def layer_importance(self, name: str, context: ScoringContext) -> LayerImportance:
        stats, weight = context.statistics, context.weights[name]
        mean_input = stats.mean_input(name)
        score = brute_force_errors(context.model, name, context.layers[name], weight,
                                   mean_input, stats.samples, output_fn=context.output_fn,
                                   progress=context.progress)
        return LayerImportance(score, mean_signal_shift(weight, mean_input))


class Magnitude(Criterion):
    """``|W_ij|``, no compensation."""

    name = "magnitude"

    def layer_importance(self, name: str, context: ScoringContext) -> LayerImportance:
        return LayerImportance(context.weights[name].abs(), None)


class MagnitudeCompensated(Criterion):
    """Ablation: magnitude ranking plus the mean-signal shift ``W_ij E[a_j]``."""

    name = "magnitude-comp"
    compensates = True

    def layer_importance(self, name: str, context: ScoringContext) -> LayerImportance:
        weight = context.weights[name]
        shift = mean_signal_shift(weight, context.statistics.mean_input(name))
        return LayerImportance(weight.abs(), shift)


class Gradient(Criterion):
    """``|W_ij dL/dW_ij|`` with ``L`` the mean training loss, no compensation."""

    name = "gradient"
    needs_targets = True

    def request(self, *, loss, samples: int, seed: int) -> StatisticsRequest:
        return StatisticsRequest(loss=loss, seed=seed)

    def layer_importance(self, name: str, context: ScoringContext) -> LayerImportance:
        stats = context.statistics
        grad = stats.layers[name].loss_grad / stats.count
        return LayerImportance((_float64(context.weights[name]) * grad).abs(), None)


class Random(Criterion):
    """Uniformly random scores from a generator seeded with ``seed``, no compensation."""

    name = "random"

    def score(self, context: ScoringContext) -> dict[str, LayerImportance]:
        generator = torch.Generator().manual_seed(context.seed)
        return {
            name: LayerImportance(
                torch.rand(weight.shape, generator=generator, dtype=ACCUMULATE_DTYPE)
                .to(device=weight.device, dtype=weight.dtype),
                None,
            )
            for name, weight in context.weights.items()
        }


class ECPRefit(ECP):
    """ECP's scores and shifts; :func:`ecprune.prune` then refits every row's kept weights and
    bias by least squares toward the dense pre-activations (:mod:`ecprune.refit`). The refit
    needs the data, so :func:`ecprune.prune_by_importance` applies the shifts only. The pass
    also gathers each layer's Gram matrix: the refit allocation's error curves and the first
    layer's refit read it (:mod:`ecprune.allocation`, :func:`ecprune.refit.refit_layers`)."""

    name = "ecp-refit"
    predicts_error = False

    def request(self, *, loss, samples: int, seed: int) -> StatisticsRequest:
        return StatisticsRequest(sensitivity=True, gram=True, seed=seed)


class SparseGPT(Criterion):
    """Score ``E[s_i] w_ij^2 / [H^-1]_jj``: the OBS cost of removing ``w_ij`` from the dense
    layer's reconstruction problem (:func:`ecprune.sparsegpt.obs_saliency`) times the row's mean
    output sensitivity, comparable across layers. It only sets how many weights each layer
    loses; :func:`ecprune.prune` then runs SparseGPT (:mod:`ecprune.sparsegpt`), which picks
    the weights and updates the rest. No bias shift."""

    name = "sparsegpt"

    def request(self, *, loss, samples: int, seed: int) -> StatisticsRequest:
        return StatisticsRequest(sensitivity=True, gram=True, seed=seed)

    def layer_importance(self, name: str, context: ScoringContext) -> LayerImportance:
        stats = context.statistics.layers[name]
        saliency = obs_saliency(context.weights[name], context.layers[name].bias, stats.gram,
                                context.damping)
        mean_sensitivity = stats.sens_sum[:, None] / context.statistics.count
        return LayerImportance(mean_sensitivity * saliency, None)


class SparseGPTRefit(SparseGPT):
    """SparseGPT's scores; :func:`ecprune.prune` runs SparseGPT, then refits every row's kept
    weights and bias toward the dense pre-activations like ``"ecp-refit"``: OBS selection with
    the least-squares refit (the better selection on the diffusion-sorption problem,
    docs/beyond.md)."""

    name = "sparsegpt-refit"


class Wanda(Criterion):
    """Wanda (Sun, Liu, Bair and Kolter, "A simple and effective pruning approach for large
    language models", 2023): ``|W_ij| ||a_j||_2`` with the norm over the data, compared within
    each output row (``default_scope="row"``), no update."""

    name = "wanda"
    default_scope = "row"

    def request(self, *, loss, samples: int, seed: int) -> StatisticsRequest:
        return StatisticsRequest(input_norms=True, seed=seed)

    def layer_importance(self, name: str, context: ScoringContext) -> LayerImportance:
        norms = context.statistics.layers[name].input_sq_sum.sqrt()
        return LayerImportance(_float64(context.weights[name]).abs() * norms[None, :], None)


CRITERIA: dict[str, type[Criterion]] = {
    cls.name: cls
    for cls in (ECP, ECPNoCompensation, Nonlinear, Magnitude, Gradient, Random,
                MagnitudeCompensated, ECPRefit, SparseGPT, SparseGPTRefit, Wanda)
}


def _mse(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if target.numel() == output.numel():
        target = target.reshape(output.shape)
    return F.mse_loss(output, target.to(output.dtype))


def _cross_entropy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(output, target)


LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "cross_entropy": _cross_entropy,
    "mse": _mse,
}
