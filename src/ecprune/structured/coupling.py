"""Which hidden units can be removed, and which go together: the prunable unit groups.

``coupling="auto"`` (the default) uses Torch-Pruning's ``DependencyGraph``
(:mod:`ecprune.structured.dependency`) when it is installed, and otherwise, for a plain
``nn.Sequential`` chain, the walk of :mod:`ecprune.structured.chain`; other models then need
``pip install 'ecprune[structured]'``. If the graph cannot trace a chain, the walk takes over
(and says why in the log). ``"torch-pruning"`` and ``"sequential"`` force one of them. Every
candidate is then checked on a copy of the model (:mod:`ecprune.structured.verify`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .._validation import check_choice
from .chain import NotAChain, chain_groups
from .dependency import MISSING, dependency_groups, torch_pruning
from .groups import UnitGroup
from .verify import unusual_calls, verified

logger = logging.getLogger(__name__)

COUPLINGS = ("auto", "torch-pruning", "sequential")


@dataclass(frozen=True)
class Coupling:
    """The prunable groups by name, the groups of hidden units left alone with the reason, and
    which finder found them (``"torch-pruning"`` or ``"sequential"``)."""

    groups: dict[str, UnitGroup]
    skipped: dict[str, str]
    finder: str


def _candidates(model: nn.Module, example: torch.Tensor, coupling: str,
                output_fn: Callable | None) -> tuple[list[UnitGroup], dict[str, str], str]:
    if coupling == "sequential" or (coupling == "auto" and not _has_torch_pruning()):
        try:
            return chain_groups(model), {}, "sequential"
        except NotAChain as err:
            if coupling == "sequential":
                raise ValueError(f"coupling='sequential' reads nn.Sequential chains only: "
                                 f"{err}.") from err
            raise ImportError(f"{MISSING} (Without it: {err}.)") from err
    torch_pruning()  # coupling="torch-pruning" without it: the ImportError
    try:
        groups, skipped = dependency_groups(model, example, output_fn)
    except Exception as err:  # a trace can fail in many ways; a chain has a way out
        if coupling == "auto" and _is_chain(model):
            logger.info("DependencyGraph failed (%s); walking the nn.Sequential chain instead",
                        err)
            return chain_groups(model), {}, "sequential"
        raise ValueError(f"Torch-Pruning's DependencyGraph could not trace the model: "
                         f"{type(err).__name__}: {err}") from err
    return groups, skipped, "torch-pruning"


def _has_torch_pruning() -> bool:
    try:
        torch_pruning()
    except ImportError:
        return False
    return True


def _is_chain(model: nn.Module) -> bool:
    try:
        chain_groups(model)
    except NotAChain:
        return False
    return True


def find_groups(model: nn.Module, example: torch.Tensor, *, coupling: str = "auto",
                output_fn: Callable | None = None) -> Coupling:
    """The prunable unit groups of ``model``, from ``example`` inputs (a few samples)."""
    check_choice("coupling", coupling, COUPLINGS, caller="prune_neurons")
    candidates, skipped, finder = _candidates(model, example, coupling, output_fn)
    groups, unsafe = verified(model, candidates, example, output_fn)
    unusual = unusual_calls(model, groups, example, output_fn)
    return Coupling(groups={group.name: group for group in groups if group.name not in unusual},
                    skipped={**skipped, **unsafe, **unusual}, finder=finder)
