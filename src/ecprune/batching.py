"""Turn whatever the user calls "data" into a stream of checked ``(inputs, targets)`` chunks.

Accepted: a tensor or NumPy array of inputs, a ``Dataset`` (``TensorDataset`` is sliced
directly), a ``DataLoader``, or any iterable of batches, where a batch is a tensor of inputs,
``(inputs,)`` or ``(inputs, targets)``. Batches larger than ``chunk_size`` are split, so the
statistics never hold more than one chunk of activations at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset


@dataclass(frozen=True)
class Batch:
    """One chunk of data on the model's device: ``inputs`` (B, ...) and optional ``targets``."""

    inputs: torch.Tensor
    targets: torch.Tensor | None


def _as_tensor(value: object, what: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    raise TypeError(
        f"Each {what} must be a torch.Tensor or numpy.ndarray. Got {type(value).__name__} instead."
    )


def _raw_batches(data: object, chunk_size: int) -> Iterator[tuple[object, object]]:
    """Yield ``(inputs, targets_or_None)`` pairs in the user's own types."""
    if isinstance(data, torch.Tensor | np.ndarray):
        yield data, None
        return
    if isinstance(data, TensorDataset):
        tensors = data.tensors
        yield tensors[0], tensors[1] if len(tensors) > 1 else None
        return
    if isinstance(data, Dataset) and not isinstance(data, Iterable):
        data = DataLoader(data, batch_size=chunk_size)
    if isinstance(data, str | bytes | dict) or not isinstance(data, Iterable):
        raise TypeError(
            "The 'data' parameter must be a tensor of inputs, a Dataset, a DataLoader or an "
            "iterable of batches (inputs or (inputs, targets)). "
            f"Got {type(data).__name__} instead."
        )
    for item in data:
        if isinstance(item, tuple | list):
            if not 1 <= len(item) <= 2:
                raise ValueError(
                    "Each batch must be inputs, (inputs,) or (inputs, targets). "
                    f"Got a {type(item).__name__} of length {len(item)} instead."
                )
            yield item[0], item[1] if len(item) == 2 else None
        else:
            yield item, None


def _check_finite(tensor: torch.Tensor, what: str, position: int) -> None:
    if tensor.is_floating_point() and not torch.isfinite(tensor).all():
        bad = (~torch.isfinite(tensor)).sum().item()
        raise ValueError(
            f"The {what} of data batch {position} contain {bad} NaN or infinite values; "
            "expected finite numbers. Clean or impute the data first."
        )


def check_reiterable(data: object, what: str) -> None:
    """Raise if ``data`` is a one-shot iterator (e.g. a generator): ``what`` streams it again."""
    if isinstance(data, Iterator):
        raise ValueError(
            f"Pruning with {what} streams the data several times, but 'data' is a one-shot "
            f"{type(data).__name__}. Pass a tensor, a Dataset, a DataLoader or a list of batches "
            "instead."
        )


def iter_batches(
    data: object,
    *,
    chunk_size: int,
    device: torch.device,
    dtype: torch.dtype,
) -> Iterator[Batch]:
    """Stream ``data`` as :class:`Batch` chunks of at most ``chunk_size`` samples.

    Inputs are cast to the model's ``dtype`` and moved to its ``device``; targets keep their
    dtype. Raises ``ValueError`` on NaN/inf values, mismatched input/target lengths or
    scalar batches.
    """
    for position, (raw_inputs, raw_targets) in enumerate(_raw_batches(data, chunk_size)):
        inputs = _as_tensor(raw_inputs, "batch of inputs")
        targets = None if raw_targets is None else _as_tensor(raw_targets, "batch of targets")
        if inputs.ndim == 0:
            raise ValueError(
                f"Data batch {position} is a scalar; expected inputs of shape (batch, features)."
            )
        if targets is not None and len(targets) != len(inputs):
            raise ValueError(
                f"Data batch {position} has {len(inputs)} inputs but {len(targets)} targets; "
                "expected one target per input."
            )
        _check_finite(inputs, "inputs", position)
        if targets is not None:
            _check_finite(targets, "targets", position)
        for start in range(0, len(inputs), chunk_size):
            chunk = inputs[start : start + chunk_size].to(device=device, dtype=dtype)
            chunk_targets = None
            if targets is not None:
                chunk_targets = targets[start : start + chunk_size].to(device=device)
            yield Batch(chunk, chunk_targets)
