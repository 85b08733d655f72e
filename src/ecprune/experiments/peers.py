"""Torch-Pruning's own unit importances as peers of :func:`ecprune.prune_neurons`.

Each peer prunes through ``tp.pruner.MetaPruner``, Torch-Pruning's documented path: build the
pruner on the model (the output layer in ``ignored_layers``), give the importance what it reads
(gradients for Taylor, squared per-sample gradients for Hessian), then ``pruner.step()``.

- ``tp-magnitude``: ``tp.importance.MagnitudeImportance()`` (L2 norm of a unit's weights over
  its group, normalised by the group mean), data-free;
- ``tp-taylor``: ``tp.importance.TaylorImportance()``, ``|w * dL/dw|`` summed over the group,
  with ``dL/dw`` the gradient of the mean loss over the whole training set;
- ``tp-hessian``: ``tp.importance.HessianImportance()`` (Optimal Brain Damage, ``w^2 E[g^2]``),
  ``E[g^2]`` the mean squared per-sample gradient over :data:`HESSIAN_SAMPLES` training inputs.
  Torch-Pruning 1.6's ``accumulate_grad`` tests ``name not in`` a dict keyed by parameters, so
  calling it once per sample, as its docstring shows, keeps the last sample only; here the mean
  of the squared per-sample gradients is computed with ``torch.func`` and handed to
  ``accumulate_grad`` once, as the gradient's root mean square, which it squares back.

Counts are units, not ratios: every hidden layer loses exactly ``counts[name]`` units, passed to
MetaPruner as the per-layer ratio ``(count - 1/2) / width``, which its ``width - int(width *
(1 - ratio))`` turns back into ``count`` for every width; the widths are checked afterwards.
"""

from __future__ import annotations

import time

import torch
import torch_pruning as tp
from torch import nn
from torch.func import functional_call, grad, vmap

from .stacked import stacked_losses

PEERS = ("tp-magnitude", "tp-taylor", "tp-hessian")
# Training inputs whose per-sample gradients estimate HessianImportance's E[g^2]; chunked.
HESSIAN_SAMPLES = 2048
HESSIAN_CHUNK = 128
# Inputs per chunk of the full-batch gradient of TaylorImportance.
GRADIENT_CHUNK = 4096


def _linears(model: nn.Sequential) -> list[tuple[str, nn.Linear]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]


def _loss(outputs: torch.Tensor, targets: torch.Tensor, loss: str) -> torch.Tensor:
    return stacked_losses(outputs[None], targets, loss)[0]


def _full_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str) -> None:
    """``.grad`` of every parameter: the gradient of the mean loss over all of ``(x, y)``."""
    model.zero_grad(set_to_none=True)
    for start in range(0, len(x), GRADIENT_CHUNK):
        xb, yb = x[start:start + GRADIENT_CHUNK], y[start:start + GRADIENT_CHUNK]
        (_loss(model(xb), yb, loss) * (len(xb) / len(x))).backward()


def _mean_squared_sample_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                                   loss: str) -> dict[str, torch.Tensor]:
    """``E[g_i^2]`` per parameter over the first :data:`HESSIAN_SAMPLES` inputs."""
    params = {name: p.detach() for name, p in model.named_parameters()}

    def sample_loss(p, xi, yi):
        return _loss(functional_call(model, p, (xi[None],)), yi[None], loss)

    per_sample = vmap(grad(sample_loss), in_dims=(None, 0, 0))
    x, y = x[:HESSIAN_SAMPLES], y[:HESSIAN_SAMPLES]
    total = {name: torch.zeros_like(p) for name, p in params.items()}
    for start in range(0, len(x), HESSIAN_CHUNK):
        grads = per_sample(params, x[start:start + HESSIAN_CHUNK], y[start:start + HESSIAN_CHUNK])
        for name, g in grads.items():
            total[name] += g.square().sum(0)
    return {name: t / len(x) for name, t in total.items()}


def _importance(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str):
    """The configured Torch-Pruning importance, with the gradients it reads in place."""
    if name == "tp-magnitude":
        return tp.importance.MagnitudeImportance()
    if name == "tp-taylor":
        _full_gradient(model, x, y, loss)
        return tp.importance.TaylorImportance()
    if name == "tp-hessian":
        importance = tp.importance.HessianImportance()
        mean_sq = _mean_squared_sample_gradients(model, x, y, loss)
        for pname, p in model.named_parameters():
            p.grad = mean_sq[pname].sqrt()
        importance.zero_grad()
        importance.accumulate_grad(model)
        return importance
    raise ValueError(f"Unknown peer {name!r}; expected one of {PEERS}.")


def prune_with_torch_pruning(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor,
                             counts: dict[str, int], *, method: str, loss: str) -> float:
    """Remove ``counts[name]`` output units of each hidden ``nn.Linear`` of ``model`` (in place)
    with Torch-Pruning's importance ``method`` (:data:`PEERS`); returns the seconds spent.

    The last ``nn.Linear`` (the output) is never pruned. RuntimeError when the widths Torch-
    Pruning leaves are not ``width - count`` (nothing is then guaranteed about ``model``).
    """
    linears = _linears(model)
    hidden, output = linears[:-1], linears[-1][1]
    unknown = sorted(set(counts) - {name for name, _ in hidden})
    if unknown:
        raise ValueError(f"counts names {unknown}, which are not hidden Linear layers of the "
                         f"model; those are {[name for name, _ in hidden]}.")
    before = {name: layer.out_features for name, layer in hidden}
    n_out = output.out_features
    start = time.perf_counter()
    importance = _importance(method, model, x, y, loss)
    ratios = {layer: (counts.get(name, 0) - 0.5) / layer.out_features
              for name, layer in hidden if counts.get(name, 0) > 0}
    ignored = [output, *(layer for name, layer in hidden if counts.get(name, 0) == 0)]
    pruner = tp.pruner.MetaPruner(model, x[:1], importance, global_pruning=False,
                                  pruning_ratio=0.0, pruning_ratio_dict=ratios,
                                  ignored_layers=ignored)
    pruner.step()
    model.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - start
    after = {name: layer.out_features for name, layer in _linears(model)[:-1]}
    expected = {name: width - counts.get(name, 0) for name, width in before.items()}
    if after != expected or _linears(model)[-1][1].out_features != n_out:
        raise RuntimeError(f"Torch-Pruning ({method}) left the hidden widths {after} and "
                           f"{_linears(model)[-1][1].out_features} outputs; expected "
                           f"{expected} and {n_out}.")
    return seconds
