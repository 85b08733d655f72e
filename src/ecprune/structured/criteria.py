"""Unit scores (higher = more important) and the consumers' bias shifts that compensate a removal.

ECP per unit ``j`` (see :mod:`ecprune.structured.moments` for the notation): the output error
left after the best shift of the consumers' biases,

- ``"joint"``: every bias of every consumer shifts together, ``d*_j = M^+ B_j`` and
  ``e_j = c_j - B_j^T d*_j`` from the joint sums (memory ``N^2`` per group);
- ``"rows"``: only the diagonal of ``J^T J`` (ECP's ``s_i``), so each row shifts on its own:
  the sum over the consumer's rows of ECP's weight scores of column ``j``,
  ``e_j = sum_i W_ij^2 (E[s_i a_j^2] - E[s_i a_j]^2 / E[s_i])`` with
  ``d_ij = W_ij E[s_i a_j] / E[s_i]`` (:func:`ecprune.methods.ecp.ecp_terms`).

For the last layer with one row per sample (``J = I``) both are FLAP's fluctuation (An et
al., AAAI 2024): ``d* = W[:, j] E[a_j]`` and ``e_j = ||W[:, j]||^2 Var(a_j)``; no code
special-cases it, so with rows per sample (tokens) the same sums hold with ``J = sum_p J_p``
and ``S, P, Q`` of :mod:`ecprune.engine.positions`. Removing a set of units, the
joint shifts add up to the joint optimum of the set (``d*`` is linear in ``g``); the errors add
up only to first order, without interactions.

Baselines: :func:`magnitude`, the L2 norm of the unit's weights (its producer rows and consumer
columns), and :func:`random_scores`; neither compensates.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..engine.statistics import ACCUMULATE_DTYPE, Statistics
from ..methods.ecp import ecp_terms
from ..reconstruct.layerwise import solve_spd
from .groups import UnitGroup, consumer_weight
from .moments import JointSums


@dataclass(frozen=True)
class UnitScores:
    """``score`` (size,) float64 on the CPU and ``shifts``: ``{consumer: (n_rows, size)}``, the
    bias shift of each unit's removal (None: no compensation)."""

    score: torch.Tensor
    shifts: dict[str, torch.Tensor] | None


def joint_ecp(group: UnitGroup, sums: JointSums, weights: dict[str, torch.Tensor],
              count: int) -> UnitScores:
    """ECP with the joint shift of all the consumers' biases, from one pass's sums."""
    solution = solve_spd(sums.m / count, sums.b / count, definite=False)  # (N, size)
    error = (sums.c / count - (sums.b / count * solution).sum(0)).clamp_min(0).cpu()
    shifts = {}
    for consumer in group.consumers:
        weight = weights[consumer.module].to(ACCUMULATE_DTYPE)
        shift = solution[sums.rows[consumer.module]].clone()
        centre = consumer_weight(group, consumer, weight) * sums.centre[consumer.module]
        # undo the centring: g = J W~ (a - m) + J W~ m
        shift[:, consumer.units.to(shift.device)] += centre
        shifts[consumer.module] = shift
    return UnitScores(error, shifts)


def rows_ecp(group: UnitGroup, stats: Statistics, weights: dict[str, torch.Tensor]) -> UnitScores:
    """ECP with each consumer row's own shift (the diagonal of ``J^T J``), from the engine's
    statistics of the consumers."""
    score = torch.zeros(group.size, dtype=ACCUMULATE_DTYPE)
    shifts = {}
    for consumer in group.consumers:
        importance, shift = ecp_terms(weights[consumer.module], stats.layers[consumer.module],
                                      stats.count)
        own = group.own_rows(consumer)[consumer.units]
        mine = torch.nonzero(own >= 0).squeeze(1)
        importance = importance[:, consumer.positions].clone()
        shift = shift[:, consumer.positions].clone()
        importance[own[mine], mine] = 0
        shift[own[mine], mine] = 0
        score.index_add_(0, consumer.units, importance.sum(0).cpu())
        full = shift.new_zeros(len(shift), group.size)
        full[:, consumer.units.to(full.device)] = shift
        shifts[consumer.module] = full
    return UnitScores(score, shifts)


def magnitude(group: UnitGroup, weights: dict[str, torch.Tensor]) -> UnitScores:
    """``sqrt(sum of the squares of the unit's producer rows and consumer columns)``."""
    total = torch.zeros(group.size, dtype=ACCUMULATE_DTYPE)
    for dim, slots in ((1, group.producers), (0, group.consumers)):
        for item in slots:
            weight = weights[item.module].to(ACCUMULATE_DTYPE)
            total.index_add_(0, item.units, weight.square().sum(dim)[item.positions].cpu())
    return UnitScores(total.sqrt(), None)


def random_scores(groups: dict[str, UnitGroup], seed: int) -> dict[str, UnitScores]:
    """Uniform scores from one generator seeded with ``seed``, drawn in group order."""
    generator = torch.Generator().manual_seed(seed)
    return {name: UnitScores(torch.rand(group.size, generator=generator,
                                        dtype=ACCUMULATE_DTYPE), None)
            for name, group in groups.items()}
