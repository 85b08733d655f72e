"""Measure the real output change of a pruned model against its dense reference."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from . import distributed
from ._validation import check_positive_int
from .engine.batching import iter_batches
from .engine.layers import model_dtype_device
from .engine.statistics import ACCUMULATE_DTYPE
from .engine.tape import eval_mode, forward, progress_disabled


@dataclass(frozen=True)
class OutputError:
    """``mean_sq_error = E||y_ref - y||^2`` and ``mean_output_sq = E||y_ref||^2`` over the data;
    ``relative`` is their ratio (the measured counterpart of
    :attr:`ecprune.PruneReport.relative_predicted_error`), ``count`` the number of inputs."""

    mean_sq_error: float
    mean_output_sq: float
    count: int

    @property
    def relative(self) -> float:
        return self.mean_sq_error / self.mean_output_sq if self.mean_output_sq else float("nan")


def output_error(reference: nn.Module, model: nn.Module, data: object, *, chunk_size: int = 4096,
                 output_fn: Callable[[object], torch.Tensor] | None = None,
                 progress: bool | None = None) -> OutputError:
    """Exact mean squared output change of ``model`` against ``reference`` over ``data``.

    Both run in eval mode without gradients; outputs (or ``output_fn(output)``) are flattened
    per sample, as for the sensitivities, and sums are kept in float64. Under
    ``torch.distributed`` each rank measures its share of ``data`` and the sums are all-reduced.

    Examples
    --------
    >>> import copy, torch, ecprune
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    >>> x = torch.randn(256, 4)
    >>> pruned = copy.deepcopy(net)
    >>> report = ecprune.prune(pruned, x, 0.3)
    >>> ecprune.output_error(net, pruned, x).relative >= 0
    True
    """
    check_positive_int("chunk_size", chunk_size, caller="output_error")
    dtype, device = model_dtype_device(model)
    error = size = 0.0
    count = 0
    rank, world_size = distributed.world()
    batches = iter_batches(data, chunk_size=chunk_size, device=device, dtype=dtype, rank=rank,
                           world_size=world_size)
    with torch.no_grad(), eval_mode(reference), eval_mode(model):
        for batch in tqdm(batches, desc="measure", unit="chunk", leave=False,
                          disable=progress_disabled(progress)):
            expected = forward(reference, batch.inputs, output_fn)[1].to(ACCUMULATE_DTYPE)
            actual = forward(model, batch.inputs, output_fn)[1].to(ACCUMULATE_DTYPE)
            if actual.shape != expected.shape:
                raise ValueError(
                    f"The model's output has shape {tuple(actual.shape)} but the reference's has "
                    f"{tuple(expected.shape)}; expected the same shape."
                )
            error += (actual - expected).square().sum().item()
            size += expected.square().sum().item()
            count += len(batch.inputs)
    if distributed.is_distributed():
        totals = torch.tensor([error, size, count], dtype=ACCUMULATE_DTYPE)
        distributed.all_reduce_sum(totals)
        error, size, count = totals[0].item(), totals[1].item(), int(totals[2].item())
    if count == 0:
        raise ValueError("The 'data' parameter holds no samples; expected at least one input.")
    return OutputError(mean_sq_error=error / count, mean_output_sq=size / count, count=count)
