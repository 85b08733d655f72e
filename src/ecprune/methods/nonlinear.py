"""The paper's brute-force "Non-linear" baseline, vectorised.

For every weight ``W_ij`` still present: remove it, shift ``b_i`` by the mean signal
``W_ij E[a_j]``, and measure ``E_x ||y - y_pruned||^2`` exactly through the nonlinear network.
The pre-activation ``u_i`` then changes by ``-W_ij (a_j(x) - E[a_j])``; a block of such
perturbations is pushed through the network at once with ``torch.func.vmap`` over a forward
hook, so the layers upstream of the perturbed one run once per block, not once per weight.
Models that vmap cannot run (in-place writes into unbatched tensors) fall back to tiling the
inputs. Cost: ``|W| x samples x`` (downstream forward), hence the expectation over a seeded
subsample of the data.

Fast path for ``nn.Sequential`` MLPs: when the layer is followed by an elementwise activation
and another ``nn.Linear``, removing ``W_ij`` changes only unit ``i``, so the next pre-activation
changes by the rank-one term ``W'_{:,i} (sigma(u_i + d) - sigma(u_i))`` and only the modules
after the next Linear run batched. When nothing follows the next Linear (and no ``output_fn``),
the error is closed-form: ``||W'_{:,i}||^2 E[(sigma(u_i + d) - sigma(u_i))^2]``. The two paths
agree to rounding; their times: benchmarks/nonlinear_paths.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torch.func import vmap
from tqdm.auto import tqdm

from .._validation import check_positive_int
from ..engine.layers import effective_weight
from ..engine.positions import layouts
from ..engine.statistics import StatisticsRequest
from ..engine.tape import LayerTape, eval_mode, forward
from .base import LayerImportance, Method, ScoringContext
from .baselines import mean_signal_shift

# Elements of the perturbation block (weights x samples x layer width) pushed through at once.
BLOCK_ELEMENTS = 2**22
# Activations that act on each unit alone with no per-unit parameter (PReLU only with a single
# slope): removing one weight then changes a single unit of the layer's output.
ELEMENTWISE = (nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid,
               nn.Softplus, nn.Identity)


def _output_with(model: nn.Module, layer: nn.Linear, hook, inputs: torch.Tensor,
                 output_fn) -> torch.Tensor:
    """The model's output (n, n_out) on ``inputs`` with forward ``hook`` on ``layer``."""
    handle = layer.register_forward_hook(hook)
    try:
        output = model(inputs)
        output = output if output_fn is None else output_fn(output)
        return output.reshape(len(inputs), -1)
    finally:
        handle.remove()


def _perturbed_outputs(model: nn.Module, layer: nn.Linear, samples: torch.Tensor,
                       deltas: torch.Tensor, output_fn) -> torch.Tensor:
    """Outputs (K, n, n_out) with ``deltas[k]`` (n, n_out_layer) added to the layer's output."""

    def run(delta: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        return _output_with(model, layer, lambda module, args, out: out + delta, inputs,
                            output_fn)

    try:
        return vmap(run, in_dims=(0, None))(deltas, samples)
    except RuntimeError:
        k, n = deltas.shape[:2]
        tiled = samples.repeat(k, *([1] * (samples.ndim - 1)))
        return run(deltas.reshape(k * n, -1), tiled).reshape(k, n, -1)


def _positions_block(model, layer, samples, dense, mean, output_fn):
    """Errors of a block for a layer with several rows per sample or calls per forward: a
    forward hook removes ``W_ij`` from every row of every call and shifts ``b_i`` by
    ``W_ij E[a_j]``, i.e. adds ``-W_ij (a_j - E[a_j])`` to unit ``i``."""

    def run(unit: torch.Tensor, column: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        def remove(module, args, out):
            return out - ((args[0] - mean) @ column)[..., None] * unit

        return _output_with(model, layer, remove, inputs, output_fn)

    def errors(rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        units = torch.nn.functional.one_hot(rows, layer.out_features).to(samples.dtype)
        columns = samples.new_zeros(len(rows), layer.in_features)
        columns[torch.arange(len(rows)), cols] = values
        try:
            outputs = vmap(run, in_dims=(0, 0, None))(units, columns, samples)
        except RuntimeError:  # a model vmap cannot run: one weight at a time
            outputs = torch.stack([run(u, c, samples) for u, c in
                                   zip(units, columns, strict=True)])
        return (outputs - dense).square().sum(-1).mean(-1)

    return errors


@dataclass(frozen=True)
class _Chain:
    """``layer -> activation -> next_linear -> tail`` inside an ``nn.Sequential``."""

    activation: nn.Module
    next_linear: nn.Linear
    tail: nn.Sequential


def _chain_after(model: nn.Module, layer: nn.Linear) -> _Chain | None:
    """The fast path's structure after ``layer``, or None when the model is not such an MLP."""
    if not isinstance(model, nn.Sequential):
        return None
    modules = list(model)
    position = next((k for k, m in enumerate(modules) if m is layer), None)
    if position is None or position + 2 >= len(modules):
        return None
    activation, next_linear = modules[position + 1], modules[position + 2]
    elementwise = isinstance(activation, ELEMENTWISE) and not (
        isinstance(activation, nn.PReLU) and activation.weight.numel() != 1)
    if not elementwise or not isinstance(next_linear, nn.Linear):
        return None
    return _Chain(activation, next_linear, nn.Sequential(*modules[position + 3:]))


def _general_block(model, layer, samples, dense, output_fn):
    """Errors of a block via a forward hook that adds each perturbation to the layer's output."""

    def errors(rows: torch.Tensor, signal: torch.Tensor) -> torch.Tensor:
        k, n = signal.shape
        deltas = torch.zeros(k, n, layer.out_features, dtype=signal.dtype, device=signal.device)
        deltas[torch.arange(k), :, rows] = signal
        outputs = _perturbed_outputs(model, layer, samples, deltas, output_fn)
        return (outputs - dense).square().sum(-1).mean(-1)

    return errors


def _chain_block(chain: _Chain, pre: torch.Tensor, next_pre: torch.Tensor, dense, output_fn):
    """Errors of a block by the rank-one update of the next pre-activation (see module doc)."""
    column = effective_weight(chain.next_linear).T  # (n_layer, n_next)
    closed_form = len(chain.tail) == 0 and output_fn is None

    def errors(rows: torch.Tensor, signal: torch.Tensor) -> torch.Tensor:
        unit = pre[:, rows].T  # (K, n)
        change = chain.activation(unit + signal) - chain.activation(unit)  # (K, n)
        if closed_form:
            return column[rows].square().sum(1) * change.square().mean(1)
        perturbed = torch.addcmul(next_pre, change[:, :, None], column[rows][:, None, :])
        output = chain.tail(perturbed.reshape(-1, perturbed.shape[-1]))
        output = output if output_fn is None else output_fn(output)
        output = output.reshape(*signal.shape, -1)
        return (output - dense).square().sum(-1).mean(-1)

    return errors


def brute_force_errors(
    model: nn.Module,
    name: str,
    layer: nn.Linear,
    weight: torch.Tensor,
    mean_input: torch.Tensor,
    samples: torch.Tensor,
    *,
    output_fn: Callable[[object], torch.Tensor] | None = None,
    progress: bool | None = None,
) -> torch.Tensor:
    """``E ||y - y_pruned||^2`` over ``samples`` for removing each weight of ``layer`` alone.

    Returns a tensor shaped like ``weight``; weights already zero score 0.
    """
    with torch.no_grad(), eval_mode(model):
        one_row = layouts(model, {name: layer}, samples, output_fn)[name]
        chain = _chain_after(model, layer) if one_row else None
        taped = {name: layer} if chain is None else {name: layer, "next": chain.next_linear}
        with LayerTape(taped, differentiable=False) as tape:
            dense = forward(model, samples, output_fn)[1]
        mean = mean_input.to(samples.dtype)
        n, centred = len(samples), tape.inputs[name] - mean  # (rows, n_in)
        if not one_row:
            errors_of = _positions_block(model, layer, samples, dense, mean, output_fn)
            width = len(centred) // n * layer.out_features
        else:
            if chain is None:
                block_of = _general_block(model, layer, samples, dense, output_fn)
                width = layer.out_features
            else:
                block_of = _chain_block(chain, tape.outputs[name], tape.outputs["next"], dense,
                                        output_fn)
                width = chain.next_linear.out_features

            def errors_of(rows, cols, values, block_of=block_of):
                return block_of(rows, -(values[:, None] * centred[:, cols].T))  # (K, n)

        flat = torch.nonzero(weight.reshape(-1)).squeeze(1)
        errors = torch.zeros(weight.numel(), dtype=weight.dtype, device=weight.device)
        block = max(1, BLOCK_ELEMENTS // (n * width))
        for start in tqdm(range(0, len(flat), block), desc=f"nonlinear {name}", unit="block",
                          disable=None if progress is None else not progress, leave=False):
            index = flat[start : start + block]
            rows, cols = index // weight.shape[1], index % weight.shape[1]
            errors[index] = errors_of(rows, cols, weight[rows, cols])
    return errors.reshape(weight.shape)


@dataclass(frozen=True, kw_only=True)
class Nonlinear(Method):
    """The paper's brute force: exact ``E||y - y_pruned||^2`` per removed weight with the
    mean-signal shift ``W_ij E[a_j]``, over a subsample of ``samples`` inputs seeded by the run's
    ``seed`` (:func:`brute_force_errors`)."""

    name = "nonlinear"
    compensates = True
    predicts_error = True
    samples: int = 1024
    OPTIONS: ClassVar[dict[str, str]] = {"nonlinear_samples": "samples"}

    def check(self, caller: str) -> None:
        check_positive_int("nonlinear_samples", self.samples, caller=caller)

    def request(self, seed: int) -> StatisticsRequest:
        return StatisticsRequest(samples=self.samples, seed=seed)

    def layer_importance(self, name: str, context: ScoringContext) -> LayerImportance:
        stats, weight = context.statistics, context.weights[name]
        mean_input = stats.mean_input(name)
        score = brute_force_errors(context.model, name, context.layers[name], weight,
                                   mean_input, stats.samples, output_fn=context.output_fn,
                                   progress=context.progress)
        return LayerImportance(score, mean_signal_shift(weight, mean_input))
