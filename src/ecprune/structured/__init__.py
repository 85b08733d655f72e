"""Remove whole hidden units with compensation: a smaller, faster dense network.

:func:`prune_neurons` removes units (a producer's rows, its per-unit parameters, the consumers'
columns) and moves the consumers' biases, and, for ``"ecp-refit"`` and ``"obs"``, their kept
columns, to make up for them. Which units go together comes from Torch-Pruning's
``DependencyGraph`` (:mod:`ecprune.structured.coupling`); the scores are ECP's, extended to
units (:mod:`ecprune.structured.criteria`).
"""

from .api import prune_neurons, score_units
from .coupling import COUPLINGS, Coupling, find_groups
from .groups import Slot, UnitGroup
from .methods import (
    ECPRefitUnits,
    ECPUnits,
    MagnitudeUnits,
    NeuronContext,
    NeuronMethod,
    NeuronStep,
    OBSUnits,
    RandomUnits,
    Scored,
)
from .registry import NEURON_METHODS, get
from .report import GroupReport, ModelSize, NeuronReport, format_table

__all__ = [
    "COUPLINGS",
    "NEURON_METHODS",
    "Coupling",
    "ECPRefitUnits",
    "ECPUnits",
    "GroupReport",
    "MagnitudeUnits",
    "ModelSize",
    "NeuronContext",
    "NeuronMethod",
    "NeuronReport",
    "NeuronStep",
    "OBSUnits",
    "RandomUnits",
    "Scored",
    "Slot",
    "UnitGroup",
    "find_groups",
    "format_table",
    "get",
    "prune_neurons",
    "score_units",
]
