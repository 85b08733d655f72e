"""Unit groups of a plain ``nn.Sequential`` chain, found without Torch-Pruning.

In ``Linear -> per-unit modules -> Linear`` the units of the first layer are its output rows,
the second layer's input columns and the channels of the modules in between; nothing else
couples them. Between two Linear layers only elementwise activations, dropout and the per-unit
modules of :mod:`ecprune.structured.shrink` may stand; anything else is an error naming it.
Modules before the first and after the last Linear layer may be anything (the input features
and the outputs are never removed).
"""

from __future__ import annotations

import itertools

from torch import nn

from ..export.compaction import ELEMENTWISE
from ..export.compaction import _chain as sequential_leaves
from .groups import UnitGroup, slot
from .shrink import per_unit, slicer, unit_count


class NotAChain(ValueError):
    """The model is not a chain this walk understands (the message names the module)."""


def chain_groups(model: nn.Module) -> list[UnitGroup]:
    """One group per pair of consecutive ``nn.Linear`` layers of a (nested) ``nn.Sequential``."""
    if not isinstance(model, nn.Sequential):
        raise NotAChain(f"the model is a {type(model).__name__}, not an nn.Sequential")
    leaves = sequential_leaves(model)
    linears = [k for k, (_, module) in enumerate(leaves) if type(module) is nn.Linear]
    groups = []
    for start, stop in itertools.pairwise(linears):
        producer, consumer = leaves[start][0], leaves[stop][0]
        width = leaves[start][1].out_features
        members = []
        for name, module in leaves[start + 1 : stop]:
            if slicer(module) is not None and unit_count(module) == width:
                if per_unit(module):
                    members.append(slot(name, range(width)))
            elif not isinstance(module, ELEMENTWISE):
                raise NotAChain(
                    f"module {name!r} ({type(module).__name__}) between the Linear layers "
                    f"{producer!r} and {consumer!r} is not an elementwise activation or a "
                    "per-unit module (PReLU, BatchNorm1d, LayerNorm)")
        groups.append(UnitGroup(name=producer, size=width,
                                producers=(slot(producer, range(width)),),
                                consumers=(slot(consumer, range(width)),),
                                members=tuple(members)))
    return groups
