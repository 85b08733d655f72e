"""The data pass of the joint ECP unit score: second moments of the output Jacobian.

For a group whose units feed consumers ``c`` with pre-activations ``v_c = W_c a_c + b_c``, let
``v`` stack them (N rows) and ``J(x) = dy/dv`` (n_y x N). Removing unit ``j`` changes ``v`` by
``-g_j(x)`` with ``g_j = sum_c W~_c[:, p_c(j)] a_c,p_c(j)`` (``W~``: the unit's own row zeroed,
:func:`ecprune.structured.groups.consumer_weight`), and a shift ``d`` of the consumers' biases
adds ``d``. To first order the output changes by ``J (d - g_j)``, so the best shift and the
error it leaves are

    d*_j = E[J^T J]^+ E[J^T J g_j],     e_j = E||J g_j||^2 - E[J^T J g_j]^T d*_j.

One pass accumulates ``M = sum J^T J`` (N, N), ``B = sum J^T (J g)`` (N, size) and
``c = sum ||J g||^2`` (size,): three GEMMs per chunk with ``J`` as a (seeds x samples, N)
matrix. ``J`` comes from one reverse pass per output (or Hutchinson probes, which keep all three
sums unbiased). The inputs are centred on the first chunk's mean ``m`` (the error does not
change, the shift gains ``W~ m``), against cancellation. The same pass sums ``s_i = ||J_i||^2``
and, on request, each consumer's Gram matrix ``sum [a, 1]^T [a, 1]``. Sums are float64.
Memory: ``N^2 + N size`` per group.

**Rows per sample.** A consumer called once per forward on ``(batch, tokens, features)`` (or
any input whose rows form one block per sample, :func:`ecprune.engine.positions.sample_blocks`)
has rows ``v_p = W a_p + b`` per sample; the shift ``d`` is the same for every row, so the
output changes by ``sum_p J_p (d - g_jp)`` and the sums above take ``J = sum_p J_p`` and
``J g_j = sum_p J_p g_jp`` per sample. The cotangents ``J_p`` come from one reverse pass per
seed through the chunk's forward (:class:`ecprune.engine.positions.BlockJacobians`, seeds
drawn per sample); with one row per sample this is the pass above. ``s_i`` is then the rows'
own ``sum_p ||J_pi||^2`` and the Gram matrices sum over every row.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from ..engine.batching import Batch, split_batches
from ..engine.positions import BlockJacobians, exact_directions, sample_blocks
from ..engine.sensitivity import rademacher, resolve_probes, seed_products
from ..engine.statistics import ACCUMULATE_DTYPE, gram, sample_keys
from ..engine.tape import LayerTape, eval_mode, forward, stream
from .groups import UnitGroup, consumer_weight

# Samples per tile of the moment GEMMs (bounds the float64 copies of a chunk's Jacobian).
TILE = 256
# Inputs of the first chunk that decide whether the consumers have one row per sample.
EXAMPLE_SAMPLES = 64


def jacobians(output: torch.Tensor, pre_activations: list[torch.Tensor], *,
              probes: int | None = None,
              generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """``v_k^T dy/du`` for every seed ``v_k``: (seeds, B, n) per tensor of ``pre_activations``.

    Seeds are the unit vectors of the n_y outputs (``probes=None``) or ``probes`` Rademacher
    vectors scaled by ``1/sqrt(probes)``, so that ``sum_k`` of the products estimates
    ``J^T J`` without bias.
    """
    found: list[list[torch.Tensor]] = [[] for _ in pre_activations]
    for grads in seed_products(output, pre_activations, probes=probes, generator=generator):
        for bucket, grad in zip(found, grads, strict=True):
            bucket.append(grad)
    return [torch.cat(bucket) for bucket in found]


@dataclass
class JointSums:
    """One group's sums (module docstring): ``rows`` maps each consumer to its rows of the
    stacked ``v``; ``centre`` holds the input shift ``m`` of each consumer slot."""

    rows: dict[str, slice]
    m: torch.Tensor
    b: torch.Tensor
    c: torch.Tensor
    centre: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class UnitStatistics:
    """Everything one pass collected: per group :class:`JointSums` (``joint``, empty when not
    requested), per consumer ``sens_sum`` (sum of ``s_i``), ``grams`` and ``rows`` (input rows
    seen: ``count`` with one row per sample); ``count`` samples, ``output_sq_sum`` = sum of
    ``||y||^2``, ``probes`` (None: exact Jacobians)."""

    joint: dict[str, JointSums]
    sens_sum: dict[str, torch.Tensor]
    grams: dict[str, torch.Tensor]
    rows: dict[str, int] = field(default_factory=dict)
    count: int = 0
    output_sq_sum: float = 0.0
    probes: int | None = None


def _zeros(*shape: int, device: torch.device) -> torch.Tensor:
    return torch.zeros(*shape, dtype=ACCUMULATE_DTYPE, device=device)


class _Accumulator:
    def __init__(self, groups: dict[str, UnitGroup], layers: dict[str, nn.Linear], *,
                 joint: bool, grams: bool):
        self.groups, self.layers = groups, layers
        self.want_joint, self.want_grams = joint, grams
        self.stats = UnitStatistics(joint={}, sens_sum={}, grams={})
        self.weights = {}  # (group, consumer) -> W~ in float64
        for name, group in groups.items():
            for consumer in group.consumers:
                weight = layers[consumer.module].weight.detach().to(ACCUMULATE_DTYPE)
                self.weights[name, consumer.module] = consumer_weight(group, consumer, weight)

    def _start(self, blocks: dict[str, torch.Tensor], device: torch.device) -> None:
        stats = self.stats
        for name, layer in self.layers.items():
            stats.sens_sum[name] = _zeros(layer.out_features, device=device)
            stats.rows[name] = 0
            if self.want_grams:
                stats.grams[name] = _zeros(layer.in_features + 1, layer.in_features + 1,
                                           device=device)
        if not self.want_joint:
            return
        for name, group in self.groups.items():
            rows, offset = {}, 0
            for consumer in group.consumers:
                n = self.layers[consumer.module].out_features
                rows[consumer.module] = slice(offset, offset + n)
                offset += n
            centre = {c.module: blocks[c.module][..., c.positions].to(ACCUMULATE_DTYPE)
                      .reshape(-1, len(c.positions)).mean(0) for c in group.consumers}
            stats.joint[name] = JointSums(rows=rows, m=_zeros(offset, offset, device=device),
                                          b=_zeros(offset, group.size, device=device),
                                          c=_zeros(group.size, device=device), centre=centre)

    def update(self, inputs: dict[str, torch.Tensor], blocks: dict[str, torch.Tensor],
               tiles: Iterable[dict[str, torch.Tensor]], output: torch.Tensor) -> None:
        """Add one chunk: ``inputs`` every row of each consumer (rows, n_in), ``blocks`` the
        same per sample (B, R, n_in), ``tiles`` the cotangents (seeds, B, R, n_out) of a few
        seeds at a time (the sums add up over seeds)."""
        if not self.stats.sens_sum:
            self._start(blocks, output.device)
        stats = self.stats
        for name in self.layers:
            stats.rows[name] += len(inputs[name])
            if self.want_grams:
                stats.grams[name] += gram(inputs[name])
        step = max(1, TILE // max(block.shape[1] for block in blocks.values()))
        for jac in tiles:
            for name in self.layers:
                stats.sens_sum[name] += jac[name].square().sum((0, 1, 2)).to(ACCUMULATE_DTYPE)
            if not self.want_joint:
                continue
            for first in range(0, len(output), step):
                tile = slice(first, first + step)
                for name, group in self.groups.items():
                    self._add_joint(stats.joint[name], group, name,
                                    {k: v[tile] for k, v in blocks.items()},
                                    {k: v[:, tile] for k, v in jac.items()})
        stats.count += len(output)
        stats.output_sq_sum += output.detach().square().sum(dtype=ACCUMULATE_DTYPE).item()

    def _add_joint(self, sums: JointSums, group: UnitGroup, name: str,
                   blocks: dict[str, torch.Tensor], jac: dict[str, torch.Tensor]) -> None:
        seeds, batch = next(iter(jac.values())).shape[:2]
        parts = [jac[c.module].to(ACCUMULATE_DTYPE) for c in group.consumers]  # (S, B, R, n)
        stacked = torch.cat([part.sum(2) for part in parts], 2)  # sum_p J_p
        stacked = stacked.reshape(seeds * batch, -1)  # (S B, N)
        change = stacked.new_zeros(seeds * batch, group.size)  # J g for every unit
        for consumer, part in zip(group.consumers, parts, strict=True):
            a = blocks[consumer.module][..., consumer.positions].to(ACCUMULATE_DTYPE)
            a = a - sums.centre[consumer.module]  # (B, R, m)
            weight = self.weights[name, consumer.module]
            rows = part.reshape(-1, part.shape[-1])  # (S B R, n)
            effect = (rows @ weight).view(seeds, batch, -1, weight.shape[1])
            change.index_add_(1, consumer.units,
                              (effect * a[None]).sum(2).reshape(seeds * batch, -1))
        sums.m += stacked.T @ stacked
        sums.b += stacked.T @ change
        sums.c += change.square().sum(0)


def _block_engine(model: nn.Module, layers: dict[str, nn.Linear], sample: torch.Tensor,
                  output_fn: Callable | None) -> BlockJacobians | None:
    """None when every consumer runs once per forward on (batch, features); else the engine
    of its rows per sample, which must form one block per sample of one call."""
    with torch.no_grad(), eval_mode(model), LayerTape(layers, differentiable=False) as tape:
        forward(model, sample, output_fn)
    calls = {name: tape.calls.get(name, []) for name in layers}
    if all(len(c) == 1 and c[0][0].ndim == 2 and len(c[0][0]) == len(sample)
           for c in calls.values()):
        return None
    with eval_mode(model):
        blocks = sample_blocks(model, layers, sample, output_fn)
    if blocks is None or any(len(b) != 1 for b in blocks.values()):
        shapes = {name: [tuple(a.shape) for a, _ in c] for name, c in calls.items()}
        raise ValueError(
            f"prune_neurons needs every consumer to run once per forward on (batch, features) "
            f"or (batch, tokens, features) inputs, one block of rows per sample; the inputs "
            f"are {shapes}.")
    return BlockJacobians(layers, blocks)


def _directions(output: torch.Tensor, probes: int | None,
                generator: torch.Generator | None) -> torch.Tensor:
    """Per sample, the output basis or ``probes`` Rademacher seeds: (B, seeds, n_y)."""
    batch, n_out = output.shape
    if probes is None:
        return exact_directions(batch, n_out, dtype=output.dtype, device=output.device)
    return rademacher((batch, probes, n_out), probes, generator, dtype=output.dtype,
                      device=output.device)


def _token_tiles(engine: BlockJacobians, inputs: torch.Tensor, tape: LayerTape,
                 output: torch.Tensor,
                 directions: torch.Tensor) -> Iterator[dict[str, torch.Tensor]]:
    """The engine's cotangents, (seeds, B, R, n_out) per consumer, a few seeds at a time."""
    shifts = {name: torch.zeros(layer.in_features, dtype=output.dtype, device=output.device)
              for name, layer in engine.layers.items()}
    for tile in engine.tiles(inputs, output, tape, directions, shifts):
        yield {name: torch.stack(rows.cotangents) for name, rows in tile.items()}


def unit_statistics(model: nn.Module, groups: dict[str, UnitGroup],
                    layers: dict[str, nn.Linear], batches: Iterable[Batch], *, joint: bool,
                    grams: bool, estimator: str = "auto", probes: int | None = None,
                    seed: int = 0, output_fn: Callable | None = None,
                    progress: bool | None = None) -> UnitStatistics:
    """One pass over ``batches`` for the consumers ``layers`` of ``groups`` (module docstring):
    the joint sums if ``joint``, the consumers' Gram matrices if ``grams``."""
    accumulator = _Accumulator(groups, layers, joint=joint, grams=grams)
    names = list(layers)
    chunks = iter(batches)
    first = next(chunks, None)
    if first is None:
        raise ValueError("The 'data' parameter holds no samples; expected at least one input.")
    chunks = itertools.chain([first], chunks)
    engine = _block_engine(model, layers, first.inputs[:EXAMPLE_SAMPLES], output_fn)
    if engine is not None:
        chunks = split_batches(chunks, engine.samples_per_pass())
    resolved: list[int | None] = []
    for batch, tape, _, output in stream(model, layers, chunks, differentiable=True,
                                         output_fn=output_fn, progress=progress,
                                         desc="unit statistics"):
        if not resolved:
            resolved.append(resolve_probes(estimator, probes, output.shape[1]))
        generator = None
        if resolved[0] is not None:
            generator = torch.Generator(device=output.device)
            generator.manual_seed(int(sample_keys(seed, batch.start, 1)[0] * 2**53))
        if engine is None:
            found = jacobians(output, [tape.outputs[n] for n in names], probes=resolved[0],
                              generator=generator)
            tiles = [{n: j[:, :, None] for n, j in zip(names, found, strict=True)}]
            blocks = {n: tape.inputs[n][:, None] for n in names}
        else:
            directions = _directions(output, resolved[0], generator)
            tiles = _token_tiles(engine, batch.inputs, tape, output, directions)
            blocks = {n: torch.cat([a.reshape(len(output), -1, a.shape[-1])
                                    for a, _ in tape.calls[n]], 1) for n in names}
        accumulator.update(tape.inputs, blocks, tiles, output.detach())
    stats = accumulator.stats
    stats.probes = resolved[0]
    return stats
