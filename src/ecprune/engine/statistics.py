"""One streaming pass over the data that accumulates every statistic the criteria need.

For each selected layer with input activations ``a`` (B, n_in) and pre-activations ``u``:

- ``s_i(x) = ||dy/du_i||^2``, exact or a Hutchinson estimate, from reverse passes that carry a
  block of seeds at once (see :mod:`ecprune.engine.sensitivity`), never per-weight gradients;
- ``S = sum s`` (n_out,), ``P = sum s (a - c)^T`` and ``Q = sum s ((a - c)^2)^T`` (n_out, n_in),
  one GEMM ``s^T [a - c, (a - c)^2, 1]`` per layer per chunk. ``c`` is the mean input of the
  first chunk: shifting the data by a constant leaves ``Q - P^2/S`` unchanged but avoids
  catastrophic cancellation;
- ``sum a`` (the mean-signal shift of the baselines), on request ``sum a^2`` (Wanda's input
  norms) and,
  when a loss is given, ``sum dL/dW = sum g_u a^T``;
- on request, the Gram matrix ``sum [a, 1]^T [a, 1]`` ((n_in + 1)^2, the ones column last) of
  the layer-wise reconstructions (:mod:`ecprune.reconstruct.sparsegpt`).

Sums are kept in float64 whatever the model's dtype. Memory is O(|W| + chunk x width).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .. import distributed
from .batching import Batch, split_batches
from .positions import (
    BlockJacobians,
    PerSampleJacobians,
    exact_directions,
    layouts,
    position_sums,
    sample_blocks,
)
from .sensitivity import (
    ChainRun,
    chain_sensitivities,
    find_chain,
    rademacher,
    resolve_probes,
    sensitivities,
)
from .tape import LayerTape, eval_mode, stream
from .visibility import check_visible
from .workspace import ACCUMULATE_DTYPE, STATS_TILE, SumsWorkspace

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# Inputs of the first chunk on which a layer with zero sensitivities is checked for being seen.
VISIBILITY_SAMPLES = 64


@dataclass(frozen=True)
class StatisticsRequest:
    """What one pass must accumulate."""

    sensitivity: bool = False
    input_norms: bool = False
    gram: bool = False
    loss: LossFn | None = None
    samples: int = 0
    seed: int = 0
    estimator: str = "auto"
    probes: int | None = None
    positions: str = "auto"
    products: str = "model"


@dataclass
class LayerStatistics:
    """Float64 sums over the data for one layer (see the module docstring).

    ``rows``: rows of the layer's input seen, over all calls (the number of samples for a
    layer with one row per sample); ``input_sum``, ``input_sq_sum`` and ``gram`` sum over them.
    ``row_sens_sum``: with several rows per sample (:mod:`ecprune.engine.positions`), the rows'
    own sensitivities ``sum_x sum_p |g_p|^2``; None when they are ``sens_sum``.
    """

    input_sum: torch.Tensor
    input_shift: torch.Tensor
    rows: int = 0
    input_sq_sum: torch.Tensor | None = None
    gram: torch.Tensor | None = None
    sens_sum: torch.Tensor | None = None
    sens_act: torch.Tensor | None = None
    sens_act_sq: torch.Tensor | None = None
    loss_grad: torch.Tensor | None = None
    row_sens_sum: torch.Tensor | None = None

    @property
    def row_sensitivity(self) -> torch.Tensor:
        """``sum_x sum_p |dy/du_ip|^2`` (n_out,): what a perturbation of one row costs."""
        return self.sens_sum if self.row_sens_sum is None else self.row_sens_sum


@dataclass
class Statistics:
    """Everything one pass collected: per-layer sums and model-level totals.

    ``probes``: Hutchinson probes per sample behind the sensitivities (None: exact);
    ``engine``: ``"chain"`` or ``"autograd"`` (see :mod:`ecprune.engine.sensitivity`), None when no
    sensitivities were needed.
    """

    layers: dict[str, LayerStatistics]
    count: int = 0
    output_sq_sum: float = 0.0
    samples: torch.Tensor | None = None
    seconds: float = 0.0
    probes: int | None = None
    engine: str | None = None
    sample_keys: torch.Tensor | None = field(default=None, repr=False)

    def mean_input(self, name: str) -> torch.Tensor:
        """``E[a]`` of layer ``name`` over its rows (float64)."""
        layer = self.layers[name]
        return layer.input_sum / layer.rows

    @property
    def mean_output_sq(self) -> float:
        """``E ||y||^2``, the scale for relative output errors."""
        return self.output_sq_sum / self.count


class Accumulator:
    """Float64 running sums for one pass; ``update`` takes one chunk into ``stats``.

    ``run``: the chain forward whose activation slopes the chain engine reuses (None: the
    autograd engine on the taped pre-activations). ``per_sample``: the engine of layers
    with several rows per sample (:mod:`ecprune.engine.positions`), which then gives every
    layer's sensitivity sums.
    """

    def __init__(self, layers: dict[str, nn.Linear], request: StatisticsRequest,
                 run: ChainRun | None = None,
                 per_sample: PerSampleJacobians | None = None):
        self.layers = layers
        self.request = request
        self.run = run
        self.per_sample = per_sample
        self.stats = Statistics(layers={})
        self._workspaces: dict[str, SumsWorkspace] = {}

    def update(self, tape: LayerTape, batch: Batch, raw: object, output: torch.Tensor) -> None:
        stats, request = self.stats, self.request
        names = list(self.layers)
        fast = request.sensitivity and self.per_sample is None
        if fast:
            self._check_one_row(tape, len(batch.inputs))
        loss_grads = self._loss_grads(tape, batch, raw) if request.loss is not None else None
        if fast:
            sens = self._sensitivities([tape.outputs[name] for name in names], output,
                                       batch.start)
        for k, name in enumerate(names):
            a = tape.inputs[name]
            if name not in stats.layers:
                stats.layers[name] = self._new_layer(name, a.mean(0).to(ACCUMULATE_DTYPE))
            layer = stats.layers[name]
            layer.rows += len(a)
            if request.gram:
                layer.gram += gram(a)
            if fast:
                self._workspace(name, a).add(layer, sens[k], a)
            else:  # summed in the model's dtype: a float64 cast of the chunk costs 2 forwards
                layer.input_sum += a.sum(0).to(ACCUMULATE_DTYPE)
                if request.input_norms:
                    layer.input_sq_sum += a.square().sum(0).to(ACCUMULATE_DTYPE)
            if loss_grads is not None:
                layer.loss_grad += loss_grads[name]
        if request.sensitivity and not fast:
            self._add_per_sample(tape, batch, output)
        stats.count += len(batch.inputs)
        stats.output_sq_sum += output.detach().square().sum(dtype=ACCUMULATE_DTYPE).item()
        if request.samples:
            self._keep_samples(batch.inputs, batch.start)

    def _check_one_row(self, tape: LayerTape, batch: int) -> None:
        for name, calls in tape.calls.items():
            if len(calls) != 1 or calls[0][0].shape[0] != batch or calls[0][0].ndim != 2:
                raise ValueError(
                    f"Linear layer {name!r} had one row per sample on the first chunk but not on "
                    f"this one ({len(calls)} call(s), input of shape {tuple(calls[0][0].shape)} "
                    f"for {batch} samples); pass positions='exact'.")

    def _loss_grads(self, tape: LayerTape, batch: Batch, raw: object) -> dict[str, torch.Tensor]:
        """``sum dL/dW = sum_calls g_u^T a`` of every layer (float64), by one reverse pass."""
        loss = self.request.loss(raw, batch.targets) * len(batch.inputs)
        calls = [(name, a, u) for name in self.layers for a, u in tape.calls[name]]
        grads = torch.autograd.grad(loss, [u for _, _, u in calls],
                                    retain_graph=self.request.sensitivity, allow_unused=True)
        sums = {name: 0 for name in self.layers}
        for (name, a, _), grad in zip(calls, grads, strict=True):
            if grad is not None:
                g, a = grad.reshape(-1, grad.shape[-1]), a.reshape(-1, a.shape[-1])
                sums[name] = sums[name] + (g.T @ a).to(ACCUMULATE_DTYPE)
        return sums

    def _add_per_sample(self, tape: LayerTape, batch: Batch, output: torch.Tensor) -> None:
        """Add one chunk's per-sample sensitivity sums (:mod:`ecprune.engine.positions`)."""
        stats, request = self.stats, self.request
        if stats.engine is None:
            stats.engine = "per-sample"
            stats.probes = resolve_probes(request.estimator, request.probes, output.shape[1])
        b, n = output.shape
        if stats.probes is None:
            directions = exact_directions(b, n, dtype=output.dtype, device=output.device)
        else:
            generator = torch.Generator(device=output.device)
            generator.manual_seed(int(sample_keys(request.seed, batch.start, 1)[0] * 2**53))
            directions = rademacher((b, stats.probes, n), stats.probes, generator,
                                    dtype=output.dtype, device=output.device)
        independent = request.positions == "independent"
        with torch.set_grad_enabled(self.per_sample.needs_graph):
            shifts = {name: layer.input_shift for name, layer in stats.layers.items()}
            for tile in self.per_sample.tiles(batch.inputs, output, tape, directions, shifts):
                for name, rows in tile.items():
                    layer = stats.layers[name]
                    sums = position_sums(rows, independent=independent,
                                         products=request.products)
                    for total, part in zip((layer.sens_sum, layer.sens_act, layer.sens_act_sq,
                                            layer.row_sens_sum), sums, strict=True):
                        total += part.to(ACCUMULATE_DTYPE)

    def _workspace(self, name: str, a: torch.Tensor) -> SumsWorkspace:
        workspace = self._workspaces.get(name)
        if workspace is None or len(workspace.right) < min(len(a), STATS_TILE):
            workspace = SumsWorkspace(a, self.layers[name].out_features)
            self._workspaces[name] = workspace
        return workspace

    def _sensitivities(self, us: list[torch.Tensor], output: torch.Tensor,
                       start: int) -> list[torch.Tensor]:
        stats, request = self.stats, self.request
        if stats.engine is None:  # first chunk: the output size is known now
            stats.engine = "autograd" if self.run is None else "chain"
            stats.probes = resolve_probes(request.estimator, request.probes, output.shape[1])
        generator = None
        if stats.probes is not None:  # probes from the seed and the chunk's position in the data
            generator = torch.Generator(device=output.device)
            generator.manual_seed(int(sample_keys(request.seed, start, 1)[0] * 2**53))
        options = {"probes": stats.probes, "generator": generator}
        if self.run is None:
            return sensitivities(output, us, **options)
        with torch.no_grad():
            return chain_sensitivities(self.run, list(self.layers.values()), output, **options)

    def _new_layer(self, name: str, shift: torch.Tensor) -> LayerStatistics:
        n_out, n_in = self.layers[name].out_features, shift.shape[0]

        def zeros(*shape: int) -> torch.Tensor:
            return torch.zeros(*shape, dtype=ACCUMULATE_DTYPE, device=shift.device)

        sens = self.request.sensitivity
        return LayerStatistics(
            input_sum=zeros(n_in),
            input_shift=shift,
            input_sq_sum=zeros(n_in) if self.request.input_norms else None,
            gram=zeros(n_in + 1, n_in + 1) if self.request.gram else None,
            sens_sum=zeros(n_out) if sens else None,
            sens_act=zeros(n_out, n_in) if sens else None,
            sens_act_sq=zeros(n_out, n_in) if sens else None,
            loss_grad=zeros(n_out, n_in) if self.request.loss is not None else None,
            row_sens_sum=zeros(n_out) if sens and self.per_sample is not None else None,
        )

    def _keep_samples(self, inputs: torch.Tensor, start: int) -> None:
        """Uniform subsample without replacement: keep the inputs with the smallest keys, where
        a sample's key depends only on the seed and its position in the data (so sharding the
        data across ranks keeps the same subsample)."""
        keys = sample_keys(self.request.seed, start, len(inputs)).to(inputs.device)
        stats = self.stats
        if stats.samples is not None:
            inputs = torch.cat([stats.samples, inputs])
            keys = torch.cat([stats.sample_keys, keys])
        order = torch.argsort(keys, stable=True)[: self.request.samples]
        stats.samples, stats.sample_keys = inputs[order].detach(), keys[order]

    def finish(self) -> Statistics:
        """The totals, summed over ranks when distributed; layers that saw no data are zero."""
        stats = self.stats
        for name, layer in self.layers.items():
            if name not in stats.layers:
                shift = torch.zeros(layer.in_features, dtype=ACCUMULATE_DTYPE,
                                    device=layer.weight.device)
                stats.layers[name] = self._new_layer(name, shift)
        if distributed.is_distributed():
            distributed.all_reduce_statistics(stats, self.request.samples)
        stats.sample_keys = None
        return stats


def sample_keys(seed: int, start: int, count: int) -> torch.Tensor:
    """Uniform [0, 1) keys for the samples at positions ``start .. start + count - 1``.

    SplitMix64 of (seed, position): a fixed function of the position, not of the order in
    which samples arrive.
    """
    z = np.arange(start, start + count, dtype=np.uint64)
    z += np.full(1, seed, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    z ^= z >> np.uint64(30)
    z *= np.uint64(0xBF58476D1CE4E5B9)
    z ^= z >> np.uint64(27)
    z *= np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    return torch.from_numpy((z >> np.uint64(11)).astype(np.float64) / 2.0**53)


def with_ones(a: torch.Tensor) -> torch.Tensor:
    """``[a, 1]`` in float64: the layer input with the bias's ones column appended last."""
    a = a.to(ACCUMULATE_DTYPE)
    return torch.cat([a, a.new_ones(len(a), 1)], 1)


def gram(a: torch.Tensor) -> torch.Tensor:
    """``[a, 1]^T [a, 1]`` of one chunk, (n_in + 1, n_in + 1) in float64."""
    extended = with_ones(a)
    return extended.T @ extended


def collect_statistics(
    model: nn.Module,
    layers: dict[str, nn.Linear],
    batches: Iterable[Batch],
    request: StatisticsRequest,
    *,
    output_fn: Callable[[object], torch.Tensor] | None = None,
    progress: bool | None = None,
) -> Statistics:
    """Stream ``batches`` through ``model`` once (in eval mode) and return the sums.

    The sensitivities take the one-row fast path when every layer has one row per sample
    (:func:`~ecprune.engine.positions.layouts`), else the per-sample engine of
    :mod:`ecprune.engine.positions` for all of them; ``request.positions="exact"`` or
    ``"independent"`` asks for that engine (exact, or rows treated as samples) anyway.
    """
    start = time.perf_counter()

    def run() -> Accumulator:
        chunks = iter(batches)
        first = next(chunks, None)
        if first is not None:
            chunks = itertools.chain([first], chunks)
        per_sample = _per_sample_engine(model, layers, first, request, output_fn)
        if isinstance(per_sample, BlockJacobians):
            chunks = split_batches(chunks, per_sample.samples_per_pass())
        plain = per_sample is None and request.sensitivity and output_fn is None
        chain = find_chain(model, layers) if plain and request.loss is None else None
        chain_run = None if chain is None else ChainRun(chain)
        accumulator = Accumulator(layers, request, chain_run, per_sample)
        needs_graph = request.loss is not None or (request.sensitivity and chain_run is None and (
            per_sample is None or per_sample.needs_graph))
        # One reverse pass per output direction: activations' derivatives are evaluated once.
        once = per_sample is not None and per_sample.needs_graph and request.loss is None
        for batch, tape, raw, output in stream(model, layers, chunks,
                                               differentiable=needs_graph,
                                               output_fn=output_fn, progress=progress,
                                               runner=chain_run, derivatives_once=once):
            accumulator.update(tape, batch, raw, output)
        if request.sensitivity and first is not None:
            blind = [name for name, layer in accumulator.stats.layers.items()
                     if not layer.row_sensitivity.any()]
            with eval_mode(model):
                check_visible(model, layers, blind, first.inputs[:VISIBILITY_SAMPLES], output_fn)
        return accumulator

    stats = distributed.run_on_every_rank(run).finish()
    if stats.count == 0:
        raise ValueError("The 'data' parameter holds no samples; expected at least one input.")
    reads_output = request.sensitivity or request.loss is not None or request.samples
    if reads_output and not math.isfinite(stats.output_sq_sum):
        raise ValueError("The model's output is NaN or infinite on the data, so no output error "
                         "can be measured; check the model and the data (e.g. its scale).")
    stats.seconds = time.perf_counter() - start
    return stats


def _per_sample_engine(model: nn.Module, layers: dict[str, nn.Linear], first: Batch | None,
                       request: StatisticsRequest, output_fn: Callable | None):
    """The per-sample engine when the sensitivities need it (see :func:`collect_statistics`):
    batched reverse passes when every sample's rows are a block of the batch's rows, else
    ``torch.func.vmap`` over the samples (rows shared by all samples, other layouts)."""
    if not request.sensitivity or first is None:
        return None
    with eval_mode(model):
        try:
            one_row = all(layouts(model, layers, first.inputs, output_fn).values())
        except ValueError:
            return None  # the model fails on the data: the pass itself says how, on the chunk
        if request.positions == "auto" and one_row:
            return None
        blocks = sample_blocks(model, layers, first.inputs, output_fn)
        if blocks is not None:
            return BlockJacobians(layers, blocks)
        return PerSampleJacobians(model, layers, first.inputs, output_fn)
