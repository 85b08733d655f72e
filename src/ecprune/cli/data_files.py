"""Read the DATA file of ``ecprune prune``: inputs and optional targets.

Formats (targets are only needed by ``--method gradient``):

- ``.pt`` / ``.pth``: a tensor of inputs, a dict ``{"inputs": ..., "targets": ...}`` (targets
  optional) or a tuple/list ``(inputs,)`` / ``(inputs, targets)``; read with weights_only=True.
- ``.npy``: an array of inputs (no targets).
- ``.npz``: arrays ``inputs`` and optionally ``targets`` (a file with a single array of any
  name is read as inputs).
- ``.csv``: comma-separated numbers, one sample per row, an optional header row. With
  ``target_column`` (a header name or a 0-based index, negative from the end) that column is
  the targets and the others the inputs; integer-valued targets become class labels (int64).
"""

from __future__ import annotations

import csv
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .loading import existing_file, load_tensors

FORMATS = (".pt", ".pth", ".npy", ".npz", ".csv")
PT_HINT = ("Save tensors instead: torch.save(inputs, FILE), torch.save({'inputs': inputs, "
           "'targets': targets}, FILE) or torch.save((inputs, targets), FILE).")


@dataclass(frozen=True)
class LoadedData:
    """``inputs`` (N, ...) and ``targets`` (N, ...) or None; ``available`` samples in the file."""

    inputs: torch.Tensor
    targets: torch.Tensor | None
    available: int


def _tensor(value: object, path: Path, what: str) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biuf":
            raise ValueError(f"The {what} in {str(path)!r} have dtype {value.dtype}; expected "
                             "numbers.")
        value = torch.from_numpy(np.ascontiguousarray(value))
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"The {what} in {str(path)!r} are a {type(value).__name__}; expected a "
                         "tensor or array.")
    if value.is_complex():
        raise ValueError(f"The {what} in {str(path)!r} are complex; expected real numbers.")
    return value


def _read_pt(path: Path) -> tuple[object, object]:
    data = load_tensors(path, "data", objects_hint=PT_HINT)
    if isinstance(data, dict):
        unknown = sorted(set(map(str, data)) - {"inputs", "targets"})
        if "inputs" not in data or unknown:
            raise ValueError(f"The data file {str(path)!r} holds a dict with keys "
                             f"{sorted(map(str, data))}; expected 'inputs' and optionally "
                             "'targets'.")
        return data["inputs"], data.get("targets")
    if isinstance(data, tuple | list):
        if not 1 <= len(data) <= 2:
            raise ValueError(f"The data file {str(path)!r} holds a {type(data).__name__} of "
                             f"length {len(data)}; expected (inputs,) or (inputs, targets).")
        return data[0], data[1] if len(data) == 2 else None
    return data, None


def _npz_arrays(arrays: dict[str, np.ndarray], path: Path) -> tuple[object, object]:
    keys = sorted(arrays)
    if len(keys) == 1:
        return arrays[keys[0]], None
    if "inputs" not in keys or set(keys) - {"inputs", "targets"}:
        raise ValueError(f"The data file {str(path)!r} holds arrays {keys}; expected 'inputs' "
                         "and optionally 'targets' (np.savez(FILE, inputs=..., targets=...)).")
    return arrays["inputs"], arrays.get("targets")


def _read_numpy(path: Path) -> tuple[object, object]:
    # Opened here, not by np.load, so that the file is closed whatever np.load raises.
    with path.open("rb") as handle:
        try:
            loaded = np.load(handle, allow_pickle=False)
            if isinstance(loaded, np.ndarray):
                return loaded, None
            arrays = {key: loaded[key] for key in loaded.files}
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
            raise ValueError(f"The data file {str(path)!r} is not a readable NumPy file "
                             f"(corrupt, or holding Python objects): {err}") from None
    return _npz_arrays(arrays, path)


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _column_index(header: list[str] | None, column: str, width: int, path: Path) -> int:
    if header is not None and column in header:
        return header.index(column)
    try:
        index = int(column)
    except ValueError:
        named = f" Columns: {header}." if header else " The file has no header row."
        raise ValueError(f"--target-column {column!r} is not a column of {str(path)!r}.{named}") \
            from None
    if not -width <= index < width:
        raise ValueError(f"--target-column {index} is out of range for {str(path)!r}, which has "
                         f"{width} columns.")
    return index % width


def _read_csv(path: Path, target_column: str | None) -> tuple[object, object]:
    try:
        with path.open(newline="") as handle:
            first = next(csv.reader(handle), None)
        if first is None:
            raise ValueError("the file is empty")
        header = None if all(map(_is_number, first)) else [cell.strip() for cell in first]
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="loadtxt: input contained no data")
            table = np.loadtxt(path, delimiter=",", skiprows=int(header is not None), ndmin=2,
                               dtype=np.float64)
        if table.size == 0:
            raise ValueError("no data rows (a first row that is not all numbers is a header)")
    except (ValueError, OSError, UnicodeDecodeError) as err:
        raise ValueError(f"The data file {str(path)!r} is not a numeric CSV file: {err}") \
            from None
    if target_column is None:
        return table, None
    index = _column_index(header, target_column, table.shape[1], path)
    targets = table[:, index]
    if np.all(targets == np.round(targets)):
        targets = targets.astype(np.int64)
    return np.delete(table, index, axis=1), targets


def _read(path: Path, target_column: str | None) -> tuple[object, object]:
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"The data file {str(path)!r} has the extension {suffix!r}; expected "
                         f"one of {', '.join(FORMATS)}.")
    if target_column is not None and suffix != ".csv":
        raise ValueError("--target-column applies to .csv data; for .pt and .npz files store "
                         "the targets under the key 'targets'.")
    if suffix == ".csv":
        return _read_csv(path, target_column)
    return _read_numpy(path) if suffix in (".npy", ".npz") else _read_pt(path)


def load_data(path: str | Path, *, target_column: str | None = None,
              max_samples: int | None = None, seed: int = 0) -> LoadedData:
    """Read inputs (and targets) from ``path``; keep a seeded random ``max_samples`` of them."""
    path = existing_file(path, "data")
    raw_inputs, raw_targets = _read(path, target_column)
    inputs = _tensor(raw_inputs, path, "inputs")
    targets = None if raw_targets is None else _tensor(raw_targets, path, "targets")
    if inputs.ndim < 2 or len(inputs) == 0:
        raise ValueError(f"The inputs in {str(path)!r} have shape {tuple(inputs.shape)}; "
                         "expected (samples, features) with at least one sample.")
    if targets is not None and len(targets) != len(inputs):
        raise ValueError(f"The data file {str(path)!r} has {len(inputs)} inputs but "
                         f"{len(targets)} targets; expected one target per input.")
    available = len(inputs)
    if max_samples is not None and max_samples < available:
        generator = torch.Generator().manual_seed(seed)
        keep = torch.randperm(available, generator=generator)[:max_samples].sort().values
        inputs = inputs[keep]
        targets = None if targets is None else targets[keep]
    return LoadedData(inputs=inputs, targets=targets, available=available)
