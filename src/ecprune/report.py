"""What scoring and pruning return: :class:`Importances`, :class:`PruneReport` and
:class:`LayerReport`."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import torch
from torch import nn

from .engine.layers import keep_mask
from .masking.selection import Selection
from .methods import LayerImportance, Method, get
from .options import Options


class Importances(dict[str, LayerImportance]):
    """Mapping of layer name to :class:`LayerImportance`, with how it was obtained.

    Attributes: ``method`` (the method's name, or a user method's class name),
    ``method_object`` (the configured :class:`ecprune.methods.Method`), ``options`` (the run's
    :class:`ecprune.Options`, which :func:`ecprune.prune_by_importance` reuses), ``seconds``
    (data pass + scoring), ``mean_output_sq`` (``E||y||^2`` over the data, the scale of relative
    output errors), ``curves`` (the method's per-layer allocation data, e.g. ``"ecp-refit"``'s
    refit error curves, :func:`ecprune.reconstruct.allocation.refit_curves`; else None),
    ``grams`` (methods that gather them: each layer's ``sum [a, 1]^T [a, 1]`` over the data,
    float64, which the weight updates reuse for the first layer; else None).

    ``method`` may be given as a registered name or a :class:`ecprune.methods.Method`.
    """

    def __init__(self, items: dict[str, LayerImportance], *, method: str | Method,
                 seconds: float, mean_output_sq: float, curves: dict | None = None,
                 grams: dict[str, torch.Tensor] | None = None, options: Options | None = None):
        super().__init__(items)
        self.method_object = get(method, caller="Importances")
        self.method = self.method_object.label
        self.seconds = seconds
        self.mean_output_sq = mean_output_sq
        self.curves = curves
        self.grams = grams
        self.options = Options() if options is None else options


@dataclass(frozen=True)
class LayerReport:
    """One layer after pruning: weights kept of total, the score threshold, predicted error."""

    kept: int
    total: int
    threshold: float | None
    predicted_error: float | None

    @property
    def sparsity(self) -> float:
        return 1 - self.kept / self.total


@dataclass(frozen=True)
class PruneReport:
    """What :func:`ecprune.prune` did. ``predicted_error`` is ``sum I_ij`` over the weights
    removed now (methods whose score is an output error: ecp, ecp-nocomp, nonlinear), else
    None."""

    method: str
    scope: str
    sparsity: float
    layers: dict[str, LayerReport]
    seconds: float
    scoring_seconds: float
    predicted_error: float | None
    mean_output_sq: float | None
    steps: int = 1

    @property
    def kept(self) -> int:
        return sum(layer.kept for layer in self.layers.values())

    @property
    def total(self) -> int:
        return sum(layer.total for layer in self.layers.values())

    @property
    def relative_predicted_error(self) -> float | None:
        """``sum I / E||y||^2``: the predicted output error relative to the output's size."""
        if self.predicted_error is None or not self.mean_output_sq:
            return None
        return self.predicted_error / self.mean_output_sq

    def to_dict(self) -> dict:
        """JSON-ready dictionary of the report."""
        result = dataclasses.asdict(self)
        result.update(kept=self.kept, total=self.total,
                      relative_predicted_error=self.relative_predicted_error)
        return result


def build_report(importances: Importances, layers: dict[str, nn.Linear], selection: Selection,
                 scope: str, sparsity: float, start: float) -> PruneReport:
    """The report of one pruning from ``importances``, begun at ``start`` (perf_counter)."""
    predicts = importances.method_object.predicts_error
    reports = {}
    for name, layer in layers.items():
        newly = selection.newly_pruned[name]
        score = importances[name].score
        error = score[newly].to(torch.float64).sum().item() if predicts else None
        reports[name] = LayerReport(kept=int(keep_mask(layer).sum()), total=layer.weight.numel(),
                                    threshold=selection.thresholds[name], predicted_error=error)
    total_error = sum(r.predicted_error for r in reports.values()) if predicts else None
    return PruneReport(method=importances.method, scope=scope, sparsity=sparsity,
                       layers=reports, seconds=importances.seconds + time.perf_counter() - start,
                       scoring_seconds=importances.seconds, predicted_error=total_error,
                       mean_output_sq=importances.mean_output_sq)


def combine_reports(reports: list[PruneReport]) -> PruneReport:
    """One report for several steps: the last step's masks, times and errors summed."""
    last = reports[-1]
    if len(reports) == 1:
        return last

    def total(values):
        values = list(values)
        return None if None in values else sum(values)

    layers = {name: dataclasses.replace(
        layer, predicted_error=total(r.layers[name].predicted_error for r in reports))
        for name, layer in last.layers.items()}
    return dataclasses.replace(
        last, layers=layers, seconds=sum(r.seconds for r in reports),
        scoring_seconds=sum(r.scoring_seconds for r in reports),
        predicted_error=total(r.predicted_error for r in reports),
        mean_output_sq=reports[0].mean_output_sq, steps=len(reports))
