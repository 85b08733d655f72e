"""Coupled hidden units: which rows, columns and per-unit parameters go when a unit goes.

A :class:`UnitGroup` holds ``size`` hidden units that must be removed together or not at all:

- ``producers``: the ``nn.Linear`` layers whose output rows are the units (two or more when a
  residual sum ties their outputs together);
- ``consumers``: the ``nn.Linear`` layers whose input columns carry the units (two or more when
  the units feed several layers; in a concatenation, a consumer's columns are offset);
- ``members``: the per-unit modules in between whose parameters shrink with the units
  (``nn.PReLU`` with one slope per unit, ``nn.BatchNorm1d``, ``nn.LayerNorm``).

Each :class:`Slot` maps positions of one module (rows, columns or channels) to the units they
carry. Groups come from Torch-Pruning's ``DependencyGraph``
(:mod:`ecprune.structured.dependency`) or, for plain ``nn.Sequential`` chains, from a walk of
the modules (:mod:`ecprune.structured.chain`); :func:`ecprune.structured.verify.verified`
then checks every candidate on a copy of the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True, eq=False)
class Slot:
    """Positions of module ``module`` (rows of a producer, columns of a consumer, channels of a
    member) and the unit each carries: ``positions`` and ``units`` are int64 tensors (m,)."""

    module: str
    positions: torch.Tensor
    units: torch.Tensor

    def removed(self, chosen: torch.Tensor) -> torch.Tensor:
        """The positions whose unit is in the bool mask ``chosen`` (size,)."""
        return self.positions[chosen[self.units]]


@dataclass(frozen=True, eq=False)
class UnitGroup:
    """``size`` coupled hidden units named after their first producer (see the module
    docstring). ``exact``: removing units equals zeroing their consumer columns (False when a
    ``LayerNorm`` normalises them together)."""

    name: str
    size: int
    producers: tuple[Slot, ...]
    consumers: tuple[Slot, ...]
    members: tuple[Slot, ...] = ()
    exact: bool = True

    @property
    def modules(self) -> list[str]:
        """Names of every module the group touches."""
        return [slot.module for slot in (*self.producers, *self.consumers, *self.members)]

    def own_rows(self, consumer: Slot) -> torch.Tensor:
        """(size,) row of ``consumer``'s layer that belongs to each unit, or -1: a Linear both
        consumes and produces the units in a residual block, and the row of a removed unit goes
        with it, so it takes no part in that unit's compensation."""
        rows = torch.full((self.size,), -1, dtype=torch.int64)
        for producer in self.producers:
            if producer.module == consumer.module:
                rows[producer.units] = producer.positions
        return rows


def slot(module: str, positions, units=None) -> Slot:
    """A :class:`Slot` from sequences (``units`` defaults to ``0 .. m-1``)."""
    positions = torch.as_tensor(positions, dtype=torch.int64)
    units = torch.arange(len(positions)) if units is None else torch.as_tensor(units)
    return Slot(module, positions, units.to(torch.int64))


def consumer_weight(group: UnitGroup, consumer: Slot, weight: torch.Tensor) -> torch.Tensor:
    """``W[:, positions]`` of a consumer (n_rows, m), zero at each unit's own row
    (:meth:`UnitGroup.own_rows`)."""
    columns = weight[:, consumer.positions].clone()
    rows = group.own_rows(consumer)[consumer.units]
    mine = rows >= 0
    columns[rows[mine], torch.nonzero(mine).squeeze(1)] = 0
    return columns
