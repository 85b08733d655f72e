"""The paper's cheap baselines and Wanda: magnitude (with and without the mean-signal shift),
gradient, random and Wanda's activation-weighted magnitude."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from .._validation import check_choice
from ..engine.statistics import ACCUMULATE_DTYPE, StatisticsRequest
from ..targets import loss_name, regression_target
from .base import LayerImportance, Method, ScoringContext

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _mse(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(output, regression_target(output, target, "The 'mse' loss"))


def _cross_entropy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(output, target)


LOSSES: dict[str, LossFn] = {"cross_entropy": _cross_entropy, "mse": _mse}


def mean_signal_shift(weight: torch.Tensor, mean_input: torch.Tensor) -> torch.Tensor:
    """``W_ij E[a_j]``: the shift that keeps the mean pre-activation when ``W_ij`` goes."""
    return weight.to(ACCUMULATE_DTYPE) * mean_input[None, :]


@dataclass(frozen=True, kw_only=True)
class Magnitude(Method):
    """``|W_ij|``, no compensation."""

    name = "magnitude"

    def layer_importance(self, name: str, context: ScoringContext) -> LayerImportance:
        return LayerImportance(context.weights[name].abs(), None)


@dataclass(frozen=True, kw_only=True)
class MagnitudeCompensated(Method):
    """Ablation: magnitude ranking plus the mean-signal shift ``W_ij E[a_j]``."""

    name = "magnitude-comp"
    compensates = True

    def layer_importance(self, name: str, context: ScoringContext) -> LayerImportance:
        weight = context.weights[name]
        shift = mean_signal_shift(weight, context.statistics.mean_input(name))
        return LayerImportance(weight.abs(), shift)


def _auto_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return LOSSES[loss_name(target)](output, target)


@dataclass(frozen=True, kw_only=True)
class Gradient(Method):
    """``|W_ij dL/dW_ij|`` with ``L`` the mean training loss, no compensation.

    ``loss``: ``"cross_entropy"``, ``"mse"`` or ``f(output, target) -> mean``; None:
    cross-entropy for integer targets, MSE otherwise.
    """

    name = "gradient"
    needs_targets = True
    loss: str | LossFn | None = None
    OPTIONS: ClassVar[dict[str, str]] = {"loss": "loss"}

    def check(self, caller: str) -> None:
        if self.loss is not None and not callable(self.loss):
            check_choice("loss", self.loss, LOSSES, caller=caller)

    def loss_fn(self) -> LossFn:
        """The loss, failing clearly on batches without targets."""
        loss = _auto_loss if self.loss is None else LOSSES.get(self.loss, self.loss)

        def with_targets(output: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
            if target is None:
                raise ValueError(
                    f"Method {self.label!r} needs targets: pass data as (inputs, targets) "
                    "batches, e.g. a TensorDataset(inputs, targets) or a DataLoader over one."
                )
            if not target.is_floating_point() and target.numel() and (
                    int(target.min()) < 0 or int(target.max()) >= output.shape[-1]):
                raise ValueError(
                    f"Method {self.label!r} got class targets from {int(target.min())} to "
                    f"{int(target.max())}, but the model has {output.shape[-1]} outputs; "
                    f"expected classes 0 to {output.shape[-1] - 1} (or float targets for mse).")
            return loss(output, target)

        return with_targets

    def request(self, seed: int) -> StatisticsRequest:
        return StatisticsRequest(loss=self.loss_fn(), seed=seed)

    def layer_importance(self, name: str, context: ScoringContext) -> LayerImportance:
        stats = context.statistics
        grad = stats.layers[name].loss_grad / stats.count
        weight = context.weights[name].to(ACCUMULATE_DTYPE)
        return LayerImportance((weight * grad).abs(), None)


@dataclass(frozen=True, kw_only=True)
class Random(Method):
    """Uniformly random scores from a generator seeded with ``seed`` (None: the run's ``seed``
    option), no compensation."""

    name = "random"
    seed: int | None = None

    def check(self, caller: str) -> None:
        seed = self.seed
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"The 'seed' parameter of {caller} must be an int or None. "
                             f"Got {self.seed!r} instead.")

    def score(self, context: ScoringContext) -> dict[str, LayerImportance]:
        seed = context.seed if self.seed is None else self.seed
        generator = torch.Generator().manual_seed(seed)
        return {
            name: LayerImportance(
                torch.rand(weight.shape, generator=generator, dtype=ACCUMULATE_DTYPE)
                .to(device=weight.device, dtype=weight.dtype),
                None,
            )
            for name, weight in context.weights.items()
        }


@dataclass(frozen=True, kw_only=True)
class Wanda(Method):
    """Wanda (Sun, Liu, Bair and Kolter, "A simple and effective pruning approach for large
    language models", 2023): ``|W_ij| ||a_j||_2`` with the norm over the data, compared within
    each output row (``default_scope="row"``), no update."""

    name = "wanda"
    default_scope = "row"

    def request(self, seed: int) -> StatisticsRequest:
        return StatisticsRequest(input_norms=True, seed=seed)

    def layer_importance(self, name: str, context: ScoringContext) -> LayerImportance:
        norms = context.statistics.layers[name].input_sq_sum.sqrt()
        weight = context.weights[name].to(ACCUMULATE_DTYPE)
        return LayerImportance(weight.abs() * norms[None, :], None)
