"""What :func:`ecprune.prune_neurons` returns: :class:`NeuronReport` and its per-group entries."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from torch import nn

from ..export.compaction import layer_shapes


@dataclass(frozen=True)
class ModelSize:
    """``shapes`` ``{Linear name: (out_features, in_features)}``, ``parameters`` (every
    parameter of the model) and ``macs``: multiply-adds per sample of its Linear layers,
    ``sum in_features * out_features`` (biases, activations and normalisations not counted)."""

    shapes: dict[str, tuple[int, int]]
    parameters: int
    macs: int


def model_size(model: nn.Module) -> ModelSize:
    shapes = layer_shapes(model)
    return ModelSize(shapes=shapes, parameters=sum(p.numel() for p in model.parameters()),
                     macs=sum(out * inp for out, inp in shapes.values()))


@dataclass(frozen=True)
class GroupReport:
    """One group of coupled units: its width before and after, the Linear layers whose rows
    they are, the removed units (indices before the removal), the predicted error of their
    removal (methods whose scores are output errors, else None) and ``exact``: False when a
    LayerNorm normalises the units together, so that removing some changes the others and the
    scores, made for removals that leave the others alone, are approximate."""

    width_before: int
    width_after: int
    layers: tuple[str, ...]
    removed: tuple[int, ...]
    predicted_error: float | None
    exact: bool = True


@dataclass(frozen=True)
class NeuronReport:
    """What :func:`ecprune.prune_neurons` did.

    ``groups``: per group of coupled hidden units (named after its first producer), see
    :class:`GroupReport`; ``before``/``after``: :class:`ModelSize`; ``predicted_error``:
    ``sum e_j`` over the removed units (``"ecp"``, else None); ``measured_error``:
    ``E||y_dense - y||^2`` over the data after the removal; ``mean_output_sq``: ``E||y||^2`` of
    the dense network; ``shift``: ECP's shift (``"joint"``/``"rows"``, else None);
    ``coupling``: which finder grouped the units (``"torch-pruning"``/``"sequential"``);
    ``skipped``: hidden units left alone and why; ``seconds`` in all, ``scoring_seconds`` of it
    for the data pass and scores.
    """

    method: str
    scope: str
    fraction: float
    groups: dict[str, GroupReport]
    before: ModelSize
    after: ModelSize
    predicted_error: float | None
    measured_error: float
    mean_output_sq: float
    seconds: float
    scoring_seconds: float
    shift: str | None
    coupling: str
    skipped: dict[str, str]
    shrunk: bool = True

    @property
    def removed_units(self) -> int:
        return sum(len(group.removed) for group in self.groups.values())

    @property
    def total_units(self) -> int:
        return sum(group.width_before for group in self.groups.values())

    @property
    def widths(self) -> dict[str, int]:
        """The width of every group after the removal (to rebuild the model's factory)."""
        return {name: group.width_after for name, group in self.groups.items()}

    @property
    def relative_predicted_error(self) -> float | None:
        if self.predicted_error is None or not self.mean_output_sq:
            return None
        return self.predicted_error / self.mean_output_sq

    @property
    def relative_measured_error(self) -> float | None:
        return self.measured_error / self.mean_output_sq if self.mean_output_sq else None

    def to_dict(self) -> dict:
        """JSON-ready dictionary of the report."""
        result = dataclasses.asdict(self)
        for key in ("before", "after"):
            result[key]["shapes"] = {k: list(v) for k, v in result[key]["shapes"].items()}
        for group in result["groups"].values():
            group["layers"], group["removed"] = list(group["layers"]), list(group["removed"])
        result.update(removed_units=self.removed_units, total_units=self.total_units,
                      widths=self.widths, relative_predicted_error=self.relative_predicted_error,
                      relative_measured_error=self.relative_measured_error)
        return result


def format_table(report: NeuronReport) -> str:
    """A short text summary: widths per group, parameters, multiply-adds, errors, time."""
    def number(value: float | None) -> str:
        return "-" if value is None else f"{value:.3g}"

    rows = [("layer", "width before", "width after", "predicted (rel.)")]
    scale = report.mean_output_sq
    for name, group in report.groups.items():
        error = None if group.predicted_error is None or not scale else \
            group.predicted_error / scale
        rows.append((name, str(group.width_before), str(group.width_after), number(error)))
    widths = [max(len(row[k]) for row in rows) for k in range(4)]
    lines = ["  ".join(cell.ljust(w) if k == 0 else cell.rjust(w)
                       for k, (cell, w) in enumerate(zip(row, widths, strict=True)))
             for row in rows]
    before, after = report.before, report.after
    lines += [f"units: {report.total_units} -> {report.total_units - report.removed_units} "
              f"({report.removed_units} removed, {report.method}, scope {report.scope})",
              f"parameters: {before.parameters} -> {after.parameters}; multiply-adds per sample: "
              f"{before.macs} -> {after.macs}",
              f"relative output error: predicted {number(report.relative_predicted_error)}, "
              f"measured {number(report.relative_measured_error)}",
              f"time: {report.seconds:.1f} s (scoring {report.scoring_seconds:.1f} s)"]
    return "\n".join(lines)
