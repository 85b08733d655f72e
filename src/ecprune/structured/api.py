""":func:`prune_neurons`: remove whole hidden units with compensation, in place."""

from __future__ import annotations

import math
import time

import torch
from torch import nn

from .._validation import check_choice
from ..engine.batching import check_reiterable
from ..engine.layers import select_layers
from ..measure import output_error
from ..pipeline import batch_factory
from ..reconstruct.layerwise import detached_copy
from .coupling import Coupling, find_groups
from .groups import UnitGroup
from .methods import NeuronContext, NeuronMethod, NeuronStep, Scored
from .registry import parse_options
from .report import GroupReport, NeuronReport, model_size
from .selection import SCOPES, check_count, choose, global_counts, scope_counts
from .shrink import add_zero_biases
from .transaction import atomic

# Inputs from the first chunk on which the dependency graph is traced and every group checked.
EXAMPLE_SAMPLES = 64


def check_fraction(fraction: object) -> float:
    """``fraction`` as a float in [0, 1), or an error naming it."""
    message = ("The 'fraction' parameter of prune_neurons must be a float in the range "
               "[0.0, 1.0).")
    if isinstance(fraction, bool) or not isinstance(fraction, int | float):
        raise TypeError(f"{message} Got {fraction!r} of type {type(fraction).__name__} instead.")
    if not math.isfinite(fraction) or not 0.0 <= fraction < 1.0:
        raise ValueError(f"{message} Got {fraction!r} instead.")
    return float(fraction)


def _check_model(model: nn.Module) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError("The 'model' parameter of prune_neurons must be a torch.nn.Module. "
                        f"Got {type(model).__name__} instead.")
    masked = [name for name, m in model.named_modules()
              if isinstance(m, nn.Linear) and hasattr(m, "weight_orig")]
    if masked:
        raise ValueError(f"The Linear layers {masked} carry torch.nn.utils.prune masks; "
                         "prune_neurons replaces whole rows and columns. Make the masks "
                         "permanent first: ecprune.bake_masks(model).")


def _selected(coupling: Coupling, model: nn.Module, layers) -> dict[str, UnitGroup]:
    """The groups all of whose producers are among ``layers`` (None: every group)."""
    if layers is None:
        return coupling.groups
    wanted = set(select_layers(model, layers))
    groups = {name: group for name, group in coupling.groups.items()
              if all(p.module in wanted for p in group.producers)}
    if not groups:
        raise ValueError(f"The 'layers' parameter {sorted(wanted)} selects no hidden layer whose "
                         "units can be removed; those are the outputs of "
                         f"{sorted(coupling.groups)}.")
    return groups


def _example(batches) -> torch.Tensor:
    first = next(iter(batches()), None)
    if first is None:
        raise ValueError("The 'data' parameter holds no samples; expected at least one input.")
    return first.inputs[:EXAMPLE_SAMPLES]


def _counts(method: NeuronMethod, scored: Scored, groups: dict[str, UnitGroup], count: int,
            fraction: float, scope: str) -> dict[str, int]:
    if scope == "layer":
        return scope_counts(groups, fraction)
    counts = method.layer_counts(scored, count)
    if counts is None:
        scores = {name: found.score for name, found in scored.scores.items()}
        counts = global_counts(scores, groups, count)
    return counts


def _check_biases(method: NeuronMethod, groups: dict[str, UnitGroup], model: nn.Module,
                  add_bias: bool) -> None:
    if not method.compensates or add_bias:
        return
    missing = sorted({c.module for g in groups.values() for c in g.consumers
                      if model.get_submodule(c.module).bias is None})
    if missing:
        raise ValueError(f"Method {method.label!r} compensates removed units through the biases "
                         f"of the layers they feed, but {missing} have no bias. Pass "
                         "add_bias=True to add zero biases first.")


def _prepare(model: nn.Module, data: object, method, options: dict, coupling: str):
    """Validated method and options, the batch factory and the prunable groups."""
    method, opts = parse_options(method, options, "prune_neurons")
    _check_model(model)
    check_reiterable(data, "prune_neurons")
    batches = batch_factory(model, data, opts)
    found = find_groups(model, _example(batches), coupling=coupling, output_fn=opts.output_fn)
    return method, opts, batches, found, _selected(found, model, opts.layers)


def score_units(model: nn.Module, data: object, method: str | NeuronMethod = "ecp", *,
                coupling: str = "auto", **options) -> Scored:
    """The scores (and bias shifts) of every prunable unit, without removing any.

    ``result.scores[group].score`` (size,) and, for compensating methods, ``.shifts``
    ``{consumer: (n_rows, size)}``; arguments as for :func:`prune_neurons`.

    >>> import torch, ecprune
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2))
    >>> ecprune.structured.score_units(net, torch.randn(64, 3)).scores["0"].score.shape
    torch.Size([6])
    """
    method, opts, batches, _, groups = _prepare(model, data, method, options, coupling)
    return method.score(NeuronContext(model=model, groups=groups, batches=batches, options=opts))


def prune_neurons(model: nn.Module, data: object, fraction: float,
                  method: str | NeuronMethod = "ecp-refit", scope: str = "global", *,
                  coupling: str = "auto", shrink: bool = True, **options) -> NeuronReport:
    """Remove exactly ``round(fraction * H)`` of the ``H`` prunable hidden units of ``model``,
    in place, and shrink its layers.

    A unit's producer rows (weight and bias), its per-unit parameters (PReLU slopes,
    BatchNorm1d and LayerNorm entries) and its consumer columns go; the consumers' biases take
    the compensation (:mod:`ecprune.structured`). Parameters keep their identity: each gets the
    smaller values as ``.data`` (optimizer state of the old shape must be rebuilt). Units that
    no dependency-safe removal exists for are never touched (``report.skipped``). All or
    nothing: on an error the model is left as it was.

    Parameters
    ----------
    model : nn.Module with ``nn.Linear`` hidden layers.
    data : inputs, as for :func:`ecprune.prune`; streamed several times (not a generator).
    fraction : float in [0, 1); 0 changes nothing.
    method : ``"ecp-refit"`` (default), ``"ecp"``, ``"obs"``, ``"magnitude"``, ``"random"``
        (``ecprune.NEURON_METHODS``) or a :class:`ecprune.structured.NeuronMethod`.
    scope : ``"global"`` (one ranking, or the method's per-layer counts) or ``"layer"`` (the
        same fraction of every hidden layer).
    coupling : ``"auto"``, ``"torch-pruning"`` or ``"sequential"``
        (:mod:`ecprune.structured.coupling`).
    shrink : False keeps the widths and zeroes the removed units' rows and columns instead.
    **options : ``layers`` (the Linear layers whose units may go), ``output_fn``,
        ``chunk_size``, ``seed``, ``add_bias``, ``progress`` and the method's own (``shift``,
        ``sensitivity``, ``probes``, ``damping``, ``allocation``).

    Examples
    --------
    >>> import torch, ecprune
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.PReLU(16),
    ...                           torch.nn.Linear(16, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    >>> report = ecprune.prune_neurons(net, torch.randn(256, 4), 0.5, scope="layer")
    >>> report.widths, net[1].num_parameters, net[2].in_features
    ({'0': 8, '2': 4}, 8, 8)
    >>> report.removed_units, report.total_units
    (12, 24)
    """
    start = time.perf_counter()
    fraction = check_fraction(fraction)
    scope = check_choice("scope", scope, SCOPES, caller="prune_neurons")
    method, opts, batches, found, groups = _prepare(model, data, method, options, coupling)
    count = round(fraction * sum(group.size for group in groups.values()))
    check_count(groups, count, fraction)
    if count > 0:
        _check_biases(method, groups, model, opts.add_bias)
    before, reference = model_size(model), detached_copy(model)
    scored, chosen = Scored({}), {name: torch.zeros(g.size, dtype=torch.bool)
                                  for name, g in groups.items()}
    scoring = 0.0
    with atomic(model):
        if count > 0:
            context = NeuronContext(model=model, groups=groups, batches=batches, options=opts)
            scored = method.score(context)
            scoring = time.perf_counter() - start
            counts = _counts(method, scored, groups, count, fraction, scope)
            chosen = choose({name: s.score for name, s in scored.scores.items()}, counts)
            if method.compensates:
                add_zero_biases(model, groups)
            method.update(NeuronStep(model=model, groups=groups, scored=scored, chosen=chosen,
                                     batches=batches, reference=reference, options=opts,
                                     shrink=shrink))
    measured = output_error(reference, model, data, chunk_size=opts.chunk_size,
                            output_fn=opts.output_fn, progress=opts.progress)
    entries = _group_reports(method, groups, chosen, scored)
    total = sum(e.predicted_error or 0.0 for e in entries.values()) \
        if method.predicts_error else None
    return NeuronReport(
        method=method.label, scope=scope, fraction=fraction, groups=entries, before=before,
        after=model_size(model), predicted_error=total, measured_error=measured.mean_sq_error,
        mean_output_sq=measured.mean_output_sq, seconds=time.perf_counter() - start,
        scoring_seconds=scoring, shift=scored.shift, coupling=found.finder,
        skipped=found.skipped, shrunk=shrink)


def _group_reports(method: NeuronMethod, groups: dict[str, UnitGroup],
                   chosen: dict[str, torch.Tensor], scored: Scored) -> dict[str, GroupReport]:
    entries = {}
    for name, group in groups.items():
        mask = chosen[name]
        error = None
        if method.predicts_error and name in scored.scores:
            error = scored.scores[name].score[mask].sum().item()
        entries[name] = GroupReport(
            width_before=group.size, width_after=group.size - int(mask.sum()),
            layers=tuple(p.module for p in group.producers),
            removed=tuple(torch.nonzero(mask).squeeze(1).tolist()), predicted_error=error,
            exact=group.exact)
    return entries
