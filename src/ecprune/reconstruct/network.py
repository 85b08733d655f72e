"""Refit the pruned layers toward the dense network's **output**, every mask kept:
``objective="network"``.

The layer-wise refit (:mod:`ecprune.reconstruct.refit`) makes each layer reproduce its own dense
pre-activations; the layers after it are pruned too, so that is not what brings the output
closest to the dense one. After it, each pass lowers ``E(theta) = sum_x ||y(x) - y_dense(x)||^2``
over the kept weights and biases of all layers (CHITA, R. Benbaki et al., ICML 2023, and CBS,
X. Yu et al., ICML 2022, also optimise a network-level objective; this is a Gauss-Newton step on
it with ECP's linearisation):

1. one pass: the gradient ``g_i = sum_x J_i^T (y - y_dense) x`` of every row (``J_i = dy/du_i``
   through the pruned downstream layers, ``x = [a, 1]``), ECP's sensitivities
   ``s_i(x) = ||J_i(x)||^2`` and the layers' Gram matrices ``G = sum x x^T``;
2. per row, the Gauss-Newton step of the linearised output error with the row alone moving,
   whose curvature is ``sum_x s_i(x) x x^T`` (ECP's: a row's change ``du`` reaches the output as
   ``s_i du^2``), approximated by ``mean(s_i) G`` (one Gram matrix per layer): on the row's
   support, ``d_i = -(mean(s_i) G_KK + lambda_i I)^-1 g_i``, ``lambda_i`` the refit's damping
   (:func:`ecprune.reconstruct.layerwise.ridge`);
3. one pass of forward-mode products ``v_l(x) = J d_l`` (one per layer): the step ``sum_l
   alpha_l d_l`` with the ``alpha`` that minimises the linearised error exactly (a least-squares
   problem with one unknown per layer), so the linearised error never increases;
4. the true error at that step, halved up to :data:`HALVINGS` times until it is no larger than
   before; if none is, the pass changes nothing and the passes stop.

So the output error on the data never increases. ``objective="loss"`` runs the same passes
on the training loss with the data's labels (:mod:`ecprune.reconstruct.objectives`): the
gradient is the loss's, the sensitivities are taken in the metric of the loss's Hessian in
``y`` (for cross-entropy ``diag(p) - p p^T``: one reverse pass per class), the step lengths
minimise its Gauss-Newton model, and it is the loss that never increases.

Cost per pass: about two gradient passes and one reverse pass per output (the
sensitivities), one forward-mode pass per layer, and one forward pass per trial step; memory
O(n_in^2) per layer and the dense outputs of the data (cached up to
:data:`~ecprune.reconstruct.objectives.CACHE_ELEMENTS` values, else recomputed).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.autograd.forward_ad as fwAD
from torch import nn
from tqdm.auto import tqdm

from .. import distributed
from ..engine.layers import keep_mask, stored_weight
from ..engine.sensitivity import sensitivities
from ..engine.statistics import ACCUMULATE_DTYPE, gram
from ..engine.tape import eval_mode, forward, progress_disabled, stream
from .layerwise import BatchFactory, execution_order, solve_spd
from .objectives import DenseOutputs, LabelLoss

# Trial steps: alpha, alpha / 2, ..., alpha / 2^HALVINGS.
HALVINGS = 6
Objective = DenseOutputs | LabelLoss


def _sum_over_ranks(tensors: list[torch.Tensor]) -> None:
    if distributed.is_distributed():
        for tensor in tensors:
            distributed.all_reduce_sum(tensor)


def gradient_pass(model: nn.Module, layers: dict[str, nn.Linear], batches: BatchFactory,
                  objective: Objective, first: str, *, output_fn: Callable | None = None,
                  progress: bool | None = None) -> dict[str, object]:
    """Step 1: per layer the gradient of the objective's ``f`` with respect to ``[W, b]``
    (sums, float64), the rows' summed sensitivities in its Hessian's metric and rows seen, the
    Gram matrices (not of ``first``), and ``E``, its reported value."""
    grads = {n: torch.zeros(m.out_features, m.in_features + 1, dtype=ACCUMULATE_DTYPE,
                            device=m.weight.device) for n, m in layers.items()}
    sens = {n: torch.zeros(m.out_features, dtype=ACCUMULATE_DTYPE, device=m.weight.device)
            for n, m in layers.items()}
    grams = {n: torch.zeros(m.in_features + 1, m.in_features + 1, dtype=ACCUMULATE_DTYPE,
                            device=m.weight.device) for n, m in layers.items() if n != first}
    names = list(layers)
    totals = torch.zeros(1 + len(names), dtype=ACCUMULATE_DTYPE)  # E, then rows per layer

    def accumulate() -> None:
        for batch, tape, _, output in stream(model, layers, batches(), differentiable=True,
                                             output_fn=output_fn, progress=progress,
                                             desc="network gradient"):
            calls = [(n, a, u) for n in layers for a, u in tape.calls[n]]
            us = [u for _, _, u in calls]
            g_us = torch.autograd.grad(objective.value(output, batch), us, retain_graph=True)
            factor = objective.hessian_factor(output, batch)
            s_us = sensitivities(output, us, directions=factor)
            totals[0] += objective.reported(output.detach(), batch).to(ACCUMULATE_DTYPE).item()
            for (n, a, _), g, s in zip(calls, g_us, s_us, strict=True):
                a = a.reshape(-1, a.shape[-1]).detach()
                extended = torch.cat([a, a.new_ones(len(a), 1)], 1).to(ACCUMULATE_DTYPE)
                grads[n] += g.reshape(-1, g.shape[-1]).to(ACCUMULATE_DTYPE).T @ extended
                sens[n] += s.reshape(-1, s.shape[-1]).sum(0).to(ACCUMULATE_DTYPE)
                totals[1 + names.index(n)] += len(a)
                if n in grams:
                    grams[n] += gram(a)

    with torch.enable_grad():
        distributed.run_on_every_rank(accumulate)
    _detach_weights(layers)
    _sum_over_ranks([*grads.values(), *sens.values(), *grams.values(), totals])
    rows = {n: float(totals[1 + k]) for k, n in enumerate(names)}
    return {"grads": grads, "sens": sens, "grams": grams, "rows": rows, "error": float(totals[0])}


def _detach_weights(layers: dict[str, nn.Linear]) -> None:
    """Recompute masked weights outside the graph that a forward with gradients left them in
    (so that the model can be deep-copied)."""
    with torch.no_grad():
        for layer in layers.values():
            if hasattr(layer, "weight_orig"):
                layer.weight = layer.weight_orig * layer.weight_mask


def directions(layers: dict[str, nn.Linear], sums: dict[str, object],
               grams: dict[str, torch.Tensor], damping: float) -> dict[str, torch.Tensor]:
    """Step 2: the per-row Gauss-Newton steps ``d`` (n_out, n_in + 1), zero off the support."""
    result = {}
    for name, layer in layers.items():
        g, s = sums["grads"][name], sums["sens"][name] / max(sums["rows"][name], 1.0)
        gram_l = grams[name]
        support = torch.cat([keep_mask(layer), keep_mask(layer).new_ones(len(g), 1)], 1)
        step = torch.zeros_like(g)
        for i in range(len(g)):
            index = torch.nonzero(support[i]).squeeze(1)
            curvature = s[i] * gram_l[index][:, index]
            if not curvature.diagonal().any():
                continue  # the row does not reach the output: nothing to fit
            lam = damping * curvature.diagonal().mean()
            eye = torch.eye(len(index), dtype=g.dtype, device=g.device)
            step[i, index] = -solve_spd(curvature + lam * eye, g[i, index, None],
                                        definite=bool(lam > 0))[:, 0]
        result[name] = step
    return result


def _tangent_hook(step: torch.Tensor):
    def hook(module: nn.Linear, args: tuple, out: torch.Tensor) -> torch.Tensor:
        du = args[0].to(step.dtype) @ step[:, :-1].T + step[:, -1]
        return out + fwAD.make_dual(torch.zeros_like(out), du.to(out.dtype))

    return hook


@contextmanager
def _quiet_decompositions() -> Iterator[None]:
    """PyTorch loads its forward-AD decompositions with ``torch.jit.script`` on the first dual
    tensor, which warns that ``torch.jit.script`` is deprecated: nothing a caller can act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch.jit.script` is deprecated",
                                category=DeprecationWarning)
        yield


def step_lengths(model: nn.Module, layers: dict[str, nn.Linear], batches: BatchFactory,
                 objective: Objective, steps: dict[str, torch.Tensor], *,
                 output_fn: Callable | None = None,
                 progress: bool | None = None) -> tuple[torch.Tensor, float]:
    """Step 3: ``alpha`` minimising the objective's Gauss-Newton model along the tangents
    ``v_l = J d_l``, ``sum_x r.v + 1/2 ||F v||^2`` with ``v = sum_l alpha_l v_l`` (for
    ``objective="network"``, ``sum_x ||y - y_dense + v||^2``), and the decrease it predicts."""
    names = list(steps)
    system = torch.zeros(len(names), len(names) + 1, dtype=ACCUMULATE_DTYPE)

    def accumulate() -> None:
        with torch.no_grad(), eval_mode(model):
            for batch in tqdm(batches(), desc="network step lengths", unit="chunk",
                              disable=progress_disabled(progress), leave=False):
                tangents, residual, factor = [], None, None
                for name in names:
                    handle = layers[name].register_forward_hook(_tangent_hook(steps[name]))
                    try:
                        with fwAD.dual_level():
                            _, dual = forward(model, batch.inputs, output_fn)
                            primal, tangent = fwAD.unpack_dual(dual)
                    finally:
                        handle.remove()
                    if residual is None:
                        residual = objective.residual(primal, batch).to(ACCUMULATE_DTYPE)
                        factor = objective.hessian_factor(primal, batch)
                    tangents.append(tangent.to(ACCUMULATE_DTYPE))
                v = torch.stack(tangents)  # (L, B, n_out)
                curved = v if factor is None else torch.einsum(
                    "bmn,lbn->lbm", factor.to(ACCUMULATE_DTYPE), v)
                curved = curved.reshape(len(names), -1)
                system[:, :-1] += (curved @ curved.T).cpu()
                system[:, -1] -= (v.reshape(len(names), -1) @ residual.reshape(-1)).cpu()

    with _quiet_decompositions():
        distributed.run_on_every_rank(accumulate)
    _sum_over_ranks([system])
    normal, rhs = system[:, :-1], system[:, -1]
    alpha = torch.linalg.pinv(normal, hermitian=True) @ rhs
    return alpha, float(rhs @ alpha)


def output_error(model: nn.Module, batches: BatchFactory, objective: Objective, *,
                 output_fn: Callable | None = None) -> float:
    """``E``, the objective's reported value of ``model`` (float64): ``sum_x ||y(x) -
    y_dense(x)||^2`` for ``objective="network"``, the summed loss for ``"loss"``."""
    total = torch.zeros(1, dtype=ACCUMULATE_DTYPE)

    def accumulate() -> None:
        with torch.no_grad(), eval_mode(model):
            for batch in batches():
                _, output = forward(model, batch.inputs, output_fn)
                total[0] += objective.reported(output, batch).to(ACCUMULATE_DTYPE).item()

    distributed.run_on_every_rank(accumulate)
    _sum_over_ranks([total])
    return float(total[0])


def _saved(layers: dict[str, nn.Linear]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {name: (stored_weight(layer).detach().clone(), layer.bias.detach().clone())
            for name, layer in layers.items()}


def _move(layers: dict[str, nn.Linear], saved: dict, steps: dict[str, torch.Tensor],
          scale: float) -> None:
    """Set the layers to ``saved + scale * steps`` on the kept weights and the biases."""
    with torch.no_grad():
        for name, (weight0, bias0) in saved.items():
            layer, step = layers[name], steps[name]
            weight = stored_weight(layer)
            weight.copy_(weight0 + (scale * step[:, :-1] * keep_mask(layer)).to(weight.dtype))
            layer.bias.copy_(bias0 + (scale * step[:, -1]).to(bias0.dtype))
    _detach_weights(layers)


def network_refit(model: nn.Module, reference: nn.Module, layers: dict[str, nn.Linear],
                  batches: BatchFactory, *, passes: int, damping: float,
                  output_fn: Callable | None = None, progress: bool | None = None,
                  grams: dict[str, torch.Tensor] | None = None,
                  labels: bool = False) -> list[float]:
    """Up to ``passes`` passes of the module docstring; returns ``E`` before and after each
    pass that changed the model. ``grams``: the scoring pass's, for the first layer (its inputs
    never change). ``labels``: lower the training loss on the data's targets instead
    (``objective="loss"``, :class:`~ecprune.reconstruct.objectives.LabelLoss`)."""
    missing = [name for name, layer in layers.items() if layer.bias is None]
    if missing:
        raise ValueError(f"objective='network' and 'loss' move the biases, but the Linear layers "
                         f"{missing} have none; pass add_bias=True.")
    first = execution_order(model, layers, batches, output_fn)[0]
    objective = LabelLoss() if labels else DenseOutputs(reference, output_fn)
    history: list[float] = []
    for _ in range(passes):
        sums = gradient_pass(model, layers, batches, objective, first, output_fn=output_fn,
                             progress=progress)
        before = sums["error"]
        history = history or [before]
        grams_now = {**sums["grams"], first: _first_gram(grams, first, model, layers,
                                                          batches, output_fn)}
        steps = directions(layers, sums, grams_now, damping)
        alpha, _ = step_lengths(model, layers, batches, objective, steps, output_fn=output_fn,
                                progress=progress)
        scaled = {name: alpha[k].item() * step for k, (name, step) in enumerate(steps.items())}
        if not _accept(model, layers, batches, objective, scaled, before, output_fn, history):
            break
    return history


def _accept(model, layers, batches, objective, steps, before, output_fn, history) -> bool:
    """Step 4: move by ``steps``, halved until ``E`` is no larger than ``before``; else back."""
    saved = _saved(layers)
    for halving in range(HALVINGS + 1):
        _move(layers, saved, steps, 0.5 ** halving)
        after = output_error(model, batches, objective, output_fn=output_fn)
        if after <= before:
            history.append(after)
            return True
    _move(layers, saved, steps, 0.0)
    return False


def _first_gram(grams, first, model, layers, batches, output_fn) -> torch.Tensor:
    """The first layer's Gram matrix: the scoring pass's when given, else one pass."""
    if grams is not None and first in grams:
        return grams[first]
    total = None
    with torch.no_grad():
        for _, tape, _, _ in stream(model, {first: layers[first]}, batches(),
                                    differentiable=False, output_fn=output_fn):
            part = gram(tape.inputs[first])
            total = part if total is None else total + part
    _sum_over_ranks([total])
    return total
