"""Unit groups from Torch-Pruning's ``DependencyGraph`` (``pip install 'ecprune[structured]'``).

``tp.DependencyGraph().build_dependency(model, example_inputs)`` traces the model through
autograd; ``get_all_groups(root_module_types=(nn.Linear,))`` then yields, for each Linear
layer's outputs, the group of every (module, index) that must go with them: the rows of the
layers whose outputs are summed with them, the columns of their consumers (offset through
``torch.cat``), the channels of normalisations and PReLU slopes. ecprune reads these groups
and does the rest itself: the scores, the compensation and the removal, since Torch-Pruning's
pruners put new ``nn.Parameter`` objects in place, and ecprune keeps the old ones
(:mod:`ecprune.structured.shrink`) and makes the whole removal one transaction.

A group is a candidate when its root and every other output it removes are ``nn.Linear`` rows,
at least one ``nn.Linear`` consumes it, the model's output is not part of it and every other
module in it can shrink (:func:`ecprune.structured.shrink.slicer`). The trace runs on a copy,
in eval mode (the trace would otherwise switch the model to eval mode and update batch-norm
statistics).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..engine.tape import eval_mode
from ..reconstruct.layerwise import detached_copy
from .groups import Slot, UnitGroup, slot
from .shrink import per_unit, slicer

MISSING = ("prune_neurons needs Torch-Pruning to find the coupled units of a model that is not a "
           "plain nn.Sequential chain: pip install 'ecprune[structured]' (or torch-pruning>=1.5).")


def torch_pruning():
    """The ``torch_pruning`` module, or an ImportError that says how to install it."""
    try:
        import torch_pruning
    except ImportError as err:
        raise ImportError(MISSING) from err
    if not hasattr(torch_pruning, "DependencyGraph"):
        raise ImportError(f"The installed torch_pruning has no DependencyGraph. {MISSING}")
    return torch_pruning


class _Collector:
    """Slots of one Torch-Pruning group, sorted into producers, consumers and members."""

    def __init__(self, names: dict[nn.Module, str]):
        self.names = names
        self.producers: list[Slot] = []
        self.consumers: list[Slot] = []
        self.members: list[Slot] = []
        self.problem: str | None = None
        self.output = False

    def add(self, graph, tp, item) -> None:
        target, handler = item.dep.target, item.dep.handler
        module = target.module
        entry = slot(self.names.get(module, ""), item.idxs, item.root_idxs)
        if target.type == tp.ops.OPTYPE.OUTPUT:
            self.output = True
        elif isinstance(module, nn.Parameter):
            self.problem = "they feed a bare nn.Parameter"
        elif module not in self.names:
            return  # an operation (add, cat, activation): the check on a copy covers it
        elif type(module) is nn.Linear:
            outputs = graph.is_out_channel_pruning_fn(handler)
            (self.producers if outputs else self.consumers).append(entry)
        elif slicer(module) is None:
            self.problem = (f"they go through {entry.module!r} ({type(module).__name__}), which "
                            "prune_neurons cannot shrink")
        elif per_unit(module):
            self.members.append(entry)

    def group(self, order: dict[str, int]) -> UnitGroup | None:
        """The candidate, or None when its units are no hidden units (outputs, no consumer)."""
        if self.output or not self.consumers:
            return None
        producers = sorted(self.producers, key=lambda s: order[s.module])
        if self.problem is None:
            for consumer in self.consumers:
                if len(torch.unique(consumer.units)) < len(consumer.units):
                    self.problem = f"they feed {consumer.module!r} more than once"
        size = int(torch.cat([s.units for s in producers]).max()) + 1
        return UnitGroup(name=producers[0].module, size=size, producers=tuple(producers),
                         consumers=tuple(self.consumers), members=tuple(self.members))


def dependency_groups(model: nn.Module, example: torch.Tensor,
                      output_fn: Callable | None) -> tuple[list[UnitGroup], dict[str, str]]:
    """Candidate groups of ``model`` (in the order of their first producer) and, for groups of
    hidden units that cannot be removed, why."""
    tp = torch_pruning()
    copy = detached_copy(model)
    names = {module: name for name, module in copy.named_modules()}
    order = {name: k for k, name in enumerate(names.values())}
    with eval_mode(copy), torch.enable_grad():
        graph = tp.DependencyGraph().build_dependency(
            copy, example_inputs=example, forward_fn=lambda m, x: m(x),
            output_transform=output_fn, verbose=False)
    candidates, skipped = [], {}
    for found in graph.get_all_groups(root_module_types=(nn.Linear,)):
        collector = _Collector(names)
        for item in found:
            collector.add(graph, tp, item)
        group = collector.group(order)
        if group is None:
            continue
        if collector.problem is None:
            candidates.append(group)
        else:
            skipped[group.name] = collector.problem
    candidates.sort(key=lambda g: order[g.name])
    return candidates, skipped
