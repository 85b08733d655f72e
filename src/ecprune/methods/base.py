"""What a pruning method is: one frozen, validated configuration and everything that differs
between methods.

A :class:`Method` says which statistics it needs from the data pass (:meth:`Method.request`),
turns them into a score shaped like each weight plus, when it compensates, a per-weight bias
shift (:meth:`Method.layer_importance`), optionally decides how many weights each layer loses
(:meth:`Method.curves`, :meth:`Method.layer_counts`), and applies a selection to the model
(:meth:`Method.update`: bias shifts by default; OBS updates or least-squares refits in the
reconstructing methods). Selection itself is generic (:mod:`ecprune.masking`).

A criterion of one's own is a subclass that overrides :meth:`Method.layer_importance`:

>>> import torch, ecprune
>>> class SquaredMagnitude(ecprune.methods.Method):
...     def layer_importance(self, name, context):
...         return ecprune.LayerImportance(context.weights[name].square(), None)
>>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
>>> ecprune.prune(net, torch.randn(64, 4), 0.5, method=SquaredMagnitude()).kept
24
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from .._validation import check_choice, check_positive_int
from ..engine.sensitivity import ESTIMATORS
from ..engine.statistics import Statistics, StatisticsRequest
from ..masking.apply import apply_pruning

if TYPE_CHECKING:
    from ..masking.selection import Selection
    from ..options import Options
    from ..reconstruct.layerwise import BatchFactory
    from ..report import Importances

# Who is building a method, for the messages of its configuration checks (see `building_for`).
_CALLER: ContextVar[str | None] = ContextVar("ecprune_method_caller", default=None)


@contextmanager
def building_for(caller: str) -> Iterator[None]:
    """Name ``caller`` (e.g. ``"importance"``) in the errors of methods configured in the block."""
    token = _CALLER.set(caller)
    try:
        yield
    finally:
        _CALLER.reset(token)


def current_caller(default: str) -> str:
    """The caller named by the enclosing :func:`building_for`, else ``default``."""
    return _CALLER.get() or default


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
    """What a method may read when it scores: the model, its selected layers, their current
    (masked) weights, the statistics of the data pass and the run's settings."""

    model: nn.Module
    layers: dict[str, nn.Linear]
    weights: dict[str, torch.Tensor]
    statistics: Statistics
    seed: int
    output_fn: Callable[[object], torch.Tensor] | None
    progress: bool | None


@dataclass(frozen=True)
class UpdateStep:
    """What a method may use to apply a selection: ``batches`` (a factory of fresh chunk streams)
    is None when no data was given, ``reference`` the dense network a refit aims at (methods
    with ``needs_reference``)."""

    model: nn.Module
    layers: dict[str, nn.Linear]
    importances: Importances
    selection: Selection
    batches: BatchFactory | None
    reference: nn.Module | None
    options: Options

    @property
    def removes_any(self) -> bool:
        """Whether the selection removes any weight now."""
        return any(bool(chosen.any()) for chosen in self.selection.newly_pruned.values())


@dataclass(frozen=True, kw_only=True)
class Configured:
    """A method's frozen configuration, validated when it is built: ``name`` is its registry
    key (empty for a user's own), ``OPTIONS`` maps the keyword options it takes to its fields,
    and :meth:`check` raises naming the caller (:func:`building_for`), the parameter and the
    value. Weight methods (:class:`Method`) and unit methods
    (:class:`ecprune.structured.methods.NeuronMethod`) are both."""

    name: ClassVar[str] = ""
    OPTIONS: ClassVar[dict[str, str]] = {}

    def __post_init__(self) -> None:
        self.check(current_caller(type(self).__name__))

    def check(self, caller: str) -> None:
        """Validate the configuration; errors name ``caller``, the parameter and the value."""

    @property
    def label(self) -> str:
        """The name reports and results carry: ``name``, or the class name of a user's method."""
        return self.name or type(self).__name__


@dataclass(frozen=True, kw_only=True)
class SensitivityConfig(Configured):
    """The configuration of a method that reads ECP's output sensitivities
    ``s_i = ||dy/du_i||^2``: ``sensitivity`` is ``"exact"`` (one reverse pass per output),
    ``"hutchinson"`` (unbiased estimate from ``probes`` Rademacher probes per sample, cost
    independent of the number of outputs) or ``"auto"`` (exact up to
    ``ecprune.engine.sensitivity.AUTO_EXACT_OUTPUTS`` outputs, or ``probes`` if more, else
    Hutchinson); ``probes`` None is ``ecprune.engine.sensitivity.AUTO_PROBES``."""

    sensitivity: str = "auto"
    probes: int | None = None
    OPTIONS: ClassVar[dict[str, str]] = {"sensitivity": "sensitivity", "probes": "probes"}

    def check(self, caller: str) -> None:
        super().check(caller)
        check_choice("sensitivity", self.sensitivity, ESTIMATORS, caller=caller)
        if self.probes is not None:
            check_positive_int("probes", self.probes, caller=caller)

    def sensitivity_request(self, seed: int, **more) -> StatisticsRequest:
        """The statistics request of ECP's sums, with ``more`` (e.g. ``gram=True``)."""
        return StatisticsRequest(sensitivity=True, seed=seed, estimator=self.sensitivity,
                                 probes=self.probes, **more)


@dataclass(frozen=True, kw_only=True)
class Method(Configured):
    """Base class of every pruning method; a subclass implements :meth:`layer_importance` (or
    :meth:`score`) and overrides what differs.

    Class attributes: ``name`` (its registry key; empty for a user's own method),
    ``default_scope`` (where :func:`ecprune.prune` compares scores unless told otherwise),
    ``compensates`` (bias shifts: needs biases), ``predicts_error`` (scores are output errors
    that add up, so a budget can be set), ``needs_targets``, ``rereads_data`` (its update streams
    the data again), ``update_needs_data`` (it cannot update without the data),
    ``needs_reference`` (its update aims at the dense network before the first step) and
    ``OPTIONS``, the keyword options of :func:`ecprune.prune` it takes, mapped to its fields.
    """

    default_scope: ClassVar[str] = "global"
    compensates: ClassVar[bool] = False
    predicts_error: ClassVar[bool] = False
    needs_targets: ClassVar[bool] = False
    rereads_data: ClassVar[bool] = False
    update_needs_data: ClassVar[bool] = False
    needs_reference: ClassVar[bool] = False

    def request(self, seed: int) -> StatisticsRequest:
        """The statistics this method needs from the data pass."""
        return StatisticsRequest(seed=seed)

    def layer_importance(self, name: str, context: ScoringContext) -> LayerImportance:
        """Score of every weight of layer ``name`` (and its bias shifts, or None)."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement layer_importance(name, context) or "
            "score(context)."
        )

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

    def curves(self, context: ScoringContext, scores: dict[str, LayerImportance]) -> dict | None:
        """Per-layer data the allocation needs, kept on :class:`ecprune.Importances` (None)."""
        del context, scores
        return None

    def layer_counts(self, importances: Importances, count: int) -> dict[str, int] | None:
        """Removals per layer summing to ``count`` under ``scope="global"``; None: the global
        ranking of the scores decides."""
        del importances, count
        return None

    def update(self, step: UpdateStep) -> None:
        """Apply the selection: mask the chosen weights and add their bias shifts."""
        shifts = {name: result.bias_shift for name, result in step.importances.items()}
        apply_pruning(step.layers, step.selection.newly_pruned, shifts)
