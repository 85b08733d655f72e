"""One-shot weight reconstruction after selection: the ``"ecp-refit"`` method.

ECP moves one number per neuron (its bias) to make up for the weights it removes. Once the
mask is chosen (ECP's lowest scores in each layer, the per-layer counts from
:mod:`ecprune.reconstruct.allocation`), every row's kept weights can move too. Layer by layer
from input to output, row ``i`` of layer ``l`` (kept columns ``K_i`` plus the bias's ones column)
is refit by

    w_i = argmin_w  sum_x  r_i(x) ([a(x), 1]_K w - u_i(x))^2  +  lambda_i ||w - w0_i||^2,

where ``a`` are the layer's inputs in the network whose upstream layers are already pruned and
refit, ``u_i`` the **dense** network's pre-activation (so the fit also undoes upstream error),
``w0_i`` the row after ECP's bias shift and ``lambda_i = damping * mean(diag G_i)`` a ridge
toward it for ill-conditioned rows (:func:`ecprune.reconstruct.layerwise.ridge`). The weights
``r_i(x)`` are 1 (``refit_weighting="plain"``) or ECP's output sensitivity
``s_i(x) = ||dy/du_i||^2`` on the current network (``"sensitivity"``), which fits what reaches
the output.

Statistics are streamed: one pass per layer. Plain: ``G = sum [a,1]^T [a,1]`` and
``C = sum [a,1]^T u`` over the columns some row keeps, memory O(n_in^2 + n_in n_out), every
row's system sliced from them. Sensitivity-weighted: one Gram matrix per row on its own support,
memory O(sum_i |K_i|^2), and one batched reverse pass per output and chunk.

``"plain"`` is the default: the weighted fit changes little for several times the time, and
refitting after each of ``steps=3`` helps more at high sparsity (measurements in
docs/beyond.md).

The first layer to run sees the data whatever is pruned: given the scoring pass's Gram matrix
(``grams``), its plain fit reads no data, the dense targets being ``[a, 1] [W, b]^T``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .. import distributed
from ..engine.layers import effective_weight, keep_mask
from ..engine.sensitivity import sensitivities
from ..engine.statistics import ACCUMULATE_DTYPE, with_ones
from ..engine.tape import LayerTape, eval_mode, forward, stream
from .layerwise import (
    BatchFactory,
    augmented_weight,
    execution_order,
    ridge,
    solve_spd,
    write_layer,
)

REFIT_WEIGHTINGS = ("plain", "sensitivity")


class RowSystems:
    """Normal equations ``G_i w = c_i`` of every row's weighted least squares, by chunks.

    ``usable[i, j]``: row ``i`` may use column ``j`` of ``[a, 1]``; ``supports[i]`` lists them.
    The plain Gram matrix covers only the columns some row uses (fewer at high sparsity).
    """

    def __init__(self, usable: torch.Tensor, *, weighted: bool):
        self.weighted = weighted
        self.supports = [torch.nonzero(row).squeeze(1) for row in usable]
        used = usable.any(0)
        self.active = torch.nonzero(used).squeeze(1)
        position = used.cumsum(0) - 1
        self._local = [position[support] for support in self.supports]
        zeros = lambda *shape: torch.zeros(*shape, dtype=ACCUMULATE_DTYPE, device=usable.device)  # noqa: E731
        if weighted:
            self.grams = [zeros(len(k), len(k)) for k in self.supports]
            self.cross = [zeros(len(k)) for k in self.supports]
        else:
            self.gram = zeros(len(self.active), len(self.active))
            self.cross_all = zeros(len(self.active), len(self.supports))

    def update(self, extended: torch.Tensor, target: torch.Tensor,
               weights: torch.Tensor | None) -> None:
        """Add one chunk: ``extended`` (B, n_cols), ``target`` and ``weights`` (B, n_out)."""
        if not self.weighted:
            extended = extended[:, self.active]
            self.gram += extended.T @ extended
            self.cross_all += extended.T @ target
            return
        for i, support in enumerate(self.supports):
            columns = extended[:, support]  # (B, |K_i|)
            scaled = columns * weights[:, i, None]
            self.grams[i] += scaled.T @ columns
            self.cross[i] += scaled.T @ target[:, i]

    def update_from_gram(self, gram: torch.Tensor, target_rows: torch.Tensor) -> None:
        """Add a whole pass at once when the targets are linear in the inputs,
        ``u = [a, 1] target_rows^T``: from ``gram = sum [a, 1]^T [a, 1]``, the sums are
        ``gram`` on the active columns and ``gram target_rows^T`` (plain fit only)."""
        rows = gram[self.active]
        self.gram += rows[:, self.active]
        self.cross_all += rows @ target_rows.T

    def all_reduce(self) -> None:
        """Sum the systems over ranks (under ``torch.distributed``)."""
        tensors = [*self.grams, *self.cross] if self.weighted else [self.gram, self.cross_all]
        flat = distributed.all_reduce_sum(torch.cat([t.reshape(-1) for t in tensors]))
        for tensor in tensors:
            tensor.copy_(flat[: tensor.numel()].reshape(tensor.shape))
            flat = flat[tensor.numel() :]

    def system(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(G_i, c_i)`` of row ``i`` on its support."""
        if self.weighted:
            return self.grams[i], self.cross[i]
        local = self._local[i]
        return self.gram[local][:, local], self.cross_all[local, i]


def solve_rows(systems: RowSystems, start: torch.Tensor, damping: float) -> torch.Tensor:
    """Refit every row; ``start`` is ``[W, b]`` (n_out, n_cols), returned refit (float64).

    A row whose Gram matrix is zero (its inputs and weights r_i(x) vanish) keeps its start.
    """
    result = start.clone()
    for i, support in enumerate(systems.supports):
        gram, cross = systems.system(i)
        if not gram.diagonal().any():
            continue  # the row never matters (e.g. s_i = 0 everywhere): any row fits, keep it
        lam = ridge(gram, damping)
        eye = torch.eye(len(support), dtype=gram.dtype, device=gram.device)
        rhs = cross + lam * start[i, support]
        result[i, support] = solve_spd(gram + lam * eye, rhs[:, None], definite=damping > 0)[:, 0]
    return result


def dense_preactivations(reference: nn.Module, name: str, inputs: torch.Tensor,
                          output_fn: Callable | None) -> torch.Tensor:
    """Pre-activations of layer ``name`` of the dense ``reference`` on ``inputs`` (float64)."""
    layer = reference.get_submodule(name)
    with torch.no_grad(), LayerTape({name: layer}, differentiable=False) as tape:
        forward(reference, inputs, output_fn)
    return tape.outputs[name].to(ACCUMULATE_DTYPE)


def refit_layer(model: nn.Module, reference: nn.Module, name: str, layer: nn.Linear,
                batches: BatchFactory, *, weighting: str, damping: float,
                output_fn: Callable | None = None, progress: bool | None = None,
                gram: torch.Tensor | None = None) -> None:
    """Refit the kept weights and the bias of one (already masked) layer in place.

    ``gram``: ``sum [a, 1]^T [a, 1]`` of the layer's inputs when they are the same in ``model``
    and ``reference`` (no pruned layer upstream); the plain fit then reads no data, its targets
    being the reference layer's ``[a, 1] [W, b]^T``.
    """
    keep = keep_mask(layer)
    has_bias = layer.bias is not None
    weighted = weighting == "sensitivity"
    usable = torch.cat([keep, keep.new_full((len(keep), 1), has_bias)], 1)
    systems = RowSystems(usable, weighted=weighted)
    fill_systems(systems, model, reference, name, layer, batches, output_fn=output_fn,
                 progress=progress, gram=None if weighted else gram)
    _solve_and_write(name, layer, systems, keep, damping)


def fill_systems(systems: RowSystems, model: nn.Module, reference: nn.Module, name: str,
                 layer: nn.Linear, batches: BatchFactory, *, output_fn: Callable | None = None,
                 progress: bool | None = None, gram: torch.Tensor | None = None) -> None:
    """Sum ``systems`` toward the dense ``reference``'s pre-activations of layer ``name``: from
    ``gram`` (plain systems of a layer whose inputs pruning cannot change) with no pass, else
    one streamed pass (summed over ranks), weighted by ``s_i(x)`` for weighted systems."""
    if gram is not None:
        systems.update_from_gram(gram, _rows(reference.get_submodule(name)))
        return

    def accumulate() -> None:
        with eval_mode(reference):
            for batch, tape, _, output in stream(model, {name: layer}, batches(),
                                                 differentiable=systems.weighted,
                                                 output_fn=output_fn, progress=progress,
                                                 desc=f"refit {name}"):
                target = dense_preactivations(reference, name, batch.inputs, output_fn)
                weights = None
                if systems.weighted:
                    _check_one_row(name, tape, len(batch.inputs))
                    weights = sensitivities(output, [tape.outputs[name]])[0]
                    weights = weights.to(ACCUMULATE_DTYPE)
                systems.update(with_ones(tape.inputs[name]), target, weights)

    distributed.run_on_every_rank(accumulate)
    if distributed.is_distributed():
        systems.all_reduce()


def _check_one_row(name: str, tape: LayerTape, batch: int) -> None:
    calls = tape.calls[name]
    if len(calls) != 1 or calls[0][0].ndim != 2 or len(calls[0][0]) != batch:
        raise ValueError(
            f"refit_weighting='sensitivity' weights each row by its sample's s_i(x), but Linear "
            f"layer {name!r} has several rows per sample ({len(calls)} call(s), input of shape "
            f"{tuple(calls[0][0].shape)} for {batch} samples). Use refit_weighting='plain'.")


def _solve_and_write(name: str, layer: nn.Linear, systems: RowSystems, keep: torch.Tensor,
                     damping: float) -> None:
    refit = solve_rows(systems, _rows(layer), damping)
    write_layer(name, layer, refit[:, :-1], refit[:, -1] if layer.bias is not None else None,
                keep)


def _rows(layer: nn.Linear) -> torch.Tensor:
    """``[W, b]`` of ``layer`` in float64; a zero bias column for a layer without one (the
    ones column no row then uses)."""
    weight = effective_weight(layer)
    bias = layer.bias if layer.bias is not None else weight.new_zeros(len(weight))
    return augmented_weight(weight, bias)


def refit_layers(model: nn.Module, reference: nn.Module, layers: dict[str, nn.Linear],
                 batches: BatchFactory, *, weighting: str = "plain", damping: float = 0.01,
                 output_fn: Callable | None = None, progress: bool | None = None,
                 grams: dict[str, torch.Tensor] | None = None) -> None:
    """Refit every layer of ``layers``, from input to output, toward the dense ``reference``.

    ``grams``: the Gram matrices of a pass over the same data (:attr:`ecprune.Importances.
    grams`); the first layer to run, whose inputs no pruning upstream can change, is refit
    from its Gram matrix without a pass of its own (plain fit).
    """
    for k, name in enumerate(execution_order(model, layers, batches, output_fn)):
        gram = grams.get(name) if grams is not None and k == 0 else None
        refit_layer(model, reference, name, layers[name], batches, weighting=weighting,
                    damping=damping, output_fn=output_fn, progress=progress, gram=gram)
