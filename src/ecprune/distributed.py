"""The statistics pass on ``torch.distributed``: shard the data, all-reduce the sums once.

When a process group is initialised (e.g. under ``torchrun --nproc-per-node N``), each rank
streams its own share of the data (see :func:`ecprune.engine.batching.shard_range`), and the float64
sums of :mod:`ecprune.engine.statistics` are all-reduced once, so every rank ends with identical
scores, shifts and masks. A rank whose pass fails makes every rank fail with a message that
names it, instead of leaving the others waiting in a collective; a rank that dies outright is
detected by the backend (or after the process group's ``timeout``).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import torch
import torch.distributed as dist

if TYPE_CHECKING:
    from .engine.statistics import LayerStatistics, Statistics

T = TypeVar("T")
# The LayerStatistics fields that are plain sums over samples.
SUMMED = ("input_sum", "input_sq_sum", "gram", "sens_sum", "sens_act", "sens_act_sq",
          "loss_grad", "row_sens_sum")


class RankFailure(RuntimeError):
    """Raised on every healthy rank when another rank's statistics pass failed."""


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` when there is none."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_distributed() -> bool:
    """True when a process group with more than one rank is initialised."""
    return world()[1] > 1


def is_main_process() -> bool:
    """True on rank 0 (and when not distributed): the rank that shows progress, writes files."""
    return world()[0] == 0


def init_from_environment(device: str, *, timeout_seconds: float) -> bool:
    """Join the process group that ``torchrun`` describes in the environment (``WORLD_SIZE``,
    ``RANK``, ``MASTER_ADDR``, ...); gloo on CPU, NCCL for CUDA. Returns True if this call
    created it (the caller then destroys it), False when not launched by torchrun or already
    initialised."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    backend = "nccl" if device.startswith("cuda") else "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_seconds))
    return True


def local_device(device: str) -> str:
    """``cuda`` becomes ``cuda:LOCAL_RANK`` under torchrun, so each process takes its own GPU."""
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        return f"cuda:{os.environ['LOCAL_RANK']}"
    return device


def run_on_every_rank(fn: Callable[[], T]) -> T:
    """Run ``fn`` here; if it fails on any rank, fail on all of them.

    The failing rank re-raises its own error; the others raise :class:`RankFailure` naming the
    failed ranks and their messages.
    """
    if not is_distributed():
        return fn()
    error, result = None, None
    try:
        result = fn()
    except Exception as err:
        error = err
    messages: list[str | None] = [None] * world()[1]
    dist.all_gather_object(messages, None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    failed = [(rank, message) for rank, message in enumerate(messages) if message is not None]
    if failed:
        listed = "; ".join(f"rank {rank}: {message}" for rank, message in failed)
        raise RankFailure(f"The statistics pass failed on another rank ({listed}).")
    return result


def check_agreement(call: dict[str, object]) -> None:
    """Raise on every rank, with one message, unless every rank describes the same ``call``
    (method, options, sparsity, layers and their shapes, the data's length when sharded):
    ranks that disagree would end with different masks."""
    if not is_distributed():
        return
    calls = all_gather_objects(call)
    for key in call:
        values = [c.get(key) for c in calls]
        if any(value != values[0] for value in values):
            listed = "; ".join(f"rank {rank}: {value!r}" for rank, value in enumerate(values))
            raise ValueError(f"The ranks disagree on {key} ({listed}); every rank must run the "
                             "same call on the same model and data to end with the same masks.")


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (float64 sums stay float64)."""
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_objects(value: object) -> list:
    """Every rank's ``value``, in rank order."""
    gathered: list = [None] * world()[1]
    dist.all_gather_object(gathered, value)
    return gathered


def _recentre(layer: LayerStatistics, shift: torch.Tensor) -> None:
    """Re-express the shifted sums about ``shift``: with ``d = c - shift``,
    ``P' = P + S d`` and ``Q' = Q + 2 P d + S d^2`` (exact algebra)."""
    d = (layer.input_shift - shift)[None, :]
    if layer.sens_sum is not None:
        s = layer.sens_sum[:, None]
        layer.sens_act_sq += 2 * layer.sens_act * d + s * d.square()
        layer.sens_act += s * d
    layer.input_shift = shift.clone()


def all_reduce_statistics(stats: Statistics, samples: int) -> None:
    """Sum every rank's statistics in place: agree on one input shift per layer (the
    count-weighted mean of the ranks' shifts), re-centre, then all-reduce all sums at once."""
    layers = list(stats.layers.values())
    count = float(stats.count)
    weighted = [count * layer.input_shift for layer in layers]
    shifts = torch.cat([*weighted, weighted[0].new_tensor([count])])
    all_reduce_sum(shifts)
    total = max(shifts[-1].item(), 1.0)
    offset = 0
    for layer in layers:
        n = layer.input_shift.numel()
        _recentre(layer, shifts[offset : offset + n] / total)
        offset += n
    sums = [getattr(layer, f) for layer in layers for f in SUMMED if getattr(layer, f) is not None]
    totals = sums[0].new_tensor([*(layer.rows for layer in layers), count, stats.output_sq_sum])
    flat = torch.cat([*(t.reshape(-1) for t in sums), totals])
    all_reduce_sum(flat)
    offset = 0
    for tensor in sums:
        tensor.copy_(flat[offset : offset + tensor.numel()].reshape(tensor.shape))
        offset += tensor.numel()
    for k, layer in enumerate(layers):
        layer.rows = int(flat[offset + k].item())
    stats.count, stats.output_sq_sum = int(flat[-2].item()), flat[-1].item()
    if samples:
        _gather_samples(stats, samples)


def _gather_samples(stats: Statistics, samples: int) -> None:
    """Merge every rank's kept subsample and keep the ``samples`` smallest keys overall."""
    local = (stats.samples, stats.sample_keys)
    gathered = [pair for pair in all_gather_objects(local) if pair[0] is not None]
    if not gathered:
        return
    device = stats.layers[next(iter(stats.layers))].input_sum.device
    inputs = torch.cat([pair[0].to(device) for pair in gathered])
    keys = torch.cat([pair[1].to(device) for pair in gathered])
    order = torch.argsort(keys, stable=True)[:samples]
    stats.samples, stats.sample_keys = inputs[order], keys[order]
