"""The data path of one pruning: data -> engine (statistics) -> method scores -> selection ->
the method's update -> report. :mod:`ecprune.api` validates the user's input, then calls these."""

from __future__ import annotations

import dataclasses
import time

from torch import nn

from . import distributed
from .engine.batching import iter_batches
from .engine.layers import add_zero_biases, effective_weight, keep_mask, model_dtype_device
from .engine.statistics import collect_statistics
from .masking.apply import preserved
from .masking.selection import already_pruned_error, select, select_counts
from .methods import Method, ScoringContext, UpdateStep
from .options import Options
from .reconstruct.layerwise import BatchFactory
from .report import Importances, PruneReport, build_report


def batch_factory(model: nn.Module, data: object, options: Options) -> BatchFactory:
    """A factory of fresh chunk streams over (this rank's share of) ``data``, one per pass."""
    dtype, device = model_dtype_device(model)
    rank, world_size = distributed.world() if options.shard else (0, 1)
    return lambda: iter_batches(data, chunk_size=options.chunk_size, device=device, dtype=dtype,
                                rank=rank, world_size=world_size)


def check_biases(layers: dict[str, nn.Linear], label: str, add_bias: bool) -> None:
    """Raise if a layer has no bias to compensate into and ``add_bias`` is off."""
    missing = [name for name, layer in layers.items() if layer.bias is None]
    if missing and not add_bias:
        raise ValueError(
            f"Method {label!r} compensates removed weights through the bias, but the Linear "
            f"layers {missing} have no bias. Pass add_bias=True to add a zero bias first, or "
            "exclude them with 'layers='."
        )


def fingerprint(method: Method, options: Options, layers: dict[str, nn.Linear], data: object,
                **call: object) -> dict[str, object]:
    """What every rank must agree on (:func:`ecprune.distributed.check_agreement`)."""
    return {"method": repr(method), "options": repr(dataclasses.replace(
                options, layers=None, output_fn=None, progress=None)),
            "layers": [(name, tuple(layer.weight.shape)) for name, layer in layers.items()],
            "samples": len(data) if options.shard and hasattr(data, "__len__") else None,
            **call}


def score(model: nn.Module, data: object, layers: dict[str, nn.Linear], method: Method,
          options: Options, *, allocates: bool = True) -> Importances:
    """One data pass for the statistics ``method`` requests, then its scores (and, when
    ``allocates``, the per-layer data of its allocation: not needed with an N:M pattern)."""
    start = time.perf_counter()
    if method.compensates:
        check_biases(layers, method.label, options.add_bias)
    request = dataclasses.replace(method.request(options.seed), positions=options.positions,
                                  products=options.products)
    stats = collect_statistics(model, layers, batch_factory(model, data, options)(), request,
                               output_fn=options.output_fn, progress=options.progress)
    context = ScoringContext(model=model, layers=layers,
                             weights={name: effective_weight(m) for name, m in layers.items()},
                             statistics=stats, seed=options.seed, output_fn=options.output_fn,
                             progress=options.progress)
    scores = method.score(context)
    curves = method.curves(context, scores) if allocates else None
    grams = {name: stats.layers[name].gram for name in layers} if request.gram else None
    return Importances(scores, method=method, seconds=time.perf_counter() - start,
                       mean_output_sq=stats.mean_output_sq, curves=curves, grams=grams,
                       options=options)


def select_for(importances: Importances, layers: dict[str, nn.Linear], sparsity: float,
               scope: str):
    """The weights to remove: the method's own per-layer counts under global scope if it has
    them, else the scores compared within ``scope``."""
    present = {name: keep_mask(layer) for name, layer in layers.items()}
    scores = {name: result.score for name, result in importances.items()}
    if scope == "global":
        total = sum(mask.numel() for mask in present.values())
        count, existing = round(sparsity * total), sum(int((~m).sum()) for m in present.values())
        if existing > count:
            raise already_pruned_error("The model", existing, count, total)
        counts = importances.method_object.layer_counts(importances, count)
        if counts is not None:
            return select_counts(scores, present, counts)
    return select(scores, present, sparsity, scope)


def prune_scored(model: nn.Module, layers: dict[str, nn.Linear], importances: Importances,
                 sparsity: float, scope: str, *, batches: BatchFactory | None,
                 reference: nn.Module | None, options: Options) -> PruneReport:
    """Select from ``importances`` and apply the method's update, all or nothing."""
    start = time.perf_counter()
    selection = select_for(importances, layers, sparsity, scope)
    if any(result.bias_shift is not None for result in importances.values()):
        check_biases(layers, importances.method, options.add_bias)
    step = UpdateStep(model=model, layers=layers, importances=importances, selection=selection,
                      batches=batches, reference=reference, options=options)
    with preserved(layers):
        if options.add_bias:
            add_zero_biases(layers)
        importances.method_object.update(step)
    return build_report(importances, layers, selection, scope, sparsity, start)
