"""Unit-removal methods as objects: one frozen, validated configuration per method.

A :class:`NeuronMethod` scores the units of every group (:meth:`NeuronMethod.score`),
optionally sets how many units each group loses (:meth:`NeuronMethod.layer_counts`) and applies
a choice (:meth:`NeuronMethod.update`: by default the consumers' bias shifts, then the
removal). Configuration follows :class:`ecprune.methods.Method`: ``check`` runs on creation and
its errors name the caller (:func:`ecprune.methods.base.building_for`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from .._validation import check_choice, check_nonnegative
from ..engine.statistics import collect_statistics
from ..methods.base import Configured, SensitivityConfig
from ..options import Options
from ..reconstruct.allocation import allocate
from ..reconstruct.layerwise import BatchFactory
from . import criteria
from .criteria import UnitScores
from .groups import UnitGroup
from .moments import unit_statistics
from .obs import apply_removal, greedy_order, obs_state
from .refit import refit_consumers, refit_curve
from .selection import MIN_KEPT
from .shrink import add_to_bias, remove_units, write_weights

SHIFTS = ("auto", "joint", "rows")
ALLOCATIONS = ("refit", "global")
# "auto" takes the joint shift while the joint sums, N^2 + N size float64 numbers per group,
# stay under this many (128 MiB); above it, the rows' own shifts.
JOINT_ELEMENTS = 2**24


@dataclass(frozen=True)
class NeuronContext:
    """What a method reads when it scores: the model, its prunable groups, a factory of fresh
    chunk streams over the data and the run's options."""

    model: nn.Module
    groups: dict[str, UnitGroup]
    batches: BatchFactory
    options: Options

    def layers(self, kind: str = "all") -> dict[str, nn.Linear]:
        """The groups' ``"consumers"`` (or ``"all"`` their Linear layers) by name."""
        slots = [s for g in self.groups.values()
                 for s in (g.consumers if kind == "consumers" else (*g.producers, *g.consumers))]
        return {s.module: self.model.get_submodule(s.module) for s in slots}

    def weights(self) -> dict[str, torch.Tensor]:
        return {name: layer.weight.detach() for name, layer in self.layers().items()}


@dataclass
class Scored:
    """A method's scores per group and what its allocation and update need: ``curves``
    (per-group error curves), ``grams``/``sens`` (each consumer's mean Gram matrix and
    ``E[s_i]``), ``mean_output_sq`` (``E||y||^2`` when a pass ran), ``shift`` (ECP's variant)."""

    scores: dict[str, UnitScores]
    curves: dict | None = None
    grams: dict[str, torch.Tensor] = field(default_factory=dict)
    sens: dict[str, torch.Tensor] = field(default_factory=dict)
    mean_output_sq: float | None = None
    shift: str | None = None


@dataclass(frozen=True)
class NeuronStep:
    """What an update may use: the chosen units (bool per group), the dense ``reference`` (for
    a refit), whether the layers ``shrink`` or keep zeros."""

    model: nn.Module
    groups: dict[str, UnitGroup]
    scored: Scored
    chosen: dict[str, torch.Tensor]
    batches: BatchFactory
    reference: nn.Module
    options: Options
    shrink: bool


@dataclass(frozen=True, kw_only=True)
class NeuronMethod(Configured):
    """Base class of the unit-removal methods. Class attributes: ``name`` (registry key),
    ``compensates`` (moves the consumers' biases: needs them), ``predicts_error`` (scores are
    output errors that add up) and ``OPTIONS`` (keyword options of
    :func:`ecprune.prune_neurons` mapped to fields)."""

    compensates: ClassVar[bool] = False
    predicts_error: ClassVar[bool] = False

    def score(self, context: NeuronContext) -> Scored:
        raise NotImplementedError(f"{type(self).__name__} must implement score(context).")

    def layer_counts(self, scored: Scored, count: int) -> dict[str, int] | None:
        """Removals per group summing to ``count`` under global scope; None: the global
        ranking of the scores."""
        del scored, count
        return None

    def update(self, step: NeuronStep) -> None:
        """Add the chosen units' bias shifts to their consumers, then remove the units."""
        deltas: dict[str, torch.Tensor] = {}
        for name, mask in step.chosen.items():
            for consumer, shift in (step.scored.scores[name].shifts or {}).items():
                delta = shift[:, mask.to(shift.device)].sum(1)
                deltas[consumer] = deltas[consumer] + delta if consumer in deltas else delta
        with torch.no_grad():
            for consumer, delta in deltas.items():
                add_to_bias(step.model.get_submodule(consumer), delta)
        remove_units(step.model, step.groups, step.chosen, shrink=step.shrink)


@dataclass(frozen=True, kw_only=True)
class SensitivityOptions(SensitivityConfig, NeuronMethod):
    """A unit method that reads ECP's output sensitivities (``sensitivity``, ``probes``:
    :class:`ecprune.methods.base.SensitivityConfig`)."""

    def engine_statistics(self, context: NeuronContext, *, grams: bool):
        """The engine's ECP sums of every consumer (rows, Gram matrices on request)."""
        request = self.sensitivity_request(context.options.seed, gram=grams)
        return collect_statistics(context.model, context.layers("consumers"),
                                  context.batches(), request,
                                  output_fn=context.options.output_fn,
                                  progress=context.options.progress)


def _joint_size(context: NeuronContext) -> int:
    total = 0
    for group in context.groups.values():
        n = sum(context.model.get_submodule(c.module).out_features for c in group.consumers)
        total += n * n + n * group.size
    return total


@dataclass(frozen=True, kw_only=True)
class ECPUnits(SensitivityOptions):
    """ECP for units: the output error left after the best shift of the consumers' biases
    (:mod:`ecprune.structured.criteria`). ``shift``: ``"joint"`` (all the consumers' biases
    together, exact to first order), ``"rows"`` (each row on its own: the sum of ECP's weight
    scores of the unit's columns) or ``"auto"`` (joint while its sums fit in
    ``JOINT_ELEMENTS``)."""

    name = "ecp"
    compensates = True
    predicts_error = True
    shift: str = "auto"
    OPTIONS: ClassVar[dict[str, str]] = {**SensitivityOptions.OPTIONS, "shift": "shift"}

    @property
    def needs_grams(self) -> bool:
        """Whether scoring also gathers the consumers' Gram matrices (for a refit's curves)."""
        return False

    def check(self, caller: str) -> None:
        super().check(caller)
        check_choice("shift", self.shift, SHIFTS, caller=caller)

    def variant(self, context: NeuronContext) -> str:
        """``"joint"`` or ``"rows"``, as ``shift`` asks."""
        if self.shift != "auto":
            return self.shift
        return "joint" if _joint_size(context) <= JOINT_ELEMENTS else "rows"

    def score(self, context: NeuronContext) -> Scored:
        variant, weights = self.variant(context), context.weights()
        if variant == "joint":
            options = context.options
            stats = unit_statistics(
                context.model, context.groups, context.layers("consumers"), context.batches(),
                joint=True, grams=self.needs_grams, estimator=self.sensitivity,
                probes=self.probes, seed=options.seed, output_fn=options.output_fn,
                progress=options.progress)
            scores = {name: criteria.joint_ecp(group, stats.joint[name], weights, stats.count)
                      for name, group in context.groups.items()}
            grams = {name: g / stats.rows[name] for name, g in stats.grams.items()}
            sens = {name: s / stats.count for name, s in stats.sens_sum.items()}
            return Scored(scores, grams=grams, sens=sens, shift=variant,
                          mean_output_sq=stats.output_sq_sum / stats.count)
        stats = self.engine_statistics(context, grams=self.needs_grams)
        scores = {name: criteria.rows_ecp(group, stats, weights)
                  for name, group in context.groups.items()}
        return Scored(scores, shift=variant, mean_output_sq=stats.mean_output_sq,
                      **_consumer_means(stats, self.needs_grams))


def _consumer_means(stats, grams: bool) -> dict:
    """Each consumer's ``E[s_i]`` per sample (with several rows per sample, the rows' own
    ``sum_p |dy/du_ip|^2``) and mean Gram matrix per row: the costs of a change of every row
    (OBS, the refit curves) when the rows' errors are independent."""
    count = stats.count
    return {"sens": {name: layer.row_sensitivity / count
                     for name, layer in stats.layers.items()},
            "grams": ({name: layer.gram / layer.rows for name, layer in stats.layers.items()}
                      if grams else {})}


@dataclass(frozen=True, kw_only=True)
class ECPRefitUnits(ECPUnits):
    """ECP's unit scores and shifts, then every consumer's kept columns and bias refit by least
    squares toward the dense pre-activations, layer by layer from input to output
    (:mod:`ecprune.structured.refit`). ``allocation``: per-group counts under global scope from
    the refit error curves (``"refit"``) or ECP's global ranking (``"global"``); ``damping``:
    the relative ridge of the refit."""

    name = "ecp-refit"
    predicts_error = False
    allocation: str = "refit"
    damping: float = 0.01
    OPTIONS: ClassVar[dict[str, str]] = {**ECPUnits.OPTIONS, "allocation": "allocation",
                                         "damping": "damping"}

    @property
    def needs_grams(self) -> bool:
        return self.allocation == "refit"

    def check(self, caller: str) -> None:
        super().check(caller)
        check_choice("allocation", self.allocation, ALLOCATIONS, caller=caller)
        check_nonnegative("damping", self.damping, caller=caller)

    def score(self, context: NeuronContext) -> Scored:
        scored = super().score(context)
        if self.needs_grams:
            weights = context.weights()
            scored.curves = {name: refit_curve(group, scored.scores[name].score, weights,
                                               scored.grams, scored.sens, self.damping)
                             for name, group in context.groups.items()}
        return scored

    def layer_counts(self, scored: Scored, count: int) -> dict[str, int] | None:
        return None if scored.curves is None else allocate(scored.curves, count)

    def update(self, step: NeuronStep) -> None:
        super().update(step)
        if any(bool(mask.any()) for mask in step.chosen.values()):
            options = step.options
            refit_consumers(step.model, step.reference, step.groups, step.chosen, step.batches,
                            damping=self.damping, shrink=step.shrink,
                            output_fn=options.output_fn, progress=options.progress)


@dataclass(frozen=True, kw_only=True)
class OBSUnits(SensitivityOptions):
    """Structured OBS (ZipLM), greedy, on the dense inputs' Gram matrices
    (:mod:`ecprune.structured.obs`); a unit's score is its place in the greedy order.
    ``damping``: relative ridge of ``H``."""

    name = "obs"
    compensates = True
    damping: float = 0.01
    OPTIONS: ClassVar[dict[str, str]] = {**SensitivityOptions.OPTIONS, "damping": "damping"}

    def check(self, caller: str) -> None:
        super().check(caller)
        check_nonnegative("damping", self.damping, caller=caller)

    def states(self, context_or_step, scored: Scored) -> dict:
        model = context_or_step.model
        return {name: obs_state(model.get_submodule(name), gram, scored.sens[name],
                                self.damping) for name, gram in scored.grams.items()}

    def score(self, context: NeuronContext) -> Scored:
        stats = self.engine_statistics(context, grams=True)
        scored = Scored({}, curves={}, mean_output_sq=stats.mean_output_sq,
                        **_consumer_means(stats, True))
        start = self.states(context, scored)
        for name, group in context.groups.items():
            steps = max(0, group.size - MIN_KEPT)
            order, costs = greedy_order(group, {k: s.clone() for k, s in start.items()}, steps)
            rank = torch.full((group.size,), float(group.size), dtype=torch.float64)
            rank[order] = torch.arange(steps, dtype=torch.float64)
            scored.scores[name] = UnitScores(rank, None)
            scored.curves[name] = (torch.arange(steps + 1),
                                   torch.cat([costs.new_zeros(1), torch.cumsum(costs, 0)]))
        return scored

    def layer_counts(self, scored: Scored, count: int) -> dict[str, int] | None:
        return allocate(scored.curves, count)

    def update(self, step: NeuronStep) -> None:
        states = self.states(step, step.scored)
        for name, mask in step.chosen.items():
            rank = step.scored.scores[name].score
            units = torch.nonzero(mask).squeeze(1)
            apply_removal(step.groups[name], states, units[torch.argsort(rank[units])].tolist())
        with torch.no_grad():
            for name, state in states.items():
                write_weights(step.model.get_submodule(name), state.rows[:, :-1],
                              state.rows[:, -1])
        remove_units(step.model, step.groups, step.chosen, shrink=step.shrink)


@dataclass(frozen=True, kw_only=True)
class MagnitudeUnits(NeuronMethod):
    """The L2 norm of the unit's producer rows and consumer columns, no compensation."""

    name = "magnitude"

    def score(self, context: NeuronContext) -> Scored:
        weights = context.weights()
        return Scored({name: criteria.magnitude(group, weights)
                       for name, group in context.groups.items()})


@dataclass(frozen=True, kw_only=True)
class RandomUnits(NeuronMethod):
    """Uniformly random scores seeded by ``seed`` (None: the run's ``seed``), no
    compensation."""

    name = "random"
    seed: int | None = None
    OPTIONS: ClassVar[dict[str, str]] = {}

    def check(self, caller: str) -> None:
        if self.seed is not None and (isinstance(self.seed, bool) or
                                      not isinstance(self.seed, int)):
            raise ValueError(f"The 'seed' parameter of {caller} must be an int or None. "
                             f"Got {self.seed!r} instead.")

    def score(self, context: NeuronContext) -> Scored:
        seed = context.options.seed if self.seed is None else self.seed
        return Scored(criteria.random_scores(context.groups, seed))
