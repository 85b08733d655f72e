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

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .. import distributed
from .batching import Batch
from .sensitivity import ChainRun, chain_sensitivities, find_chain, resolve_probes, sensitivities
from .tape import LayerTape, stream

ACCUMULATE_DTYPE = torch.float64
# Samples per tile of the statistics GEMM: keeps its operands cache-sized.
STATS_TILE = 512

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


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


@dataclass
class LayerStatistics:
    """Float64 sums over the data for one layer (see the module docstring)."""

    input_sum: torch.Tensor
    input_shift: torch.Tensor
    input_sq_sum: torch.Tensor | None = None
    gram: torch.Tensor | None = None
    sens_sum: torch.Tensor | None = None
    sens_act: torch.Tensor | None = None
    sens_act_sq: torch.Tensor | None = None
    loss_grad: torch.Tensor | None = None


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
        """``E[a]`` of layer ``name`` (float64)."""
        return self.layers[name].input_sum / self.count

    @property
    def mean_output_sq(self) -> float:
        """``E ||y||^2``, the scale for relative output errors."""
        return self.output_sq_sum / self.count


class _SumsWorkspace:
    """Buffers, reused across chunks, for one layer's statistics GEMM on tiles of at most
    ``STATS_TILE`` samples (cache-sized; fresh multi-MB buffers would page-fault each chunk).

    ``right = [a - c, (a - c)^2, 1]`` (tile, 2 n_in + 1) and ``left = [s, 1]`` (tile, n_out + 1):
    ``left^T right``, summed over the tiles of a chunk, holds ``P``, ``Q`` and ``S`` in its
    first ``n_out`` rows and ``sum (a - c)``, ``sum (a - c)^2`` in its last.
    """

    def __init__(self, a: torch.Tensor, n_out: int):
        tile, n_in = min(len(a), STATS_TILE), a.shape[1]
        self.right = a.new_ones(tile, 2 * n_in + 1)
        self.left = a.new_ones(tile, n_out + 1)
        self.sums = a.new_empty(n_out + 1, 2 * n_in + 1)

    def add(self, layer: LayerStatistics, s: torch.Tensor, a: torch.Tensor) -> None:
        """Add one chunk's ``S``, ``P``, ``Q``, ``sum a`` (and ``sum a^2`` if kept) to ``layer``."""
        n_in, shift, sums = a.shape[1], layer.input_shift.to(a.dtype), self.sums.zero_()
        for start in range(0, len(a), len(self.right)):
            rows = a[start : start + len(self.right)]
            right, left = self.right[: len(rows)], self.left[: len(rows)]
            torch.sub(rows, shift, out=right[:, :n_in])
            torch.square(right[:, :n_in], out=right[:, n_in : 2 * n_in])
            left[:, :-1] = s[start : start + len(rows)]
            torch.addmm(sums, left.T, right, out=sums)  # (not addmm_: flop counters skip it)
        sums = sums.to(ACCUMULATE_DTYPE)  # (n_out + 1, 2 n_in + 1)
        layer.sens_act += sums[:-1, :n_in]
        layer.sens_act_sq += sums[:-1, n_in : 2 * n_in]
        layer.sens_sum += sums[:-1, -1]
        centred_sum, shift = sums[-1, :n_in], layer.input_shift
        layer.input_sum += centred_sum + len(a) * shift
        if layer.input_sq_sum is not None:
            layer.input_sq_sum += (sums[-1, n_in : 2 * n_in]
                                   + shift * (2 * centred_sum + len(a) * shift))


class Accumulator:
    """Float64 running sums for one pass; ``update`` takes one chunk into ``stats``.

    ``run``: the chain forward whose activation slopes the chain engine reuses (None: the
    autograd engine on the taped pre-activations).
    """

    def __init__(self, layers: dict[str, nn.Linear], request: StatisticsRequest,
                 run: ChainRun | None = None):
        self.layers = layers
        self.request = request
        self.run = run
        self.stats = Statistics(layers={})
        self._workspaces: dict[str, _SumsWorkspace] = {}

    def update(self, tape: LayerTape, batch: Batch, raw: object, output: torch.Tensor) -> None:
        stats, request = self.stats, self.request
        names = list(self.layers)
        us = [tape.outputs[name] for name in names]
        if request.loss is not None:
            loss = request.loss(raw, batch.targets) * len(batch.inputs)
            loss_grads = torch.autograd.grad(loss, us, retain_graph=request.sensitivity,
                                             allow_unused=True)
        if request.sensitivity:
            sens = self._sensitivities(us, output, batch.start)
        for k, name in enumerate(names):
            a = tape.inputs[name]
            if name not in stats.layers:
                stats.layers[name] = self._new_layer(name, a.mean(0).to(ACCUMULATE_DTYPE))
            layer = stats.layers[name]
            if request.gram:
                layer.gram += gram(a)
            if request.sensitivity:
                self._workspace(name, a).add(layer, sens[k], a)
            else:  # summed in the model's dtype: a float64 cast of the chunk costs 2 forwards
                layer.input_sum += a.sum(0).to(ACCUMULATE_DTYPE)
                if request.input_norms:
                    layer.input_sq_sum += a.square().sum(0).to(ACCUMULATE_DTYPE)
            if request.loss is not None and loss_grads[k] is not None:
                layer.loss_grad += (loss_grads[k].T @ a).to(ACCUMULATE_DTYPE)
        stats.count += len(batch.inputs)
        stats.output_sq_sum += output.detach().square().sum(dtype=ACCUMULATE_DTYPE).item()
        if request.samples:
            self._keep_samples(batch.inputs, batch.start)

    def _workspace(self, name: str, a: torch.Tensor) -> _SumsWorkspace:
        workspace = self._workspaces.get(name)
        if workspace is None or len(workspace.right) < min(len(a), STATS_TILE):
            workspace = _SumsWorkspace(a, self.layers[name].out_features)
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
    """Stream ``batches`` through ``model`` once (in eval mode) and return the sums."""
    start = time.perf_counter()
    chain = None
    if request.sensitivity and request.loss is None and output_fn is None:
        chain = find_chain(model, layers)
    chain_run = None if chain is None else ChainRun(chain)
    accumulator = Accumulator(layers, request, chain_run)
    needs_graph = chain_run is None and (request.sensitivity or request.loss is not None)

    def run() -> None:
        for batch, tape, raw, output in stream(model, layers, batches,
                                               differentiable=needs_graph,
                                               output_fn=output_fn, progress=progress,
                                               runner=chain_run):
            accumulator.update(tape, batch, raw, output)

    distributed.run_on_every_rank(run)
    stats = accumulator.finish()
    if stats.count == 0:
        raise ValueError("The 'data' parameter holds no samples; expected at least one input.")
    stats.seconds = time.perf_counter() - start
    return stats
