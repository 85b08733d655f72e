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
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset


@dataclass(frozen=True)
class Batch:
    """One chunk of data on the model's device: ``inputs`` (B, ...), optional ``targets``, and
    ``start``, the position of its first sample in the whole (unsharded) data."""

    inputs: torch.Tensor
    targets: torch.Tensor | None
    start: int = 0


def _check_dense(value: torch.Tensor, what: str) -> None:
    if value.layout != torch.strided:
        raise TypeError(f"Each {what} must be a dense tensor; got one with layout "
                        f"{value.layout}. Convert it first, e.g. inputs.to_dense().")


def _as_tensor(value: object, what: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        _check_dense(value, what)
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    raise TypeError(
        f"Each {what} must be a torch.Tensor or numpy.ndarray. Got {type(value).__name__} instead."
    )


def _raw_batches(data: object, chunk_size: int, rank: int,
                 world_size: int) -> Iterator[tuple[int, object, object]]:
    """Yield ``(start, inputs, targets_or_None)`` of this rank's share, in the user's types.

    Arrays and datasets are split into contiguous blocks, one per rank; other iterables are
    dealt out batch by batch (batch ``k`` goes to rank ``k % world_size``).
    """
    for tensor in data.tensors if isinstance(data, TensorDataset) else [data]:
        if isinstance(tensor, torch.Tensor):
            _check_dense(tensor, "tensor of data")
    if isinstance(data, TensorDataset):
        inputs, *rest = data.tensors
        lo, hi = shard_range(len(inputs), rank, world_size)
        yield lo, inputs[lo:hi], rest[0][lo:hi] if rest else None
        return
    if isinstance(data, torch.Tensor | np.ndarray):
        if data.ndim == 0:
            yield 0, data, None
            return
        lo, hi = shard_range(len(data), rank, world_size)
        yield lo, data[lo:hi], None
        return
    if isinstance(data, Dataset) and not isinstance(data, Iterable):
        lo, hi = shard_range(len(data), rank, world_size)
        data = DataLoader(Subset(data, range(lo, hi)), batch_size=chunk_size)
        rank, world_size, offset = 0, 1, lo
    else:
        offset = 0
    if isinstance(data, str | bytes | dict) or not isinstance(data, Iterable):
        raise TypeError(
            "The 'data' parameter must be a tensor of inputs, a Dataset, a DataLoader or an "
            "iterable of batches (inputs or (inputs, targets)). "
            f"Got {type(data).__name__} instead."
        )
    start = offset
    for position, item in enumerate(data):
        inputs, targets = _split_batch(item)
        if position % world_size == rank:
            yield start, inputs, targets
        start += len(inputs) if hasattr(inputs, "__len__") else 1


def _split_batch(item: object) -> tuple[object, object]:
    if isinstance(item, tuple | list):
        if not 1 <= len(item) <= 2:
            raise ValueError(
                "Each batch must be inputs, (inputs,) or (inputs, targets). "
                f"Got a {type(item).__name__} of length {len(item)} instead."
            )
        return item[0], item[1] if len(item) == 2 else None
    return item, None


def shard_range(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Contiguous block ``[lo, hi)`` of ``n`` items for ``rank``; sizes differ by at most one.

    >>> [shard_range(10, r, 3) for r in range(3)]
    [(0, 4), (4, 7), (7, 10)]
    """
    base, extra = divmod(n, world_size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (rank < extra)


def _check_finite(tensor: torch.Tensor, what: str, position: int) -> None:
    # One pass: a sum is finite only if every term is (NaN and inf propagate); only a sum that
    # is not finite (bad values, or an overflow) pays for the elementwise check.
    if not tensor.is_floating_point() or torch.isfinite(tensor.sum()):
        return
    if not torch.isfinite(tensor).all():
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
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[Batch]:
    """Stream ``data`` as :class:`Batch` chunks of at most ``chunk_size`` samples.

    Inputs are cast to the model's ``dtype`` and moved to its ``device``; targets keep their
    dtype. With ``world_size > 1`` only this ``rank``'s share is streamed. Raises
    ``ValueError`` on NaN/inf values, mismatched input/target lengths or scalar batches.
    """
    batches = _raw_batches(data, chunk_size, rank, world_size)
    for position, (first, raw_inputs, raw_targets) in enumerate(batches):
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
            yield Batch(chunk, chunk_targets, first + start)


def split_batches(batches: Iterable[Batch], size: int) -> Iterator[Batch]:
    """The same samples in batches of at most ``size``, each with its own ``start``."""
    for batch in batches:
        for k in range(0, len(batch.inputs), size):
            targets = None if batch.targets is None else batch.targets[k:k + size]
            yield Batch(batch.inputs[k:k + size], targets, batch.start + k)
