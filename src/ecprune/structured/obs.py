"""Structured Optimal Brain Surgeon for units: the ``"obs"`` method (ZipLM's structured OBS).

References: B. Hassibi and D. Stork, NeurIPS 1993; E. Kurtic, E. Frantar and D. Alistarh,
"ZipLM: Inference-aware structured pruning of language models", NeurIPS 2023.

A consumer with rows ``w_i = [W_i, b_i]`` and ``H = E[[a, 1][a, 1]^T] + lambda I`` loses input
column ``p`` at the cost ``sum_i r_i w_ip^2 / [H^-1]_pp`` once the other columns and the bias
(the ones column, never removed) take the optimal update
``w_i <- w_i - w_ip H^-1[p, :] / [H^-1]_pp``; then ``H^-1 <- H^-1 - H^-1[:, p] H^-1[p, :] /
[H^-1]_pp``. A unit costs the sum over its consumers; the cheapest goes first, greedily, and
the costs are recomputed after each update. ``r_i = E[s_i]`` (ECP's mean output sensitivity
of the row) puts the costs of all layers in output units, so that the curves of the greedy
path (cumulative cost after each removal) set the per-group counts under ``scope="global"``.

**(choice)** ``H`` is the Gram matrix of the dense network's inputs, from the one scoring pass;
ZipLM recomputes it on the inputs of the already pruned upstream layers (one pass per layer).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..engine.statistics import ACCUMULATE_DTYPE
from .groups import UnitGroup
from .refit import inverse_hessian


@dataclass
class ObsState:
    """One consumer during the greedy removal: ``rows = [W, b]`` (n_rows, n_in + 1), the
    inverse Hessian (n_in + 1, n_in + 1) and the row weights ``r`` (n_rows,), float64."""

    rows: torch.Tensor
    inverse: torch.Tensor
    row_weights: torch.Tensor

    def clone(self) -> ObsState:
        return ObsState(self.rows.clone(), self.inverse.clone(), self.row_weights)

    def remove(self, p: int) -> None:
        """Remove column ``p`` with the optimal update of the others."""
        pivot = self.inverse[p, p]
        self.rows -= torch.outer(self.rows[:, p], self.inverse[p]) / pivot
        self.inverse -= torch.outer(self.inverse[:, p], self.inverse[p]) / pivot
        self.rows[:, p] = 0


def obs_state(layer: nn.Linear, gram: torch.Tensor, sens: torch.Tensor,
              damping: float) -> ObsState:
    """The start of a consumer's greedy removal from its mean Gram matrix and ``E[s_i]``."""
    weight = layer.weight.detach().to(ACCUMULATE_DTYPE)
    bias = weight.new_zeros(len(weight)) if layer.bias is None else layer.bias.detach()
    rows = torch.cat([weight, bias.to(weight.dtype)[:, None]], 1)
    return ObsState(rows, inverse_hessian(gram, damping), sens.to(ACCUMULATE_DTYPE))


def _positions(group: UnitGroup, consumer) -> torch.Tensor:
    where = torch.full((group.size,), -1, dtype=torch.int64)
    where[consumer.units] = consumer.positions
    return where


def greedy_order(group: UnitGroup, states: dict[str, ObsState],
                 steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Remove ``steps`` units greedily, updating ``states`` in place; returns the units in
    removal order and the cost of each removal (float64)."""
    where = {c.module: _positions(group, c) for c in group.consumers}
    available = torch.ones(group.size, dtype=torch.bool)
    order, costs = [], []
    for _ in range(steps):
        cost = torch.zeros(group.size, dtype=ACCUMULATE_DTYPE)
        for name, positions in where.items():
            state, seen = states[name], positions >= 0
            columns = positions[seen]
            weighted = (state.row_weights[:, None] * state.rows[:, columns].square()).sum(0)
            cost[seen] += (weighted / state.inverse.diagonal()[columns]).cpu()
        cost[~available] = torch.inf
        unit = int(torch.argmin(cost))
        apply_removal(group, states, [unit], where)
        available[unit] = False
        order.append(unit)
        costs.append(float(cost[unit]))
    return torch.tensor(order, dtype=torch.int64), torch.tensor(costs, dtype=ACCUMULATE_DTYPE)


def apply_removal(group: UnitGroup, states: dict[str, ObsState], units: list[int],
                  where: dict[str, torch.Tensor] | None = None) -> None:
    """Remove ``units`` one after the other from every consumer state of ``group``."""
    where = where or {c.module: _positions(group, c) for c in group.consumers}
    for unit in units:
        for name, positions in where.items():
            if positions[unit] >= 0:
                states[name].remove(int(positions[unit]))
