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
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from ..engine.batching import Batch
from ..engine.sensitivity import resolve_probes, seed_products
from ..engine.statistics import ACCUMULATE_DTYPE, gram, sample_keys
from ..engine.tape import stream
from .groups import UnitGroup, consumer_weight

# Samples per tile of the moment GEMMs (bounds the float64 copies of a chunk's Jacobian).
TILE = 256


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
    requested), per consumer ``sens_sum`` (sum of ``s_i``) and ``grams``; ``count`` samples,
    ``output_sq_sum`` = sum of ``||y||^2``, ``probes`` (None: exact Jacobians)."""

    joint: dict[str, JointSums]
    sens_sum: dict[str, torch.Tensor]
    grams: dict[str, torch.Tensor]
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

    def _start(self, inputs: dict[str, torch.Tensor], device: torch.device) -> None:
        stats = self.stats
        for name, layer in self.layers.items():
            stats.sens_sum[name] = _zeros(layer.out_features, device=device)
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
            centre = {c.module: inputs[c.module][:, c.positions].to(ACCUMULATE_DTYPE).mean(0)
                      for c in group.consumers}
            stats.joint[name] = JointSums(rows=rows, m=_zeros(offset, offset, device=device),
                                          b=_zeros(offset, group.size, device=device),
                                          c=_zeros(group.size, device=device), centre=centre)

    def update(self, inputs: dict[str, torch.Tensor], jac: dict[str, torch.Tensor],
               output: torch.Tensor) -> None:
        if not self.stats.sens_sum:
            self._start(inputs, output.device)
        stats = self.stats
        for name in self.layers:
            stats.sens_sum[name] += jac[name].square().sum((0, 1)).to(ACCUMULATE_DTYPE)
            if self.want_grams:
                stats.grams[name] += gram(inputs[name])
        if self.want_joint:
            for first in range(0, len(output), TILE):
                tile = slice(first, first + TILE)
                for name, group in self.groups.items():
                    self._add_joint(stats.joint[name], group, name,
                                    {k: v[tile] for k, v in inputs.items()},
                                    {k: v[:, tile] for k, v in jac.items()})
        stats.count += len(output)
        stats.output_sq_sum += output.detach().square().sum(dtype=ACCUMULATE_DTYPE).item()

    def _add_joint(self, sums: JointSums, group: UnitGroup, name: str,
                   inputs: dict[str, torch.Tensor], jac: dict[str, torch.Tensor]) -> None:
        seeds, batch = next(iter(jac.values())).shape[:2]
        stacked = torch.cat([jac[c.module].to(ACCUMULATE_DTYPE) for c in group.consumers], 2)
        stacked = stacked.reshape(seeds * batch, -1)  # (S B, N)
        change = stacked.new_zeros(seeds * batch, group.size)  # J g for every unit
        for consumer in group.consumers:
            a = inputs[consumer.module][:, consumer.positions].to(ACCUMULATE_DTYPE)
            a = a - sums.centre[consumer.module]  # (B, m)
            rows = stacked[:, sums.rows[consumer.module]]
            effect = (rows @ self.weights[name, consumer.module]).view(seeds, batch, -1)
            change.index_add_(1, consumer.units, (effect * a[None]).reshape(seeds * batch, -1))
        sums.m += stacked.T @ stacked
        sums.b += stacked.T @ change
        sums.c += change.square().sum(0)


def unit_statistics(model: nn.Module, groups: dict[str, UnitGroup],
                    layers: dict[str, nn.Linear], batches: Iterable[Batch], *, joint: bool,
                    grams: bool, estimator: str = "auto", probes: int | None = None,
                    seed: int = 0, output_fn: Callable | None = None,
                    progress: bool | None = None) -> UnitStatistics:
    """One pass over ``batches`` for the consumers ``layers`` of ``groups`` (module docstring):
    the joint sums if ``joint``, the consumers' Gram matrices if ``grams``."""
    accumulator = _Accumulator(groups, layers, joint=joint, grams=grams)
    names = list(layers)
    resolved: list[int | None] = []
    for batch, tape, _, output in stream(model, layers, batches, differentiable=True,
                                         output_fn=output_fn, progress=progress,
                                         desc="unit statistics"):
        if not resolved:
            resolved.append(resolve_probes(estimator, probes, output.shape[1]))
        generator = None
        if resolved[0] is not None:
            generator = torch.Generator(device=output.device)
            generator.manual_seed(int(sample_keys(seed, batch.start, 1)[0] * 2**53))
        found = jacobians(output, [tape.outputs[n] for n in names], probes=resolved[0],
                          generator=generator)
        accumulator.update(tape.inputs, dict(zip(names, found, strict=True)), output.detach())
    stats = accumulator.stats
    if stats.count == 0:
        raise ValueError("The 'data' parameter holds no samples; expected at least one input.")
    stats.probes = resolved[0]
    return stats
