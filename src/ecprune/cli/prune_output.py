"""What ``ecprune prune`` writes: the JSON report, the terminal table and the files themselves.

The table is printed from the report's dictionary, so both always agree
(``docs/read-the-report.md`` describes every field).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import shlex
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import ecprune

from ..atomic import check_writable, write_files
from .data_files import LoadedData


@dataclass(frozen=True)
class Outputs:
    """Where the pruned model and the JSON report go."""

    model: Path
    report: Path


def plan_outputs(output: str, report: str | None, *, force: bool) -> Outputs:
    """Output paths, checked before any work: their folder exists and takes new files, and
    without ``force`` they do not exist."""
    model_path = Path(output)
    report_path = Path(report) if report else model_path.with_suffix(".json")
    if model_path.resolve() == report_path.resolve():
        raise ValueError(f"The model and the report would both be written to {str(model_path)!r};"
                         " pass a different --report.")
    for path in (model_path, report_path):
        if not path.parent.is_dir():
            raise FileNotFoundError(f"Cannot write {str(path)!r}: the folder "
                                    f"{str(path.parent)!r} does not exist.")
        check_writable(path)
        if path.is_dir():
            raise ValueError(f"Cannot write {str(path)!r}: it is a folder.")
        if path.exists() and not force:
            raise FileExistsError(f"The output file {str(path)!r} exists; pass --force to "
                                  "overwrite it, or choose another -o/--report.")
    return Outputs(model_path, report_path)


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _layer_entries(report: ecprune.PruneReport, shapes: dict) -> dict[str, dict]:
    scale = report.mean_output_sq
    return {
        name: {
            "shape": list(shapes[name]),
            "kept": layer.kept,
            "total": layer.total,
            "sparsity": layer.sparsity,
            "threshold": layer.threshold,
            "predicted_error": layer.predicted_error,
            "relative_predicted_error": (None if layer.predicted_error is None or not scale
                                         else layer.predicted_error / scale),
        }
        for name, layer in report.layers.items()
    }


def build_report(args: argparse.Namespace, data: LoadedData, report: ecprune.PruneReport,
                 measured: ecprune.OutputError, *, shapes: dict, seconds: dict[str, float],
                 compaction: dict | None, outputs: Outputs, model_format: str) -> dict:
    """The JSON report (a plain, JSON-ready dictionary)."""
    requested = ({"sparsity": args.sparsity} if args.error_budget is None
                 else {"error_budget": args.error_budget})
    return {
        "ecprune_version": ecprune.__version__,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": shlex.join(["ecprune", *args.argv]),
        "model": args.model,
        "data": str(args.data),
        "samples": len(data.inputs),
        "samples_available": data.available,
        "input_shape": list(data.inputs.shape[1:]),
        "targets": data.targets is not None,
        "method": report.method,
        "scope": report.scope,
        "requested": requested,
        "sparsity": 1 - report.kept / report.total,
        "kept": report.kept,
        "total": report.total,
        "layers": _layer_entries(report, shapes),
        "mean_output_sq": measured.mean_output_sq,
        "predicted_error": report.predicted_error,
        "relative_predicted_error": report.relative_predicted_error,
        "measured_error": measured.mean_sq_error,
        "relative_measured_error": _finite(measured.relative),
        "seconds": seconds,
        "compaction": compaction,
        "outputs": {"model": str(outputs.model), "model_format": model_format,
                    "report": str(outputs.report)},
    }


def _number(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def _shape(shape: list[int] | tuple[int, int]) -> str:
    return "x".join(map(str, shape))


def _columns(rows: list[list[str]]) -> list[str]:
    """Left-align the first column, right-align the others."""
    widths = [max(len(row[k]) for row in rows) for k in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) if k == 0 else cell.rjust(w)
                      for k, (cell, w) in enumerate(zip(row, widths, strict=True))).rstrip()
            for row in rows]


def format_table(report: dict) -> str:
    """The short terminal summary of a report from :func:`build_report`."""
    rows = [["layer", "shape", "kept", "total", "sparsity", "threshold", "predicted (rel.)"]]
    for name, layer in report["layers"].items():
        rows.append([name, _shape(layer["shape"]), str(layer["kept"]), str(layer["total"]),
                     f"{layer['sparsity']:.3f}", _number(layer["threshold"]),
                     _number(layer["relative_predicted_error"])])
    rows.append(["total", "", str(report["kept"]), str(report["total"]),
                 f"{report['sparsity']:.3f}", "", _number(report["relative_predicted_error"])])
    lines = _columns(rows)
    lines.append(f"relative output error on {report['samples']} samples: predicted "
                 f"{_number(report['relative_predicted_error'])}, measured "
                 f"{_number(report['relative_measured_error'])}")
    compaction = report["compaction"]
    if compaction is not None:
        dense, small = compaction["dense_shapes"], compaction["compact_shapes"]
        changes = ", ".join(f"{name} {_shape(dense[name])} -> {_shape(small[name])}"
                            for name in dense)
        lines.append(f"compacted: {changes}")
    seconds = report["seconds"]
    lines.append(f"time: {seconds['total']:.1f} s (scoring {seconds['scoring']:.1f} s)")
    outputs = report["outputs"]
    lines.append(f"wrote {outputs['model']} ({outputs['model_format']}), {outputs['report']}")
    return "\n".join(lines)


def write_outputs(outputs: Outputs, model: nn.Module, report: dict, *, model_format: str,
                  force: bool) -> None:
    """Save the model (whole module or state dict) and the JSON report, both or neither."""
    for path in (outputs.model, outputs.report):
        if path.exists() and not force:
            raise FileExistsError(f"The output file {str(path)!r} exists; pass --force to "
                                  "overwrite it.")
    payload = model if model_format == "module" else model.state_dict()
    text = json.dumps(report, indent=2, allow_nan=False) + "\n"
    write_files([(outputs.model, lambda handle: torch.save(payload, handle)),
                 (outputs.report, lambda handle: handle.write(text.encode()))])
