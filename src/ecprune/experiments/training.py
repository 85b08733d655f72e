"""Train and evaluate a :class:`~ecprune.experiments.stacked.StackedMLP` (K networks at once).

One Adam over the stacked tensors is exactly K independent Adams, because Adam is elementwise,
and the loss is the sum over networks of each network's mean batch loss, so network ``k``
receives exactly the gradient it would get alone. All networks see the same mini-batches; the
shuffling order is drawn from a generator seeded by ``seed``. Training can checkpoint after
every epoch and resume from the checkpoint bit for bit (the order of epoch ``e`` is the e-th
permutation of the seeded generator, so nothing else needs saving).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from . import checkpoints
from .stacked import StackedMLP, stacked_losses

# Samples per evaluation chunk: bounds the (K, chunk, width) activations.
EVAL_CHUNK = 2048


@dataclass(frozen=True)
class TrainSettings:
    """Mini-batch Adam (PyTorch defaults: betas (0.9, 0.999), eps 1e-8).

    The learning rate of epoch ``e`` (0-based) is ``lr * lr_decay ** (e / (epochs - 1))``: a
    geometric decay from ``lr`` to ``lr * lr_decay`` over the run (``lr_decay=1``: constant).
    It depends on the epoch index only, so a resumed run follows the same schedule.
    """

    epochs: int
    batch_size: int
    loss: str
    seed: int
    lr: float = 1e-3
    lr_decay: float = 1.0

    def learning_rate(self, epoch: int) -> float:
        """The learning rate of epoch ``epoch`` (0-based)."""
        return self.lr * self.lr_decay ** (epoch / max(1, self.epochs - 1))


def _optimizer(model: StackedMLP, lr: float) -> torch.optim.Adam:
    # fused=True: one kernel per step over all parameters; the elementwise optimizer work is
    # otherwise a large share of a step for K stacked networks (see benchmarks/).
    fused = model.weights[0].device.type in ("cpu", "cuda")
    return torch.optim.Adam(model.parameters(), lr=lr, fused=fused)


def _load_checkpoint(model: StackedMLP, optimizer: torch.optim.Optimizer,
                     checkpoint: Path | None) -> int:
    """The epochs a checkpoint holds, loaded into ``model`` and ``optimizer``; 0 (both
    untouched) without one or when it is damaged."""
    if checkpoint is None:
        return 0

    def restore(state: dict) -> int:
        epoch = int(state["epoch"])
        initial = copy.deepcopy(model.state_dict())
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])  # checks before it changes anything
        except checkpoints.DAMAGED:
            model.load_state_dict(initial)
            raise
        return epoch

    done = checkpoints.load(checkpoint, restore, map_location=model.weights[0].device)
    return 0 if done is None else done


def _save_checkpoint(model: StackedMLP, optimizer: torch.optim.Optimizer, epoch: int,
                     checkpoint: Path) -> None:
    checkpoints.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                      "epoch": epoch}, checkpoint)


def train(model: StackedMLP, x: torch.Tensor, y: torch.Tensor, settings: TrainSettings, *,
          checkpoint: Path | None = None,
          on_epoch: Callable[[int], None] | None = None) -> float:
    """Train all stacked networks in place; return the seconds spent.

    With ``checkpoint``, the state is saved after every epoch and a run finds it and goes on
    from there; the file is removed when training completes. ``on_epoch(epoch)`` is called
    after each epoch trained here (1-based), e.g. to record a loss curve.
    """
    start = time.perf_counter()
    optimizer = _optimizer(model, settings.lr)
    done = _load_checkpoint(model, optimizer, checkpoint)
    generator = torch.Generator().manual_seed(settings.seed)
    model.train()
    for epoch in range(settings.epochs):
        order = torch.randperm(len(x), generator=generator).to(x.device)
        if epoch < done:
            continue
        for group in optimizer.param_groups:
            group["lr"] = settings.learning_rate(epoch)
        for batch in order.split(settings.batch_size):
            optimizer.zero_grad(set_to_none=True)
            losses = stacked_losses(model(x[batch]), y[batch], settings.loss)
            losses.sum().backward()
            optimizer.step()
        if checkpoint is not None:
            _save_checkpoint(model, optimizer, epoch + 1, checkpoint)
        if on_epoch is not None:
            on_epoch(epoch + 1)
    if checkpoint is not None:
        checkpoint.unlink(missing_ok=True)
    return time.perf_counter() - start


@torch.no_grad()
def evaluate(model: StackedMLP, x: torch.Tensor, y: torch.Tensor,
             loss: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Each network's mean loss (K,) and, for ``cross_entropy``, accuracy (K,), in float64."""
    total_loss = torch.zeros(model.count, dtype=torch.float64, device=x.device)
    correct = torch.zeros(model.count, dtype=torch.float64, device=x.device)
    for start in range(0, len(x), EVAL_CHUNK):
        xb, yb = x[start:start + EVAL_CHUNK], y[start:start + EVAL_CHUNK]
        outputs = model(xb)  # (K, B, C)
        total_loss += stacked_losses(outputs, yb, loss).to(torch.float64) * len(xb)
        if loss == "cross_entropy":
            correct += (outputs.argmax(-1) == yb).sum(1).to(torch.float64)
    accuracy = correct / len(x) if loss == "cross_entropy" else None
    return total_loss / len(x), accuracy


def gradient_pass_seconds(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str,
                          *, repeats: int = 3) -> float:
    """Median seconds of one gradient pass of ``model`` over all of ``(x, y)`` (forward and
    backward in chunks of :data:`EVAL_CHUNK`, weight gradients accumulated): the unit in which
    the cost of pruning is reported."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for begin in range(0, len(x), EVAL_CHUNK):
            xb, yb = x[begin:begin + EVAL_CHUNK], y[begin:begin + EVAL_CHUNK]
            (stacked_losses(model(xb)[None], yb, loss).sum() * len(xb)).backward()
        times.append(time.perf_counter() - start)
        model.zero_grad(set_to_none=True)
    return sorted(times)[len(times) // 2]
