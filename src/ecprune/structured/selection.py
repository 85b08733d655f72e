"""How many units each group loses and which: exact counts, lowest scores first.

Exactly ``round(fraction * H)`` of the ``H`` prunable units go under ``scope="global"``: by one
ranking of all the units' scores (ties by group order, then unit index) or by a method's own
per-group counts; under ``scope="layer"`` every group loses ``round(fraction * size)``, nudged
so that the total is ``round(fraction * H)`` again
(:func:`ecprune.masking.selection.layer_counts`). Within a group the lowest scores go
(:func:`ecprune.masking.order.lowest`). Every group keeps at least ``MIN_KEPT`` units: a layer
of width zero would cut the network in two.
"""

from __future__ import annotations

import torch

from ..masking.order import lowest, removal_order
from ..masking.selection import layer_counts
from .groups import UnitGroup

MIN_KEPT = 1
SCOPES = ("global", "layer")


def removable(groups: dict[str, UnitGroup]) -> int:
    """How many units can go at most (all but ``MIN_KEPT`` of each group)."""
    return sum(max(0, group.size - MIN_KEPT) for group in groups.values())


def check_count(groups: dict[str, UnitGroup], count: int, fraction: float) -> None:
    """Raise if ``count`` units cannot go without emptying a group."""
    if count > removable(groups):
        total = sum(group.size for group in groups.values())
        raise ValueError(
            f"The 'fraction' parameter of prune_neurons asks for {count} of the {total} "
            f"prunable units (fraction={fraction!r}), but at most {removable(groups)} can go: "
            f"each of the {len(groups)} hidden layers keeps at least {MIN_KEPT}. Pass a smaller "
            "fraction.")


def scope_counts(groups: dict[str, UnitGroup], fraction: float) -> dict[str, int]:
    """Per-group counts of ``scope="layer"``, or an error naming a group it would empty."""
    counts = layer_counts({name: group.size for name, group in groups.items()}, fraction)
    for name, k in counts.items():
        if k > groups[name].size - MIN_KEPT:
            raise ValueError(
                f"scope='layer' with fraction={fraction!r} would remove {k} of the "
                f"{groups[name].size} units of {name!r}; keep at least {MIN_KEPT}: pass a "
                "smaller fraction or scope='global'.")
    return counts


def global_counts(scores: dict[str, torch.Tensor], groups: dict[str, UnitGroup],
                  count: int) -> dict[str, int]:
    """Per-group counts of the ``count`` lowest scores of all groups together, skipping the
    last ``MIN_KEPT`` of each group."""
    flat, owner = [], []
    for k, (name, score) in enumerate(scores.items()):
        order = removal_order(score, torch.ones_like(score, dtype=torch.bool))
        eligible = order[: max(0, groups[name].size - MIN_KEPT)].sort().values
        flat.append(score[eligible].to(torch.float64))
        owner.append(torch.full((len(eligible),), k))
    flat, owner = torch.cat(flat), torch.cat(owner)
    taken = owner[torch.argsort(flat, stable=True)[:count]]
    found = torch.bincount(taken, minlength=len(scores))
    return {name: int(found[k]) for k, name in enumerate(scores)}


def choose(scores: dict[str, torch.Tensor], counts: dict[str, int]) -> dict[str, torch.Tensor]:
    """The ``counts[name]`` lowest scores of each group, as bool masks (size,)."""
    return {name: lowest(score, torch.ones_like(score, dtype=torch.bool), counts.get(name, 0))
            for name, score in scores.items()}
